// Specification of the recorded per-release table (native-bindings/xen-releases.ts): every
// supported release's xc_domaininfo_t layout matches our koffi declaration, the load-time check
// refuses a release whose recorded layout differs, and the facts per release are the known ones.
import { describe, expect, it } from 'vitest';
import {
  NativeLayoutError,
  checkDomainInfoLayout,
  domainInfoLayoutProblems,
} from '../../native-bindings/libxenctrl.js';
import { XEN_RELEASES, findRelease, type XenRelease } from '../../native-bindings/xen-releases.js';

describe('recorded Xen releases', () => {
  for (const r of XEN_RELEASES) {
    it(`Xen ${r.version}: our xc_domaininfo_t matches the recorded layout (112 bytes, handle @76, arch_config @104)`, () => {
      expect(r.domainInfo.size).toBe(112);
      expect(r.domainInfo.offsets.handle).toBe(76);
      expect(r.domainInfo.offsets.arch_config).toBe(104);
      expect(domainInfoLayoutProblems(r)).toEqual([]);
      expect(() => checkDomainInfoLayout(r)).not.toThrow();
      expect(findRelease(4, r.minor)).toBe(r);
    });
  }

  it('records the domctl interface version of each release (the hypervisor refuses any other)', () => {
    expect(Object.fromEntries(XEN_RELEASES.map((r) => [r.version, r.domctlInterfaceVersion]))).toEqual({
      '4.17': 0x15,
      '4.18': 0x16,
      '4.19': 0x17,
      '4.20': 0x17,
      '4.21': 0x17,
      '4.22': 0x18,
    });
  });

  it('records xc_domain_getinfo only in 4.17 and xc_domain_getinfo_single from 4.18 on', () => {
    expect(XEN_RELEASES.filter((r) => r.hasGetinfo).map((r) => r.version)).toEqual(['4.17']);
    expect(XEN_RELEASES.filter((r) => !r.hasGetinfoSingle).map((r) => r.version)).toEqual(['4.17']);
  });

  it('refuses at load a release whose recorded layout differs from our declaration', () => {
    const base = XEN_RELEASES[0] as XenRelease;
    const moved: XenRelease = {
      ...base,
      version: '4.99',
      domainInfo: { size: 120, offsets: { ...base.domainInfo.offsets, handle: 80 } },
    };
    expect(domainInfoLayoutProblems(moved)).toEqual(['size 112, recorded 120', 'handle at 76, recorded 80']);
    expect(() => checkDomainInfoLayout(moved)).toThrow(NativeLayoutError);
    expect(() => checkDomainInfoLayout(moved)).toThrow(
      'xc_domaininfo_t does not match the layout recorded for Xen 4.99: size 112, recorded 120; handle at 76, recorded 80',
    );
  });
});
