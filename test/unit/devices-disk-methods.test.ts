// Specification of the disk methods' pure parts: which disks are mirrored (qdisk + disks.mirror,
// raw or qcow2, a writable vdev) and which are copied, the node names xen-block makes, reading
// QEMU's job and node answers (never trusted blindly), the remote argv charset, the destination
// verdict (exists / room), df and dd parsing, the final-pass estimate, and the config keys.
import { describe, expect, it } from 'vitest';
import { defaultConfig, validateConfig, type DisksConfig } from '../../src/config/schema.js';
import { decideDisk } from '../../src/devices/disk-policy.js';
import { destinationVerdict, parentDir, parseDfAvailBytes } from '../../src/devices/destination.js';
import { estimateFinalPass } from '../../src/devices/downtime-estimate.js';
import {
  findBlockJob,
  findBlockNode,
  jobPhase,
  mirrorArgs,
  mirrorNames,
  qdiskFormat,
  sourceNodeProblem,
  vdevOk,
  xenBlockNodeName,
} from '../../src/devices/mirror-plan.js';
import { parseDdSummary } from '../../src/devices/read-rate.js';
import { remoteArgv, remoteWordOk, resolveShellProgram } from '../../src/devices/remote-shell.js';
import { exportCommand } from '../../src/devices/nbd-export.js';
import { ToolInputError } from '../../src/devices/external-tool.js';

const mirrorCfg = validateConfig({ disks: { mirror: {} } }).disks.mirror;
if (mirrorCfg === undefined) throw new Error('no mirror config');

describe('which disks are mirrored', () => {
  const withBoth: DisksConfig = validateConfig({ disks: { copy: { method: 'rsync' }, mirror: {} } }).disks;
  const file = { kind: 'file' as const, fsType: 'ext2/ext3', size: 1 << 30, allocated: 1 << 20 };

  it('a writable qdisk raw/qcow2 image with disks.mirror -> mirror, with xen-block node facts', () => {
    expect(decideDisk({ params: 'aio:/var/a.img', mode: 'w', dev: 'xvda' }, file, withBoth, 0, true)).toEqual(
      {
        action: 'mirror',
        path: '/var/a.img',
        size: 1 << 30,
        allocated: 1 << 20,
        format: 'raw',
        vdev: 'xvda',
      },
    );
    expect(
      decideDisk({ params: 'qcow2:/var/a.qcow2', mode: 'w', dev: 'xvdb' }, file, withBoth, 0, true),
    ).toMatchObject({ action: 'mirror', format: 'qcow2' });
  });
  it('blkback (vbd), read-only, vhd/qed formats, odd vdevs -> the rsync copy', () => {
    const d = (b: Record<string, string>, qemu: boolean): string =>
      decideDisk({ mode: 'w', dev: 'xvda', ...b }, file, withBoth, 0, qemu).action;
    expect(d({ params: '/var/a.img' }, false)).toBe('copy');
    expect(d({ params: 'aio:/var/a.img', mode: 'r' }, true)).toBe('copy');
    expect(d({ params: 'vhd:/var/a.vhd' }, true)).toBe('copy');
    expect(d({ params: 'qed:/var/a.qed' }, true)).toBe('copy');
    expect(d({ params: 'aio:/var/a.img', dev: 'xvda;x' }, true)).toBe('copy');
  });
  it('no disks.mirror -> copy; neither -> refused naming both keys for a qdisk', () => {
    const copyOnly = validateConfig({ disks: { copy: { method: 'rsync' } } }).disks;
    expect(decideDisk({ params: 'aio:/a.img', mode: 'w', dev: 'xvda' }, file, copyOnly, 0, true).action).toBe(
      'copy',
    );
    expect(
      decideDisk({ params: 'aio:/a.img', mode: 'w', dev: 'xvda' }, file, defaultConfig().disks, 0, true),
    ).toMatchObject({
      action: 'refuse',
      reason: expect.stringContaining('disks.copy or disks.mirror'),
    });
  });
  it("xen-block's node names and formats (hw/block/xen-block.c)", () => {
    expect(qdiskFormat('aio:/a')).toBe('raw');
    expect(qdiskFormat('raw:/a')).toBe('raw');
    expect(qdiskFormat('/a')).toBe('raw');
    expect(qdiskFormat('qcow2:/a')).toBe('qcow2');
    expect(qdiskFormat('vhd:/a')).toBeUndefined();
    expect(xenBlockNodeName('xvda', 'raw')).toBe('xvda-raw');
    for (const ok of ['xvda', 'xvdaa1', 'hdb', 'sdc2', 'd0', 'd12p3']) expect(vdevOk(ok), ok).toBe(true);
    for (const bad of ['', 'xvd', 'vda', 'xvda;x', 'd', 'd1p', '../x']) expect(vdevOk(bad), bad).toBe(false);
  });
});

