#!/usr/bin/env node
// A stand-in for ssh to a destination that is this machine, for tests, the disk benchmark and
// the e2e: what the product runs through its remote shell happens exactly as ssh would make it
// happen, minus the network. `fake-ssh [-o opt] [-L local.sock:remote.sock] [-N] host [words...]`:
// the words are joined with spaces and run by /bin/sh -c in a new session (as sshd does); -L
// listens on local.sock and forwards each connection to remote.sock. Like ssh without a tty, it
// does NOT kill the remote command when it is itself killed. Exit status: the command's, 255 on
// its own failure.
import { spawn } from 'node:child_process';
import { createConnection, createServer } from 'node:net';
import { rmSync } from 'node:fs';

const argv = process.argv.slice(2);
const forwards = [];
const options = new Set();
let noCommand = false;
let i = 0;
for (; i < argv.length; i += 1) {
  const a = argv[i];
  if (a === '--') {
    i += 1;
    break;
  }
  if (!a.startsWith('-')) break;
  if (a === '-o') options.add(argv[++i]);
  else if (a === '-L') forwards.push(argv[++i]);
  else if (a === '-N') noCommand = true;
  else if (['-p', '-i', '-l', '-F', '-S', '-E'].includes(a)) i += 1;
  // Other flags (-q, -T, -t, -4, -6, ...) change nothing here.
}
const host = argv[i];
const words = argv.slice(i + 1);
if (host === undefined) {
  process.stderr.write('fake-ssh: no host\n');
  process.exit(255);
}

const servers = [];
function forward(spec) {
  const sep = spec.lastIndexOf(':');
  const [local, remote] = [spec.slice(0, sep), spec.slice(sep + 1)];
  if (!local.startsWith('/') || !remote.startsWith('/')) throw new Error(`unsupported forward ${spec}`);
  if (options.has('StreamLocalBindUnlink=yes')) rmSync(local, { force: true });
  const server = createServer((client) => {
    const upstream = createConnection({ path: remote });
    // As ssh: a failed open closes the client's connection (it reads EOF).
    upstream.on('error', (err) => {
      process.stderr.write(`channel: open failed: connect failed: ${err.message}\n`);
      client.destroy();
    });
    client.on('error', () => upstream.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  servers.push(server);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(local, resolve);
  });
}

function closeForwards() {
  for (const s of servers) s.close();
}

try {
  for (const f of forwards) await forward(f);
} catch (err) {
  process.stderr.write(`fake-ssh: forward failed: ${err.message}\n`);
  process.exit(255);
}

for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(sig, () => {
    closeForwards();
    process.exit(255);
  });
}

if (noCommand || words.length === 0) {
  // Holds the forwards until killed.
  setInterval(() => undefined, 1 << 30);
} else {
  const child = spawn('/bin/sh', ['-c', words.join(' ')], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  // stdin is the channel's (rsync speaks its protocol over it).
  process.stdin.pipe(child.stdin);
  child.stdin.on('error', () => undefined);
  child.stdout.pipe(process.stdout);
  child.stderr.pipe(process.stderr);
  child.on('error', (err) => {
    process.stderr.write(`fake-ssh: ${err.message}\n`);
    process.exit(255);
  });
  child.on('close', (code, signal) => {
    closeForwards();
    process.exitCode = code ?? (signal !== null ? 128 + 15 : 255);
  });
}
