// Checks a copy of a guest disk written by test/e2e/guest/disk-writer.sh against what the guest
// acknowledged on its console ("disk-wrote seq=<n>"): the last SLOTS acknowledged writes must
// each be found in their slot (that seq or a later one of the same slot), and every block that
// carries a header must be intact (checksum and payload). Usable as a module and as a command:
//   node disk-verify.js --image DISK --console LOG [--console LOG ...] [--slots 64] [--upto SEQ]
// prints one JSON line {ok, lastSeq, expected, verified, problems} and exits 0 only when ok.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

export const BLOCK = 4096;
const HEADER = 64;

/** The payload of block seq n: "<n>." repeated over 4032 bytes. */
export function payloadOf(n) {
  const unit = `${n}.`;
  return Buffer.from(unit.repeat(Math.ceil((BLOCK - HEADER) / unit.length)).slice(0, BLOCK - HEADER));
}

/** Parses one block; undefined for a block never written (no DMB1 magic). */
export function parseBlock(buf) {
  if (buf.subarray(0, 4).toString('latin1') !== 'DMB1') return undefined;
  const header = buf.subarray(0, HEADER).toString('latin1');
  const m = /^DMB1 seq=(\d+) slot=(\d+) sum=([0-9a-f]{32}) *\n$/.exec(header);
  if (!m) return { bad: `malformed header ${JSON.stringify(header.trimEnd())}` };
  const seq = Number(m[1]);
  const payload = buf.subarray(HEADER, BLOCK);
  const sum = createHash('md5').update(payload).digest('hex');
  if (sum !== m[3]) return { seq, slot: Number(m[2]), bad: `checksum ${sum} != header's ${m[3]}` };
  if (!payload.equals(payloadOf(seq)))
    return { seq, slot: Number(m[2]), bad: 'payload does not match its seq' };
  return { seq, slot: Number(m[2]) };
}

/** The highest seq acknowledged in these console texts (0 if none). */
export function lastAcked(texts, upto = Infinity) {
  let last = 0;
  for (const t of texts)
    for (const m of t.matchAll(/disk-wrote seq=(\d+)/g)) {
      const n = Number(m[1]);
      if (n > last && n <= upto) last = n;
    }
  return last;
}

/**
 * verify(image, lastSeq, slots): every seq in (lastSeq - slots, lastSeq] must be in slot
 * (seq - 1) % slots as that seq or a later one of the same slot, intact; no block may be corrupt.
 */
export function verify(image, lastSeq, slots = 64) {
  const problems = [];
  const blocks = [];
  for (let s = 0; s < slots; s++) {
    const buf = image.subarray(s * BLOCK, (s + 1) * BLOCK);
    const b = buf.length === BLOCK ? parseBlock(buf) : undefined;
    blocks.push(b);
    if (b?.bad) problems.push(`slot ${s}: ${b.bad}`);
    else if (b && b.slot !== s) problems.push(`slot ${s} holds a block for slot ${b.slot} (seq ${b.seq})`);
  }
  let verified = 0;
  const first = Math.max(1, lastSeq - slots + 1);
  for (let seq = first; seq <= lastSeq; seq++) {
    const s = (seq - 1) % slots;
    const b = blocks[s];
    if (!b) problems.push(`seq ${seq}: slot ${s} was never written`);
    else if (b.bad)
      continue; // reported above
    else if (b.seq < seq) problems.push(`seq ${seq}: slot ${s} holds the older seq ${b.seq}`);
    else if ((b.seq - seq) % slots !== 0)
      problems.push(`seq ${seq}: slot ${s} holds seq ${b.seq}, not of this slot`);
    else verified++;
  }
  const expected = lastSeq >= first ? lastSeq - first + 1 : 0;
  if (lastSeq === 0) problems.push('the console shows no acknowledged write');
  return { ok: problems.length === 0, lastSeq, expected, verified, problems: problems.slice(0, 20) };
}

function main(argv) {
  const consoles = [];
  let image;
  let slots = 64;
  let upto = Infinity;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--image') image = argv[++i];
    else if (a === '--console') consoles.push(argv[++i]);
    else if (a === '--slots') slots = Number(argv[++i]);
    else if (a === '--upto') upto = Number(argv[++i]);
    else throw new Error(`unknown argument ${a}`);
  }
  if (!image || consoles.length === 0 || !(slots > 0))
    throw new Error('usage: --image DISK --console LOG [--slots N]');
  const fd = fs.openSync(image, 'r');
  const buf = Buffer.alloc(slots * BLOCK);
  fs.readSync(fd, buf, 0, buf.length, 0);
  fs.closeSync(fd);
  const last = lastAcked(
    consoles.map((c) => fs.readFileSync(c, 'latin1')),
    upto,
  );
  const r = verify(buf, last, slots);
  console.log(JSON.stringify(r));
  return r.ok ? 0 : 1;
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (err) {
    console.log(JSON.stringify({ ok: false, problems: [String(err.message ?? err)] }));
    process.exitCode = 2;
  }
}
