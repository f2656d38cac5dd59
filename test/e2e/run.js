// Entry point of `npm run test:e2e`: fetches the Debian Xen host (cached), builds the boot
// images (cached), boots Xen 4.17 + dom0 in QEMU with the repository shared over 9p, lets dom0
// run test/e2e/dom0/run-checks.sh, then reads the verdict from the serial console markers.
// Exit status 0 only when every planned check passed or skipped with a reason. See docs/e2e.md.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fetchPackages } from './lib/packages.js';
import { buildImages } from './lib/initramfs.js';
import { bootXen } from './lib/qemu.js';
import { parseSerial, judge, table, excerpts, resultTails } from './lib/report.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../..');
const CACHE = path.join(HERE, 'cache');

function usage() {
  return `usage: node test/e2e/run.js [--only=check,check] [--timeout=seconds] [--verbose]
  --only     run only these dom0 checks (names from test/e2e/dom0/run-checks.sh)
  --timeout  bound on the whole QEMU run (default 720 s = 12 min)
  --verbose  echo the serial console while it runs (also E2E_VERBOSE=1)
  --strict   a missing dist/ build fails the xenstore checks instead of skipping them (on when CI=true)`;
}

function parseArgs(argv) {
  const opts = {
    only: process.env.E2E_ONLY ?? '',
    timeout: 720,
    verbose: process.env.E2E_VERBOSE === '1',
    // In CI a check of the compiled project must not skip because dist/ was not built.
    strict: process.env.CI === 'true',
  };
  for (const a of argv) {
    if (a.startsWith('--only=')) opts.only = a.slice(7).split(',').join(' ');
    else if (a.startsWith('--timeout=')) opts.timeout = Number(a.slice(10));
    else if (a === '--verbose' || a === '-v') opts.verbose = true;
    else if (a === '--strict') opts.strict = true;
    else {
      console.error(usage());
      process.exit(a === '--help' || a === '-h' ? 0 : 2);
    }
  }
  if (!Number.isFinite(opts.timeout) || opts.timeout <= 0)
    throw new Error('--timeout must be a positive number');
  return opts;
}

function need(cmd, pkg) {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
  } catch {
    throw new Error(`${cmd} not found: install the Debian package ${pkg}`);
  }
}

const log = (msg) => console.log(`e2e: ${msg}`);

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  for (const [cmd, pkg] of [
    ['qemu-system-x86_64', 'qemu-system-x86'],
    ['cpio', 'cpio'],
    ['apt-get', 'apt'],
    ['dpkg', 'dpkg'],
    ['ldd', 'libc-bin'],
    ['gzip', 'gzip'],
  ]) {
    need(cmd, pkg);
  }
  const timings = [];
  const timed = async (name, fn) => {
    const t0 = Date.now();
    const r = await fn();
    timings.push([name, (Date.now() - t0) / 1000]);
    return r;
  };

  const pkgs = await timed('download + unpack packages', () => fetchPackages(CACHE, log));
  const nodeBinary = fs.realpathSync(process.execPath);
  const images = await timed('build images', () => buildImages(CACHE, pkgs, nodeBinary, log));

  if (!fs.existsSync(path.join(REPO, 'dist/src'))) {
    log(
      `WARNING: dist/src is missing: checks of the compiled project will ${opts.strict ? 'FAIL' : 'skip'} (run \`npm run build\` first)`,
    );
  }
  const resultsRoot = path.join(CACHE, 'results');
  fs.mkdirSync(resultsRoot, { recursive: true });
  // Keep the last few runs' logs only.
  const old = fs.readdirSync(resultsRoot).sort();
  for (const d of old.slice(0, Math.max(0, old.length - 5)))
    fs.rmSync(path.join(resultsRoot, d), { recursive: true, force: true });
  const resultsDir = fs.mkdtempSync(
    path.join(resultsRoot, `${new Date().toISOString().replace(/[:.]/g, '-')}-`),
  );
  const fromDom0 = (p) => path.posix.join('/mnt/host', path.relative(REPO, p));
  fs.writeFileSync(
    path.join(resultsDir, 'env.sh'),
    [
      `E2E_IMAGES='${fromDom0(images.dir)}'`,
      `E2E_NODE='${fromDom0(path.join(images.dir, 'node'))}'`,
      `E2E_ONLY='${opts.only.replace(/[^A-Za-z0-9_ -]/g, '')}'`,
      `E2E_STRICT='${opts.strict ? 1 : 0}'`,
      // The agent check's scenarios (dom0/agent-check.sh; default "a b c"), from the host's env.
      `E2E_AGENT_SCENARIOS='${(process.env.E2E_AGENT_SCENARIOS ?? '').replace(/[^a-z ]/g, '')}'`,
      'export E2E_IMAGES E2E_NODE E2E_ONLY E2E_STRICT E2E_AGENT_SCENARIOS',
      '',
    ].join('\n'),
  );
  const serialLog = path.join(resultsDir, 'serial.log');
  log(
    `booting Xen in QEMU (timeout ${opts.timeout} s); serial log: ${path.relative(process.cwd(), serialLog)}`,
  );

  const qemu = await timed('QEMU run (boot + checks)', () =>
    bootXen({
      images: images.dir,
      shareDir: REPO,
      resultsDir,
      serialLog,
      timeoutMs: opts.timeout * 1000,
      onLine: (t, text) => {
        if (opts.verbose) console.log(`[${t.toFixed(1).padStart(6)}] ${text}`);
        else if (/^E2E-(STAGE|RESULT|DONE)/.test(text)) console.log(`  ${t.toFixed(1).padStart(6)}s ${text}`);
      },
    }),
  );

  const parsed = parseSerial(qemu.lines);
  const problems = judge(parsed, qemu);
  console.log('');
  console.log('host stages:');
  for (const [name, s] of timings) console.log(`  ${name.padEnd(28)} ${s.toFixed(1)}s`);
  const firstCheck = [...parsed.checks.values()][0];
  if (firstCheck) console.log(`  ${'QEMU start -> first check'.padEnd(28)} ${firstCheck.begin.toFixed(1)}s`);
  console.log('');
  console.log(table(parsed));
  console.log('');
  if (problems.length === 0) {
    log(
      `PASS (${((Date.now() - START) / 1000).toFixed(0)} s in all); logs in ${path.relative(process.cwd(), resultsDir)}`,
    );
    return 0;
  }
  console.log('e2e: FAILED:');
  for (const p of problems) console.log(`  - ${p}`);
  console.log('');
  console.log(excerpts(qemu.lines, parsed));
  const tails = resultTails(resultsDir, parsed);
  if (tails) console.log(`\n${tails}`);
  console.log('');
  log(`full serial log: ${serialLog}; dom0 dmesg and guest consoles under ${resultsDir}`);
  return 1;
}

const START = Date.now();
main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`e2e: ERROR: ${err.stack ?? err}`);
    process.exit(1);
  },
);