describe("reading QEMU's answers", () => {
  const jobs = [
    { device: 'other', status: 'running', ready: false, offset: 1, len: 2 },
    { device: 'devmigrate-51712', status: 'ready', ready: true, offset: 100, len: 100, type: 'mirror' },
  ];
  it('finds our job and says what its state means', () => {
    const j = findBlockJob(jobs, 'devmigrate-51712');
    expect(j).toEqual({
      id: 'devmigrate-51712',
      status: 'ready',
      ready: true,
      offset: 100,
      len: 100,
      error: undefined,
    });
    expect(jobPhase(j, false)).toEqual({ kind: 'ready', offset: 100, len: 100 });
    expect(jobPhase({ ...j!, status: 'running', ready: false }, false).kind).toBe('copying');
    expect(jobPhase({ ...j!, status: 'ready', ready: false }, false).kind).toBe('copying');
    expect(jobPhase(undefined, false)).toMatchObject({
      kind: 'failed',
      why: expect.stringContaining('gone'),
    });
    expect(jobPhase({ ...j!, status: 'concluded', error: 'No space left on device' }, true)).toMatchObject({
      kind: 'failed',
      why: 'mirror job failed: No space left on device',
    });
    // Concluded without an error is success only when we ended it.
    expect(jobPhase({ ...j!, status: 'concluded' }, true).kind).toBe('completed');
    expect(jobPhase({ ...j!, status: 'concluded' }, false).kind).toBe('failed');
    expect(jobPhase({ ...j!, status: 'pending' }, true).kind).toBe('copying');
    expect(jobPhase({ ...j!, status: 'aborting' }, false).kind).toBe('failed');
  });
  it('malformed entries are not trusted', () => {
    expect(findBlockJob('nonsense', 'x')).toBeUndefined();
    expect(findBlockJob([{ device: 'x', offset: -5, len: 'a', status: 7 }], 'x')).toMatchObject({
      offset: 0,
      len: 0,
      status: 'unknown',
    });
    expect(jobPhase(findBlockJob([{ device: 'x', status: 7 }], 'x'), false).kind).toBe('failed');
  });
  it('checks the source node is the format node of our image', () => {
    const nodes = [
      { 'node-name': 'xvda-raw', drv: 'raw', file: '/var/a.img', image: { 'virtual-size': 1024 } },
      { 'node-name': '#block123', drv: 'file', file: '/var/a.img', image: { 'virtual-size': 1024 } },
    ];
    const n = findBlockNode(nodes, 'xvda-raw');
    expect(n).toEqual({ nodeName: 'xvda-raw', driver: 'raw', file: '/var/a.img', virtualSize: 1024 });
    expect(sourceNodeProblem(n, { nodeName: 'xvda-raw', path: '/var/a.img', format: 'raw' })).toBeUndefined();
    expect(sourceNodeProblem(n, { nodeName: 'xvda-raw', path: '/var/b.img', format: 'raw' })).toMatch(
      /serves \/var\/a.img/,
    );
    expect(sourceNodeProblem(n, { nodeName: 'xvda-raw', path: '/var/a.img', format: 'qcow2' })).toMatch(
      /is raw/,
    );
    expect(sourceNodeProblem(undefined, { nodeName: 'xvdb-raw', path: '/x', format: 'raw' })).toMatch(
      /no block node/,
    );
  });
  it('names and arguments of what we create', () => {
    const names = mirrorNames(7, '51712', mirrorCfg);
    expect(names).toEqual({
      jobId: 'devmigrate-51712',
      targetNode: 'devmigrate-nbd-51712',
      localSocket: '/run/devmigrate/nbd-7-51712.sock',
      remoteSocket: '/run/devmigrate/nbd-7-51712.sock',
      exportName: 'devmigrate',
    });
    // QEMU node names: at most 31 characters.
    expect(mirrorNames(7, '268439552', mirrorCfg).targetNode.length).toBeLessThanOrEqual(31);
    expect(mirrorArgs(names, 'xvda-raw', 'write-blocking')).toEqual({
      'job-id': 'devmigrate-51712',
      device: 'xvda-raw',
      target: 'devmigrate-nbd-51712',
      sync: 'full',
      'copy-mode': 'write-blocking',
      'auto-dismiss': false,
      'auto-finalize': true,
      'on-source-error': 'report',
      'on-target-error': 'report',
    });
    expect(mirrorArgs(names, 'xvda-raw', 'background', 1000)).toMatchObject({
      speed: 1000,
      'copy-mode': 'background',
    });
  });
});

