// Specifies the load-time behaviour of the libxenctrl/libxenguest bindings against the real Xen
// libraries Debian installs here (4.17 on Debian 12, 4.20 on 13; no hypervisor): symbols resolve,
// the struct layout matches the C headers, the running Xen's version picks the files, and a
// missing library, symbol or an unsupported Xen is a typed error naming it.
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it, expect } from 'vitest';
import koffi from 'koffi';
import {
  NativeLibraryError,
  NativeSymbolError,
  XC_DOMAININFO_SIZE,
  XcDomainInfo,
  errnoName,
  loadLibxenctrl,
} from '../../native-bindings/libxenctrl.js';
import { loadLibxenguest } from '../../native-bindings/libxenguest.js';
import { UnsupportedXenError, XenVersionUnknownError } from '../../native-bindings/library-selection.js';
import { openXcHypervisor } from '../../src/domains/hypervisor.js';
import { DomainError } from '../../src/domains/errors.js';
import { xenToolsVersion } from '../../xen-mocks/paths.js';

/** The release whose libraries Debian installed here (xen-utils-4.<minor>): "4.17" or "4.20". */
const INSTALLED = xenToolsVersion();
const XENCTRL = `libxenctrl.so.${INSTALLED}`;
const XENGUEST = `libxenguest.so.${INSTALLED}`;

describe('libxenctrl binding', () => {
  it('matches xc_domaininfo_t of the 4.17-4.22 headers (gcc: 112 bytes, handle at 76, arch_config at 104)', () => {
    expect(koffi.sizeof(XcDomainInfo)).toBe(XC_DOMAININFO_SIZE);
    expect(koffi.offsetof(XcDomainInfo, 'flags')).toBe(4);
    expect(koffi.offsetof(XcDomainInfo, 'cpu_time')).toBe(56);
    expect(koffi.offsetof(XcDomainInfo, 'handle')).toBe(76);
    expect(koffi.offsetof(XcDomainInfo, 'cpupool')).toBe(92);
    expect(koffi.offsetof(XcDomainInfo, 'arch_config')).toBe(104);
  });

  it(`loads the real ${INSTALLED} library and reports its optional symbols`, () => {
    const xc = loadLibxenctrl({ path: XENCTRL });
    // xc_domain_getinfo left in 4.18: we never call it, only report it.
    expect(xc.has).toEqual({
      xc_domain_getinfo: INSTALLED === '4.17',
      xc_hvm_param_get: true,
      xc_domain_destroy: true,
    });
  });

  it('fails xc_interface_open without a hypervisor, with an errno', () => {
    const xc = loadLibxenctrl({ path: XENCTRL });
    const { handle, errno } = xc.interfaceOpen();
    expect(handle).toBeNull();
    expect(errno).toBeGreaterThan(0);
    expect(errnoName(errno)).toMatch(/^E[A-Z]+$/);
  });

  it('names a missing library', () => {
    expect(() => loadLibxenctrl({ path: '/nonexistent/libxenctrl.so' })).toThrow(NativeLibraryError);
  });

  it('names a missing symbol', () => {
    let err: unknown;
    try {
      loadLibxenctrl({ path: 'libxenstore.so.4' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NativeSymbolError);
    expect((err as NativeSymbolError).symbol).toBe('xc_interface_open');
  });

  it('takes the path from DEVMIGRATE_LIBXENCTRL', () => {
    const saved = process.env.DEVMIGRATE_LIBXENCTRL;
    process.env.DEVMIGRATE_LIBXENCTRL = '/nonexistent/from-env.so';
    try {
      expect(() => loadLibxenctrl()).toThrow(/from-env\.so/);
    } finally {
      if (saved === undefined) delete process.env.DEVMIGRATE_LIBXENCTRL;
      else process.env.DEVMIGRATE_LIBXENCTRL = saved;
    }
  });
});

describe('libxenguest binding', () => {
  it(`finds xc_domain_resume in the real ${INSTALLED} libxenguest`, () => {
    expect(loadLibxenguest({ path: XENGUEST }).path).toBe(XENGUEST);
  });
  it('names the missing symbol when pointed at another library', () => {
    expect(() => loadLibxenguest({ path: 'libxenstore.so.4' })).toThrow(/xc_domain_resume/);
  });
});

describe('openXcHypervisor picks the running Xen’s libraries', () => {
  const saved = { ctrl: process.env.DEVMIGRATE_LIBXENCTRL, guest: process.env.DEVMIGRATE_LIBXENGUEST };
  let root: string;
  /** A /sys/hypervisor reading "xen" and this version. */
  const sysfs = (version: string): string => {
    const d = join(root, version);
    const [major, minor] = version.split('.');
    mkdirSync(join(d, 'version'), { recursive: true });
    writeFileSync(join(d, 'type'), 'xen\n');
    writeFileSync(join(d, 'version/major'), `${major}\n`);
    writeFileSync(join(d, 'version/minor'), `${minor}\n`);
    return d;
  };
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'sys-hv-'));
    delete process.env.DEVMIGRATE_LIBXENCTRL;
    delete process.env.DEVMIGRATE_LIBXENGUEST;
  });
  afterAll(() => {
    rmSync(root, { recursive: true, force: true });
    if (saved.ctrl !== undefined) process.env.DEVMIGRATE_LIBXENCTRL = saved.ctrl;
    if (saved.guest !== undefined) process.env.DEVMIGRATE_LIBXENGUEST = saved.guest;
  });

  it(`Xen ${INSTALLED} running: loads the installed ${XENCTRL} and ${XENGUEST}, then needs the hypervisor`, () => {
    let err: unknown;
    try {
      openXcHypervisor({ sysHypervisor: sysfs(INSTALLED) });
    } catch (e) {
      err = e;
    }
    // Both libraries loaded and the layout check passed: only xc_interface_open (no Xen here) fails.
    expect(err).toBeInstanceOf(DomainError);
    expect((err as DomainError).step).toBe('xc_interface_open');
    expect((err as DomainError).message).toContain(`/usr/lib/x86_64-linux-gnu/${XENCTRL}`);
  });

  it('Xen 4.16 running: refuses with the list of supported versions', () => {
    expect(() => openXcHypervisor({ sysHypervisor: sysfs('4.16') })).toThrow(UnsupportedXenError);
    expect(() => openXcHypervisor({ sysHypervisor: sysfs('4.16') })).toThrow(
      /4\.17, 4\.18, 4\.19, 4\.20, 4\.21, 4\.22/,
    );
  });

  it('a supported Xen whose libraries are not installed: the error names the files looked for', () => {
    const other = INSTALLED === '4.17' ? '4.21' : '4.17';
    expect(() => openXcHypervisor({ sysHypervisor: sysfs(other) })).toThrow(
      new RegExp(
        `cannot load libxenctrl from libxenctrl\\.so\\.${other.replace('.', '\\.')}: .*looked for /usr/lib/x86_64-linux-gnu/libxenctrl\\.so\\.${other.replace('.', '\\.')}`,
      ),
    );
  });

  it('no hypervisor and no override: says how to choose the libraries', () => {
    expect(() => openXcHypervisor({ sysHypervisor: join(root, 'absent') })).toThrow(XenVersionUnknownError);
    expect(() => openXcHypervisor({ sysHypervisor: join(root, 'absent') })).toThrow(
      /set DEVMIGRATE_LIBXENCTRL/,
    );
  });
});
