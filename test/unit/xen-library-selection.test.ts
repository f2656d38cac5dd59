// Specification of which libxenctrl/libxenguest the agent loads: the running hypervisor's
// release (every supported one), found where Debian, Fedora, Alpine or a source install put it;
// an option or DEVMIGRATE_LIBXEN* overrides a file; an unsupported Xen is refused by name.
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  LIBRARY_DIRS,
  UnsupportedXenError,
  XenVersionUnknownError,
  describeChoice,
  parseHypervisorVersion,
  readHypervisorVersion,
  selectXenLibraries,
  type SelectionInput,
} from '../../native-bindings/library-selection.js';
import { SUPPORTED_XEN_VERSIONS, XEN_RELEASES } from '../../native-bindings/xen-releases.js';

/** A machine with these library files and this hypervisor. */
function machine(files: string[], hv?: string, extra: Partial<SelectionInput> = {}): SelectionInput {
  const [major, minor] = (hv ?? '').split('.').map(Number);
  return {
    arch: 'x64',
    hypervisor: hv === undefined ? undefined : { major: major ?? 0, minor: minor ?? 0 },
    hypervisorProblem: hv === undefined ? '/sys/hypervisor/version/{major,minor} not readable' : undefined,
    env: {},
    exists: (p) => files.includes(p),
    ...extra,
  };
}

describe('library selection for each supported Xen', () => {
  it('supports exactly Xen 4.17 to 4.22', () => {
    expect(SUPPORTED_XEN_VERSIONS).toEqual(['4.17', '4.18', '4.19', '4.20', '4.21', '4.22']);
  });

  for (const release of XEN_RELEASES) {
    const v = release.version;
    it(`Xen ${v} on Debian: loads /usr/lib/x86_64-linux-gnu/lib*.so.${v}`, () => {
      const debian = [
        `/usr/lib/x86_64-linux-gnu/libxenctrl.so.${v}`,
        `/usr/lib/x86_64-linux-gnu/libxenguest.so.${v}`,
      ];
      const c = selectXenLibraries(machine(debian, v));
      expect(c.release).toBe(release);
      expect(c.libxenctrl).toMatchObject({ path: debian[0], from: 'hypervisor' });
      expect(c.libxenguest).toMatchObject({ path: debian[1], from: 'hypervisor' });
    });

    it(`Xen ${v} on Fedora (/usr/lib64) and Alpine (/usr/lib)`, () => {
      const fedora = selectXenLibraries(
        machine([`/usr/lib64/libxenctrl.so.${v}`, `/usr/lib64/libxenguest.so.${v}`], v),
      );
      expect(fedora.libxenctrl.path).toBe(`/usr/lib64/libxenctrl.so.${v}`);
      expect(fedora.libxenguest.path).toBe(`/usr/lib64/libxenguest.so.${v}`);
      const alpine = selectXenLibraries(
        machine([`/usr/lib/libxenctrl.so.${v}`, `/usr/lib/libxenguest.so.${v}`], v),
      );
      expect(alpine.libxenctrl.path).toBe(`/usr/lib/libxenctrl.so.${v}`);
    });
  }

  it('never takes another release’s library, even when only that one is installed', () => {
    const c = selectXenLibraries(machine(['/usr/lib/x86_64-linux-gnu/libxenctrl.so.4.17'], '4.20'));
    // Nothing found for 4.20: the bare soname goes to dlopen, whose error then names what was sought.
    expect(c.libxenctrl.path).toBe('libxenctrl.so.4.20');
    expect(c.libxenctrl.searched).toEqual(LIBRARY_DIRS.map((d) => `${d}/libxenctrl.so.4.20`));
  });

  it('prefers the multiarch folder over /usr/lib when both hold the library', () => {
    const c = selectXenLibraries(
      machine(['/usr/lib/libxenctrl.so.4.19', '/usr/lib/x86_64-linux-gnu/libxenctrl.so.4.19'], '4.19'),
    );
    expect(c.libxenctrl.path).toBe('/usr/lib/x86_64-linux-gnu/libxenctrl.so.4.19');
  });
});