describe('remote commands', () => {
  const shell = { rsh: ['ssh', '-o', 'BatchMode=yes'], host: 'host-b.example.org', killGraceMs: 100 };
  it('a bare remote shell name runs from the tool PATH; an unknown one is refused with why', () => {
    expect(resolveShellProgram('ssh')).toBe('/usr/bin/ssh');
    expect(resolveShellProgram('/opt/x/ssh')).toBe('/opt/x/ssh');
    expect(() => resolveShellProgram('no-such-remote-shell')).toThrow(/not found in \/usr\/sbin/);
    expect(() => resolveShellProgram('ss h')).toThrow(ToolInputError);
  });

  it('argv is rsh, extra options, host, words', () => {
    expect(remoteArgv(shell, ['test', '-e', '/var/a.img'], ['-L', '/run/a.sock:/run/b.sock'])).toEqual({
      path: '/usr/bin/ssh',
      args: [
        '-o',
        'BatchMode=yes',
        '-L',
        '/run/a.sock:/run/b.sock',
        'host-b.example.org',
        'test',
        '-e',
        '/var/a.img',
      ],
    });
  });
  it('refuses any word a remote shell would read differently, and hosts that look like options', () => {
    for (const bad of ['a b', 'a;b', '$(x)', '`x`', "'", '"', 'a|b', 'a&b', '*', '?', '[x]', '~root', '']) {
      expect(remoteWordOk(bad), JSON.stringify(bad)).toBe(false);
      expect(() => remoteArgv(shell, ['rm', '-f', bad])).toThrow(ToolInputError);
    }
    expect(() => remoteArgv({ ...shell, host: '-oProxyCommand=x' }, ['true'])).toThrow(ToolInputError);
    expect(remoteArgv({ ...shell, host: '2001:db8::2' }, ['true']).args).toContain('2001:db8::2');
  });
});

