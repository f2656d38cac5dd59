// Specification of libxenctrl-sim.so / libxenguest-sim.so loaded through koffi, as the agent's
// bindings load the real libraries: the installed Xen release's ABI (4.17: xc_domain_getinfo too;
// 4.18+: xc_domain_getinfo_single instead), errno conventions, and the one hypervisor they share
// with xenstored (a suspend or destroy through the library reaches @releaseDomain).
import { execFile, spawn } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import koffi from 'koffi';
import type { LibraryHandle } from 'koffi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  decodeDomainInfo,
  XC_DOMAININFO_SIZE,
  type XcDomainInfoRecord,
} from '../../native-bindings/libxenctrl.js';
import { buildMocks, startXenstored, type XenstoredHarness } from '../../xen-mocks/harness.js';
import { xenToolsVersion } from '../../xen-mocks/paths.js';

const execFileP = promisify(execFile);

const SHUTDOWN_SUSPEND = 2;
const DOMINF = { dying: 1, hvm: 2, shutdown: 4, paused: 8, running: 32 } as const;
const ERRNO = koffi.os.errno as Record<string, number>;

const XC_DOMINFO_SIZE = 112; // sizeof(xc_dominfo_t), gcc against Debian's 4.17 xenctrl.h
/** The sim libraries are built against the installed headers: 4.17 still has xc_domain_getinfo. */
const HEADERS_HAVE_GETINFO = xenToolsVersion() === '4.17';

/** A symbol of the library, or undefined when it does not export it. */
function optionalFunc(lib: LibraryHandle, decl: string): ((...a: unknown[]) => unknown) | undefined {
  try {
    return lib.func(decl) as (...a: unknown[]) => unknown;
  } catch {
    return undefined;
  }
}

