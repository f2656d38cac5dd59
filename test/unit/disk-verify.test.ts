// The e2e disk verifier (test/e2e/lib/disk-verify.js) as the two-host e2e runs it: a disk image in
// the guest disk writer's format (test/e2e/guest/disk-writer.sh) against the guest's console. It
// must accept a faithful copy, and refuse a copy missing an acknowledged write or holding a
// corrupted block: otherwise the e2e's "every block arrived" check could not fail.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const VERIFY = resolve(dirname(fileURLToPath(import.meta.url)), '../e2e/lib/disk-verify.js');
const SLOTS = 8;

/** One block as disk-writer.sh writes it: 64-byte header line, then "<n>." over 4032 bytes. */
function block(seq: number): Buffer {
  const unit = `${seq}.`;
  const payload = Buffer.from(unit.repeat(Math.ceil(4032 / unit.length)).slice(0, 4032));
  const sum = createHash('md5').update(payload).digest('hex');
  const header = `DMB1 seq=${seq} slot=${(seq - 1) % SLOTS} sum=${sum}`.padEnd(63, ' ') + '\n';
  return Buffer.concat([Buffer.from(header), payload]);
}

/** The disk after writes 1..last, each to slot (seq - 1) % SLOTS. */
function disk(last: number): Buffer {
  const img = Buffer.alloc(SLOTS * 4096 * 2);
  for (let seq = 1; seq <= last; seq++) block(seq).copy(img, ((seq - 1) % SLOTS) * 4096);
  return img;
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'disk-verify-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function verify(img: Buffer, consoleText: string) {
  writeFileSync(join(dir, 'disk.img'), img);
  writeFileSync(join(dir, 'console.log'), consoleText);
  const r = spawnSync(
    'node',
    [
      VERIFY,
      '--image',
      join(dir, 'disk.img'),
      '--console',
      join(dir, 'console.log'),
      '--slots',
      String(SLOTS),
    ],
    { encoding: 'utf8' },
  );
  return {
    code: r.status,
    result: JSON.parse(r.stdout.trim()) as { ok: boolean; verified: number; problems: string[] },
  };
}

const acked = (n: number) =>
  Array.from({ length: n }, (_, i) => `t 1.${i}\ndisk-wrote seq=${i + 1}\n`).join('');

describe('disk-verify.js', () => {
  it('accepts a copy holding every acknowledged write, and counts the blocks it checked', () => {
    const r = verify(disk(20), acked(20));
    expect(r.code).toBe(0);
    expect(r.result).toMatchObject({ ok: true, verified: SLOTS });
  });

  it('accepts later writes of the same slot (the guest went on writing at the destination)', () => {
    expect(verify(disk(27), acked(20)).result.ok).toBe(true);
  });

  it('refuses a copy that misses the last acknowledged write', () => {
    const r = verify(disk(19), acked(20));
    expect(r.code).toBe(1);
    expect(r.result.problems.join(' ')).toMatch(/seq 20: slot 3 holds the older seq 12/);
  });

  it('refuses a corrupted block', () => {
    const img = disk(20);
    img.write('XXXX', 2 * 4096 + 100);
    const r = verify(img, acked(20));
    expect(r.code).toBe(1);
    expect(r.result.problems.join(' ')).toMatch(/slot 2: checksum/);
  });

  it('refuses a console without any acknowledged write', () => {
    expect(verify(disk(0), 't 1.0\n').result.ok).toBe(false);
  });
});