describe('the destination export', () => {
  it('one process: ssh forwarding a unix socket, qemu-nbd for one client under a time bound', () => {
    const names = mirrorNames(7, '51712', mirrorCfg);
    const spec = {
      shell: { rsh: mirrorCfg.rsh, host: 'host-b', killGraceMs: 100 },
      cfg: mirrorCfg,
      names,
      destPath: '/var/lib/xen/images/g.img',
      format: 'raw' as const,
      sizeBytes: 1 << 30,
      lifetimeMs: 3_600_500,
      cache: mirrorCfg.targetCache,
    };
    // The default: O_DIRECT, nothing of the target left in the destination's page cache.
    expect(mirrorCfg.targetCache).toBe('none');
    const cmd = exportCommand(spec, '/run/devmigrate/nbd-7-51712.pid');
    expect(remoteArgv(spec.shell, cmd.words, cmd.rshExtra)).toEqual({
      path: '/usr/bin/ssh',
      args: [
        '-o',
        'BatchMode=yes',
        '-o',
        'ExitOnForwardFailure=yes',
        '-o',
        'StreamLocalBindUnlink=yes',
        '-L',
        '/run/devmigrate/nbd-7-51712.sock:/run/devmigrate/nbd-7-51712.sock',
        'host-b',
        'timeout',
        '-s',
        'TERM',
        '3601',
        '/usr/bin/qemu-nbd',
        '--socket=/run/devmigrate/nbd-7-51712.sock',
        '--format=raw',
        '--export-name=devmigrate',
        '--shared=1',
        '--cache=none',
        '--discard=unmap',
        '--detect-zeroes=unmap',
        '--pid-file=/run/devmigrate/nbd-7-51712.pid',
        '/var/lib/xen/images/g.img',
      ],
    });
    // No --persistent, no TCP: the export ends with its one client and listens on a socket only.
    expect(cmd.words.join(' ')).not.toMatch(/--persistent|-t\b|--port|--bind/);
    // After a refused O_DIRECT (or when configured): through the page cache.
    expect(exportCommand({ ...spec, cache: 'writeback' }, '/p').words).toContain('--cache=writeback');
    expect(() => validateConfig({ disks: { mirror: { targetCache: 'unsafe' } } })).toThrow(
      /disks\.mirror\.targetCache/,
    );
  });
});

describe('destination verdict', () => {
  const want = {
    path: '/var/a.img',
    host: 'b',
    needBytes: 1000,
    reuse: false,
    reuseKey: 'disks.copy.reuseExisting',
  };
  it('refuses an existing path unless reuse is configured, and a filesystem without room', () => {
    expect(destinationVerdict({ exists: true, freeBytes: 1 << 30, freeAt: '/var' }, want)).toEqual({
      ok: false,
      reason:
        'b:/var/a.img already exists; refusing to write over it (set disks.copy.reuseExisting to reuse it)',
    });
    expect(
      destinationVerdict({ exists: true, freeBytes: 0, freeAt: '/var' }, { ...want, reuse: true }),
    ).toMatchObject({
      ok: true,
      note: expect.stringContaining('will be overwritten'),
    });
    expect(destinationVerdict({ exists: false, freeBytes: 999, freeAt: '/var' }, want)).toEqual({
      ok: false,
      reason: 'b:/var/a.img: 999 bytes free under /var, the image needs 1000',
    });
    expect(destinationVerdict({ exists: false, freeBytes: 1000, freeAt: '/var' }, want)).toEqual({
      ok: true,
    });
    expect(destinationVerdict({ exists: false, freeBytes: undefined, freeAt: undefined }, want).ok).toBe(
      false,
    );
  });
  it('parses df -P -k (GNU and busybox) and walks up folders', () => {
    expect(
      parseDfAvailBytes([
        'Filesystem     1024-blocks     Used Available Capacity Mounted on',
        '/dev/vda        263174212 28000000 221000000      12% /',
      ]),
    ).toBe(221000000 * 1024);
    expect(
      parseDfAvailBytes(['Filesystem 1024-blocks Used Available Use% Mounted on', 'x y z']),
    ).toBeUndefined();
    expect(parentDir('/var/lib/xen/a.img')).toBe('/var/lib/xen');
    expect(parentDir('/a')).toBe('/');
    expect(parentDir('/')).toBe('/');
  });
});