describe('simulated libxenctrl / libxenguest through koffi', () => {
  let xs: XenstoredHarness;
  let xch: unknown;
  let xc: Record<string, ((...args: unknown[]) => unknown) | undefined>;
  let xg: Record<string, (...args: unknown[]) => unknown>;
  const savedState = process.env['XEN_SIM_STATE'];

  /** Calls a C function and returns [ret, errno]. */
  const call = (fn: (...a: unknown[]) => unknown, ...args: unknown[]): [number, number] => {
    koffi.errno(0);
    const ret = Number(fn(...args));
    return [ret, koffi.errno()];
  };

  const infolist = (): XcDomainInfoRecord[] => {
    const buf = Buffer.alloc(XC_DOMAININFO_SIZE * 16);
    const [n] = call(xc['getinfolist'] as (...a: unknown[]) => unknown, xch, 0, 16, buf);
    const out: XcDomainInfoRecord[] = [];
    for (let i = 0; i < n; i++) out.push(decodeDomainInfo(buf, i));
    return out;
  };

  const releaseWatch = (count: number) => {
    const child = spawn('xenstore-watch', ['-n', String(count), '@releaseDomain'], {
      env: xs.env,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const done = new Promise<string[]>((resolve) =>
      child.on('exit', () => {
        clearTimeout(timer);
        resolve(out.split('\n').filter((l) => l !== ''));
      }),
    );
    const armed = async (): Promise<void> => {
      const deadline = Date.now() + 5_000;
      while (!out.includes('@releaseDomain')) {
        if (Date.now() > deadline) throw new Error('watch not armed');
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    return { done, armed };
  };

  beforeAll(async () => {
    await buildMocks();
    xs = await startXenstored();
    process.env['XEN_SIM_STATE'] = xs.stateDir;
    const lib = koffi.load(join(xs.simLibDir, 'libxenctrl-sim.so'));
    const glib = koffi.load(join(xs.simLibDir, 'libxenguest-sim.so'));
    xc = {
      open: lib.func('void *xc_interface_open(void *, void *, unsigned int)'),
      close: lib.func('int xc_interface_close(void *)'),
      getinfo: optionalFunc(lib, 'int xc_domain_getinfo(void *, uint32_t, unsigned int, void *)'),
      getinfoSingle: lib.func('int xc_domain_getinfo_single(void *, uint32_t, void *)'),
      getinfolist: lib.func('int xc_domain_getinfolist(void *, uint32_t, unsigned int, void *)'),
      pause: lib.func('int xc_domain_pause(void *, uint32_t)'),
      unpause: lib.func('int xc_domain_unpause(void *, uint32_t)'),
      shutdown: lib.func('int xc_domain_shutdown(void *, uint32_t, int)'),
      destroy: lib.func('int xc_domain_destroy(void *, uint32_t)'),
      hvmParamGet: lib.func('int xc_hvm_param_get(void *, uint32_t, uint32_t, _Out_ uint64_t *)'),
    };
    xg = { resume: glib.func('int xc_domain_resume(void *, uint32_t, int)') };
    xch = (xc['open'] as (...a: unknown[]) => unknown)(null, null, 0);
    expect(xch).not.toBeNull();
  });

  afterAll(async () => {
    if (xch) (xc['close'] as (...a: unknown[]) => unknown)(xch);
    if (savedState === undefined) delete process.env['XEN_SIM_STATE'];
    else process.env['XEN_SIM_STATE'] = savedState;
    await xs?.stop();
  });

  it('lists domains with xc_domain_getinfolist in the 4.17 layout', async () => {
    await xs.addGuest(4, { hvm: true });
    const doms = infolist();
    expect(doms.map((d) => d.domain)).toEqual([0, 4]);
    const d4 = doms[1];
    expect(d4?.flags).toBe(DOMINF.hvm | DOMINF.running | 0x100 /* hap */);
    expect(d4?.nr_online_vcpus).toBe(1);
  });

  it(`exports xc_domain_getinfo only as Xen ${xenToolsVersion()} does (${HEADERS_HAVE_GETINFO ? 'present' : 'removed in 4.18'})`, () => {
    expect(xc['getinfo'] !== undefined).toBe(HEADERS_HAVE_GETINFO);
  });

  it('answers xc_domain_getinfo_single for the asked domain only (ESRCH otherwise)', async () => {
    const single = xc['getinfoSingle'] as (...a: unknown[]) => unknown;
    const buf = Buffer.alloc(XC_DOMAININFO_SIZE);
    expect(call(single, xch, 4, buf)[0]).toBe(0);
    expect(decodeDomainInfo(buf, 0).domain).toBe(4);
    expect(call(single, xch, 3, buf)).toEqual([-1, ERRNO['ESRCH']]);
    expect(call(single, xch, 5, buf)).toEqual([-1, ERRNO['ESRCH']]);
  });

  // Part of the 4.17 ABI only: on a 4.18+ build the test above proves the symbol is absent.
  if (HEADERS_HAVE_GETINFO)
    it('reports xc_dominfo_t bitfields and the next domain semantics of xc_domain_getinfo', async () => {
      await xs.setDomain(4, { paused: 1 });
      const buf = Buffer.alloc(XC_DOMINFO_SIZE);
      expect(call(xc['getinfo'] as (...a: unknown[]) => unknown, xch, 1, 1, buf)[0]).toBe(1);
      expect(buf.readUInt32LE(0)).toBe(4); // first domain >= 1
      const bits = buf.readUInt32LE(8);
      expect(bits & (1 << 3)).not.toBe(0); // paused
      expect(bits & (1 << 5)).toBe(0); // not running
      expect(bits & (1 << 6)).not.toBe(0); // hvm
      expect(call(xc['getinfo'] as (...a: unknown[]) => unknown, xch, 5, 1, buf)).toEqual([
        -1,
        ERRNO['ESRCH'],
      ]);
      await xs.setDomain(4, { paused: 0 });
    });

  it('pauses and unpauses with Xen errno conventions', async () => {
    const pause = xc['pause'] as (...a: unknown[]) => unknown;
    const unpause = xc['unpause'] as (...a: unknown[]) => unknown;
    expect(call(pause, xch, 4)[0]).toBe(0);
    expect(await xs.getDomain(4)).toMatchObject({ paused: 1 });
    expect(infolist()[1]?.flags ?? 0).toBeGreaterThan(0);
    expect((infolist()[1]?.flags ?? 0) & DOMINF.paused).toBe(DOMINF.paused);
    expect(call(unpause, xch, 4)[0]).toBe(0);
    expect(await xs.getDomain(4)).toMatchObject({ paused: 0 });
    expect(call(unpause, xch, 4)).toEqual([-1, ERRNO['EINVAL']]);
    expect(call(pause, xch, 99)).toEqual([-1, ERRNO['ESRCH']]);
  });

  it('reads HVM params from the state (0 when unset, EINVAL for PV)', async () => {
    const get = xc['hvmParamGet'] as (...a: unknown[]) => unknown;
    await xs.setDomain(4, { hvmParams: { 0: 7 } });
    const v: [bigint | number] = [0];
    expect(call(get, xch, 4, 0, v)[0]).toBe(0);
    expect(Number(v[0])).toBe(7);
    expect(call(get, xch, 4, 14, v)[0]).toBe(0);
    expect(Number(v[0])).toBe(0);
    await xs.addGuest(6);
    expect(call(get, xch, 6, 0, v)).toEqual([-1, ERRNO['EINVAL']]);
  });

  it('xc_domain_shutdown(SHUTDOWN_suspend) makes xenstored fire @releaseDomain', async () => {
    const w = releaseWatch(2);
    await w.armed();
    expect(call(xc['shutdown'] as (...a: unknown[]) => unknown, xch, 4, SHUTDOWN_SUSPEND)[0]).toBe(0);
    expect(await w.done).toEqual(['@releaseDomain', '@releaseDomain']);
    const flags = infolist()[1]?.flags ?? 0;
    expect(flags & DOMINF.shutdown).toBe(DOMINF.shutdown);
    expect((flags >> 16) & 0xff).toBe(SHUTDOWN_SUSPEND);
    expect(await xs.getDomain(4)).toMatchObject({ shutdown: true, shutdownReason: SHUTDOWN_SUSPEND });
  });

  it('xc_domain_resume clears the shutdown; a fast resume needs a suspended domain', async () => {
    const resume = xg['resume'] as (...a: unknown[]) => unknown;
    expect(call(resume, xch, 4, 1)[0]).toBe(0);
    expect(await xs.getDomain(4)).toMatchObject({
      shutdown: false,
      resumeCount: 1,
      lastResumeFast: 1,
      paused: 0,
    });
    expect((infolist()[1]?.flags ?? 0) & DOMINF.running).toBe(DOMINF.running);
    expect(call(resume, xch, 4, 1)).toEqual([-1, ERRNO['EINVAL']]);
    expect(call(resume, xch, 77, 0)).toEqual([-1, ERRNO['ESRCH']]);
    // xenstored forgets the shutdown only on XS_RESUME, as on real Xen.
    await execFileP(join(xs.simLibDir, 'xs-tool'), ['resume', '4'], { env: xs.env, timeout: 10_000 });
  });

  it('xc_domain_destroy makes xenstored release the domain and delete its nodes', async () => {
    const w = releaseWatch(2);
    await w.armed();
    expect(call(xc['destroy'] as (...a: unknown[]) => unknown, xch, 6)[0]).toBe(0);
    expect(await w.done).toHaveLength(2);
    const ex = await execFileP('xenstore-exists', ['/local/domain/6'], { env: xs.env }).then(
      () => 0,
      () => 1,
    );
    expect(ex).toBe(1);
    expect(await xs.getDomain(6)).toMatchObject({ dying: true });
    expect(call(xc['destroy'] as (...a: unknown[]) => unknown, xch, 0)).toEqual([-1, ERRNO['EPERM']]);
  });
});
