// Specifies the load-time behaviour of the libxenctrl/libxenguest bindings against Debian's real
// Xen 4.17 libraries (no hypervisor here): symbols resolve, the struct layout matches the C
// headers, and a missing library or symbol is a typed error naming it.
import { describe, it, expect } from 'vitest';
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

describe('libxenctrl binding', () => {
  it('matches xc_domaininfo_t of the 4.17 headers (gcc: 112 bytes, handle at 76, arch_config at 104)', () => {
    expect(koffi.sizeof(XcDomainInfo)).toBe(XC_DOMAININFO_SIZE);
    expect(koffi.offsetof(XcDomainInfo, 'flags')).toBe(4);
    expect(koffi.offsetof(XcDomainInfo, 'cpu_time')).toBe(56);
    expect(koffi.offsetof(XcDomainInfo, 'handle')).toBe(76);
    expect(koffi.offsetof(XcDomainInfo, 'cpupool')).toBe(92);
    expect(koffi.offsetof(XcDomainInfo, 'arch_config')).toBe(104);
  });

  it('loads the real 4.17 library and reports its optional symbols', () => {
    const xc = loadLibxenctrl({ path: 'libxenctrl.so.4.17' });
    expect(xc.has).toEqual({ xc_domain_getinfo: true, xc_hvm_param_get: true, xc_domain_destroy: true });
  });

  it('fails xc_interface_open without a hypervisor, with an errno', () => {
    const xc = loadLibxenctrl({ path: 'libxenctrl.so.4.17' });
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
  it('finds xc_domain_resume in the real 4.17 libxenguest', () => {
    expect(loadLibxenguest({ path: 'libxenguest.so.4.17' }).path).toBe('libxenguest.so.4.17');
  });
  it('names the missing symbol when pointed at another library', () => {
    expect(() => loadLibxenguest({ path: 'libxenstore.so.4' })).toThrow(/xc_domain_resume/);
  });
});