describe('rsync final-pass estimate', () => {
  it('parses dd summaries', () => {
    expect(parseDdSummary('67108864 bytes (67 MB, 64 MiB) copied, 0.0512 s, 1.3 GB/s')).toEqual({
      bytes: 67108864,
      seconds: 0.0512,
    });
    expect(parseDdSummary('64+0 records in')).toBeUndefined();
  });
  it('size / read rate, with a warning past timeouts.syncMs', () => {
    const e = estimateFinalPass(20 * 2 ** 30, { bytesPerSec: 2 ** 30, direct: true }, 300_000);
    expect(e).toMatchObject({ ms: 20_000, exceedsSync: false });
    expect(e.note).toBe('rsync final pass (guest suspended) reads all 20 GiB: at least 20 s at 1.0 GiB/s');
    const w = estimateFinalPass(500 * 2 ** 30, { bytesPerSec: 2 ** 30, direct: false }, 300_000);
    expect(w.exceedsSync).toBe(true);
    expect(w.note).toMatch(
      /^WARNING: .* 500 s at 1.0 GiB\/s \(cached: optimistic\), over timeouts.syncMs \(300 s\); mirror/,
    );
    expect(estimateFinalPass(2 ** 40, { bytesPerSec: 1, direct: false }, 1).note.length).toBeLessThanOrEqual(
      200,
    );
  });
});

describe('config keys of the disk methods', () => {
  it('disks.mirror defaults: libxl socket and lock, ssh, write-blocking, O_DIRECT target, no reuse', () => {
    expect(mirrorCfg).toEqual({
      rsh: ['ssh', '-o', 'BatchMode=yes'],
      remoteRoot: '/',
      qmpPath: '/var/run/xen/qmp-libxl-%d',
      qmpLockDir: '/var/lib/xen',
      runDir: '/run/devmigrate',
      remoteRunDir: '/run/devmigrate',
      qemuNbd: '/usr/bin/qemu-nbd',
      qemuImg: '/usr/bin/qemu-img',
      copyMode: 'write-blocking',
      targetCache: 'none',
      reuseExisting: false,
      qmpTimeoutMs: 10_000,
      bandwidthBytesPerSec: 0,
    });
    expect(validateConfig({ disks: { mirror: { qmpLockDir: '' } } }).disks.mirror?.qmpLockDir).toBe('');
    expect(validateConfig({ disks: { copy: { method: 'rsync' } } }).disks.copy).toMatchObject({
      reuseExisting: false,
      sparse: true,
    });
  });
  it.each([
    [{ disks: { mirror: { qmpPath: '/run/qmp' } } }, 'disks.mirror.qmpPath', '"%d"'],
    [{ disks: { mirror: { qmpPath: '/run/%d/%d' } } }, 'disks.mirror.qmpPath', 'exactly once'],
    [{ disks: { mirror: { copyMode: 'sync' } } }, 'disks.mirror.copyMode', 'must be one of'],
    [{ disks: { mirror: { rsh: ['ssh', '-o', 'ProxyCommand=$(x)'] } } }, 'disks.mirror.rsh[2]', 'plain word'],
    [{ disks: { mirror: { runDir: `/${'r'.repeat(70)}` } } }, 'disks.mirror.runDir', '64 characters'],
    [{ disks: { mirror: { reuseExisting: 'yes' } } }, 'disks.mirror.reuseExisting', 'true or false'],
    [{ disks: { mirror: { qmpTimeoutMs: 5 } } }, 'disks.mirror.qmpTimeoutMs', 'between 100'],
    [{ disks: { mirror: { bandwidthBytesPerSec: -1 } } }, 'disks.mirror.bandwidthBytesPerSec', 'between 0'],
    [{ disks: { mirror: { colour: 1 } } }, 'disks.mirror.colour', 'unknown key'],
    [{ disks: { copy: { method: 'rsync', sparse: 1 } } }, 'disks.copy.sparse', 'true or false'],
  ])('refuses %j at %s', (raw, key, reason) => {
    expect(() => validateConfig(raw)).toThrow(expect.objectContaining({ keyPath: key }));
    expect(() => validateConfig(raw)).toThrow(reason);
  });
});