describe('unsupported Xen', () => {
  for (const v of ['4.16', '4.14', '4.23', '5.0', '3.4']) {
    it(`refuses Xen ${v}, naming the supported versions`, () => {
      let err: unknown;
      try {
        selectXenLibraries(machine([], v));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UnsupportedXenError);
      const u = err as UnsupportedXenError;
      expect(u.found).toBe(v);
      expect(u.supported).toEqual(SUPPORTED_XEN_VERSIONS);
      expect(u.message).toBe(
        `Xen ${v} is not supported: xen-devmigrate supports Xen 4.17, 4.18, 4.19, 4.20, 4.21, 4.22 on x86_64`,
      );
    });
  }

  it('refuses an unsupported Xen even when both libraries are overridden', () => {
    const input = machine([], '4.16', {
      env: { DEVMIGRATE_LIBXENCTRL: '/x.so', DEVMIGRATE_LIBXENGUEST: '/y.so' },
    });
    expect(() => selectXenLibraries(input)).toThrow(UnsupportedXenError);
  });

  it('refuses another architecture (the recorded layouts are x86_64)', () => {
    expect(() => selectXenLibraries(machine([], '4.20', { arch: 'arm64' }))).toThrow(
      /architecture arm64 is not supported/,
    );
  });
});

describe('overrides', () => {
  it('DEVMIGRATE_LIBXENCTRL / DEVMIGRATE_LIBXENGUEST name the files; no hypervisor needed', () => {
    const c = selectXenLibraries(
      machine([], undefined, {
        env: {
          DEVMIGRATE_LIBXENCTRL: '/sim/libxenctrl-sim.so',
          DEVMIGRATE_LIBXENGUEST: '/sim/libxenguest-sim.so',
        },
      }),
    );
    expect(c.release).toBeUndefined();
    expect(c.libxenctrl).toEqual({ path: '/sim/libxenctrl-sim.so', from: 'env', searched: [] });
    expect(c.libxenguest).toEqual({ path: '/sim/libxenguest-sim.so', from: 'env', searched: [] });
  });

  it('an option wins over the environment, which wins over the hypervisor', () => {
    const c = selectXenLibraries(
      machine(['/usr/lib64/libxenguest.so.4.20'], '4.20', {
        options: { libxenctrl: '/opt/a.so' },
        env: { DEVMIGRATE_LIBXENCTRL: '/env/b.so' },
      }),
    );
    expect(c.libxenctrl).toMatchObject({ path: '/opt/a.so', from: 'option' });
    expect(c.libxenguest).toMatchObject({ path: '/usr/lib64/libxenguest.so.4.20', from: 'hypervisor' });
    expect(c.release?.version).toBe('4.20');
    expect(describeChoice(c)).toBe(
      'Xen 4.20: libxenctrl /opt/a.so (option), libxenguest /usr/lib64/libxenguest.so.4.20 (hypervisor)',
    );
  });

  it('without a hypervisor, a library not overridden is an error that says how to choose it', () => {
    const input = machine([], undefined, { env: { DEVMIGRATE_LIBXENCTRL: '/x.so' } });
    expect(() => selectXenLibraries(input)).toThrow(XenVersionUnknownError);
    expect(() => selectXenLibraries(input)).toThrow(
      'cannot tell which libxenguest to load: /sys/hypervisor/version/{major,minor} not readable (not a Xen dom0?); set DEVMIGRATE_LIBXENGUEST to a library path to choose it',
    );
  });

  it('an empty variable counts as unset', () => {
    const c = selectXenLibraries(
      machine([], '4.18', { env: { DEVMIGRATE_LIBXENCTRL: '', DEVMIGRATE_LIBXENGUEST: '' } }),
    );
    expect(c.libxenctrl.from).toBe('hypervisor');
  });
});

describe('reading the hypervisor version from sysfs', () => {
  const dirs: string[] = [];
  const sysfs = (files: Record<string, string>): string => {
    const d = mkdtempSync(join(tmpdir(), 'sys-hypervisor-'));
    dirs.push(d);
    for (const [name, text] of Object.entries(files)) {
      mkdirSync(join(d, name, '..'), { recursive: true });
      writeFileSync(join(d, name), text);
    }
    return d;
  };
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('reads major, minor and extra as Debian’s xen-utils-wrapper does', () => {
    const d = sysfs({
      type: 'xen\n',
      'version/major': '4\n',
      'version/minor': '20\n',
      'version/extra': '.4\n',
    });
    expect(readHypervisorVersion(d)).toEqual({ version: { major: 4, minor: 20, extra: '.4' } });
  });

  it('says why when there is no Xen, another hypervisor, or garbage', () => {
    expect(readHypervisorVersion(sysfs({}))).toEqual({
      problem: expect.stringMatching(/version\/\{major,minor\} not readable$/) as unknown,
    });
    expect(readHypervisorVersion(sysfs({ type: 'kvm\n' }))).toEqual({
      problem: 'the hypervisor is "kvm", not xen',
    });
    expect(parseHypervisorVersion('4', 'x1')).toEqual({ problem: 'unreadable hypervisor version "4.x1"' });
    expect(parseHypervisorVersion(' 4 ', '17\n')).toEqual({ version: { major: 4, minor: 17 } });
  });
});
