// Entry point of `npm run test:deploy`: two Xen 4.20 hosts (Debian 13 dom0s booted by systemd)
// in QEMU on one private link, the project's .deb installed on both with dpkg, and the migration
// scenarios of docs/deploy-e2e.md run by host a (over ssh on host b). The verdict comes from the
// serial console markers; the last stdout line is the JSON summary (checks, downtimes, blocks).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildRootfs } from './lib/rootfs.js';
import { bootHost, freeUdpPorts, PANIC_RE } from './lib/hosts.js';
import { parseMarkers, judge, excerpts, summary } from './lib/report.js';
import { profileReport } from './lib/profile.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../..');
const CACHE = path.join(HERE, 'cache');
const SCENARIOS = ['install', 'a', 'b', 'c', 'd', 'e', 'remove'];
/** What a run without --scenarios/--full does (CI's `npm run test:deploy`), and why. */
const DEFAULT_SCENARIOS = ['install', 'a', 'b', 'd'];
const DEFAULT_WHY =
  'c (systemctl stop mid-job), e (upgrade) and remove are left out by default: on this 2-core ' +
  'machine (2026-11-29 night) boot took 52-109 s, install 67-101 s, a (guest created, devmigrate ' +
  'a->b, plain xl back) 246-414 s, b 50-165 s, c 81-234 s, d 94-170 s, e 80 s, remove 70 s emulated: ' +
  'install,a,b,d take about 13 minutes, all seven 16, and with a cold image (about 3 more) that is ' +
  'too near the 20 CI has for the whole deployment run (docs/deploy-e2e.md, Figures); --full runs every scenario';
/** Bound on the QEMU run: the default set takes about 13 minutes; a cold image adds about 3. */
const DEFAULT_TIMEOUT_S = 1080;

function usage() {
  return `usage: node test/deploy/run.js [--full | --scenarios=install,a,b,...] [--timeout=seconds] [--verbose]
  --scenarios  which scenarios host a runs, in order (default: ${DEFAULT_SCENARIOS.join(',')}; also $DEPLOY_SCENARIOS)
  --full       all of them: ${SCENARIOS.join(',')} (also DEPLOY_FULL=1); give it --timeout=1800 or more
  --timeout    bound on the QEMU run (default ${DEFAULT_TIMEOUT_S} s: the default set with a cold image stays under 20 minutes)
  --smp        physical CPUs of each emulated Xen (default 2: dom0 on pCPU 0, the guest on pCPU 1; 1: both on one)
  --dom0-vcpus vCPUs of each dom0, pinned one per pCPU (default 1; 2 shares pCPU 1 with the guest: slower boots)
  --profile    CPU per command on both hosts during each downtime of a (process accounting; lib/profile.js)
  --verbose    echo both serial consoles live (also DEPLOY_VERBOSE=1)`;
}

function parseArgs(argv) {
  const fromEnv = process.env.DEPLOY_FULL === '1' ? SCENARIOS.join(',') : process.env.DEPLOY_SCENARIOS;
  const opts = {
    scenarios: (fromEnv ?? DEFAULT_SCENARIOS.join(',')).split(/[ ,]+/).filter(Boolean),
    chosen: fromEnv !== undefined,
    timeout: DEFAULT_TIMEOUT_S,
    smp: 2,
    dom0Vcpus: 1,
    profile: process.env.DEPLOY_PROFILE === '1',
    verbose: process.env.DEPLOY_VERBOSE === '1',
  };
  for (const a of argv) {
    if (a.startsWith('--scenarios=')) {
      opts.scenarios = a.slice(12).split(',').filter(Boolean);
      opts.chosen = true;
    } else if (a === '--full') {
      opts.scenarios = [...SCENARIOS];
      opts.chosen = true;
    } else if (a.startsWith('--timeout=')) opts.timeout = Number(a.slice(10));
    else if (a.startsWith('--smp=')) opts.smp = Number(a.slice(6));
    else if (a.startsWith('--dom0-vcpus=')) opts.dom0Vcpus = Number(a.slice(13));
    else if (a === '--profile') opts.profile = true;
    else if (a === '--verbose' || a === '-v') opts.verbose = true;
    else {
      console.error(usage());
      process.exit(a === '--help' || a === '-h' ? 0 : 2);
    }
  }
  for (const s of opts.scenarios) if (!SCENARIOS.includes(s)) throw new Error(`unknown scenario ${s}`);
  if (!(opts.timeout > 0)) throw new Error('--timeout must be a positive number');
  if (![1, 2].includes(opts.smp)) throw new Error('--smp must be 1 or 2');
  if (!(opts.dom0Vcpus >= 1 && opts.dom0Vcpus <= opts.smp))
    throw new Error('--dom0-vcpus must be between 1 and --smp');
  return opts;
}

function need(cmd, pkg) {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
  } catch {
    throw new Error(`${cmd} not found: install the Debian package ${pkg} (scripts/setup.sh does)`);
  }
}

const log = (msg) => console.log(`deploy: ${msg}`);
const START = Date.now();

/** Runs scripts/package.js; returns the .deb path (its last output line). */
function buildDeb(outDir, version) {
  const out = execFileSync(
    'node',
    [path.join(REPO, 'scripts/package.js'), '--out', outDir, '--version', version],
    {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  return out.trim().split('\n').pop();
}

/** Fresh keys for this run: root's key (both hosts) and one host key per host. */
function makeKeys(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const gen = (file) =>
    execFileSync('ssh-keygen', [
      '-q',
      '-t',
      'ed25519',
      '-N',
      '',
      '-C',
      'deploy-e2e',
      '-f',
      path.join(dir, file),
    ]);
  gen('id_ed25519');
  gen('host_a');
  gen('host_b');
  const pub = (f) =>
    fs
      .readFileSync(path.join(dir, `${f}.pub`), 'utf8')
      .trim()
      .split(' ')
      .slice(0, 2)
      .join(' ');
  fs.writeFileSync(
    path.join(dir, 'known_hosts'),
    `host-a,192.0.2.1 ${pub('host_a')}\nhost-b,192.0.2.2 ${pub('host_b')}\n`,
  );
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  for (const [cmd, pkg] of [
    ['qemu-system-x86_64', 'qemu-system-x86'],
    ['debootstrap', 'debootstrap'],
    ['mke2fs', 'e2fsprogs'],
    ['dpkg-deb', 'dpkg'],
    ['ssh-keygen', 'openssh-client'],
    ['unshare', 'util-linux'],
    ['xz', 'xz-utils'],
    ['cpio', 'cpio'],
    ['objdump', 'binutils'],
  ])
    need(cmd, pkg);
  if (process.getuid?.() !== 0) throw new Error('run as root (debootstrap and chroot build the dom0 image)');
  log(
    opts.chosen
      ? `scenarios: ${opts.scenarios.join(',')} (as asked)`
      : `scenarios: ${opts.scenarios.join(',')} (the default set: ${DEFAULT_WHY})`,
  );
  const timings = [];
  const timed = async (name, fn) => {
    const t0 = Date.now();
    const r = await fn();
    timings.push([name, (Date.now() - t0) / 1000]);
    return r;
  };

  const image = await timed('dom0 image (cached by versions)', () => buildRootfs(CACHE, log));

  const resultsRoot = path.join(CACHE, 'results');
  fs.mkdirSync(resultsRoot, { recursive: true });
  const old = fs.readdirSync(resultsRoot).sort();
  for (const d of old.slice(0, Math.max(0, old.length - 4)))
    fs.rmSync(path.join(resultsRoot, d), { recursive: true, force: true });
  const runDir = fs.mkdtempSync(path.join(resultsRoot, `${new Date().toISOString().replace(/[:.]/g, '-')}-`));
  fs.chmodSync(runDir, 0o755);
  for (const h of ['a', 'b']) fs.mkdirSync(path.join(runDir, h));

  const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8'));
  const debs = await timed('packages (npm run package x2)', () => ({
    first: buildDeb(runDir, `${pkg.version}+deploy1`),
    newer: buildDeb(runDir, `${pkg.version}+deploy2`),
  }));
  makeKeys(path.join(runDir, 'keys'));
  // --profile: the dom0 image has no acct package; a static helper switches accounting on.
  if (opts.profile)
    execFileSync('gcc', [
      '-static',
      '-O2',
      '-o',
      path.join(runDir, 'acctctl'),
      path.join(HERE, 'tools/acctctl.c'),
    ]);
  const fromDom0 = (p) => path.posix.join('/mnt/host', path.relative(REPO, p));

  const show = (name) => (t, text) => {
    if (opts.verbose) console.log(`${name} [${t.toFixed(1).padStart(6)}] ${text}`);
    else if (/DEPLOY-(READY|RESULT|BEGIN|END|DONE|FAIL|METRIC)/.test(text))
      console.log(`  ${name} ${t.toFixed(1).padStart(6)}s ${text.slice(text.indexOf('DEPLOY-'))}`);
  };
  const common = {
    image: image.dir,
    repo: REPO,
    runDir,
    smp: opts.smp,
    dom0Vcpus: opts.dom0Vcpus,
    timeoutMs: opts.timeout * 1000,
  };
  // Written before each boot: the deadline counts from it.
  const writeEnv = () =>
    fs.writeFileSync(
      path.join(runDir, 'env.sh'),
      [
        `DEPLOY_IMAGE='${fromDom0(image.dir)}'`,
        `DEPLOY_DEB='/mnt/run/${path.basename(debs.first)}'`,
        `DEPLOY_DEB_NEWER='/mnt/run/${path.basename(debs.newer)}'`,
        `DEPLOY_VERSION='${pkg.version}+deploy1'`,
        `DEPLOY_VERSION_NEWER='${pkg.version}+deploy2'`,
        `DEPLOY_SCENARIOS='${opts.scenarios.join(' ')}'`,
        // The guests' pCPU (dom0 is pinned to pCPU 0; see lib/hosts.js).
        `DEPLOY_GUEST_CPUS='${opts.smp > 1 ? '1' : '0'}'`,
        `DEPLOY_PROFILE=${opts.profile ? 1 : 0}`,
        // Host a collects both hosts' journals by then even if a scenario hangs (wall clock: the
        // dom0s' clocks come from QEMU's RTC, i.e. this machine's).
        `DEPLOY_DEADLINE=${Math.floor(Date.now() / 1000 + opts.timeout - 75)}`,
        'export DEPLOY_IMAGE DEPLOY_DEB DEPLOY_DEB_NEWER DEPLOY_VERSION DEPLOY_VERSION_NEWER DEPLOY_SCENARIOS DEPLOY_GUEST_CPUS DEPLOY_PROFILE DEPLOY_DEADLINE',
        '',
      ].join('\n'),
    );
  /** Both hosts, from boot to host a's DEPLOY-DONE (or a bound); a host that panics stops both. */
  const runHosts = async () => {
    writeEnv();
    const [portA, portB] = await freeUdpPorts(2);
    log(
      `booting host-a and host-b (timeout ${opts.timeout} s); logs in ${path.relative(process.cwd(), runDir)}`,
    );
    const hostA = bootHost({
      ...common,
      name: 'a',
      mac: '52:54:00:de:00:0a',
      localPort: portA,
      remotePort: portB,
      serialLog: path.join(runDir, 'a/serial.log'),
      onLine: (t, text) => {
        show('a')(t, text);
        // Host a powers both off at the end; give them 60 s before pulling the plug.
        if (text.includes('DEPLOY-DONE'))
          setTimeout(() => (hostA.stop('done'), hostB.stop('done')), 60_000).unref();
      },
    });
    const hostB = bootHost({
      ...common,
      name: 'b',
      mac: '52:54:00:de:00:0b',
      localPort: portB,
      remotePort: portA,
      serialLog: path.join(runDir, 'b/serial.log'),
      onLine: show('b'),
    });
    // The scenarios need both: the other one's waits would only run into the whole bound.
    hostA.then((r) => r.reason === 'panic' && hostB.stop('peer-panic'));
    hostB.then((r) => r.reason === 'panic' && hostA.stop('peer-panic'));
    return Promise.all([hostA, hostB]);
  };
  const qemuStart = Date.now();
  let [a, b] = await runHosts();
  const panicked = [a, b].find((h) => h.reason === 'panic');
  if (panicked !== undefined) {
    // A dom0 kernel oops under TCG (seen once, 2026-11-29: clear_page_rep in xl while it built the
    // guest, on the otherwise passing set): the emulator's, not anything of ours, which runs in
    // userspace. One more run, said plainly, with the first one's logs kept; a second one fails.
    const oops = panicked.lines.find((l) => PANIC_RE.test(l.text))?.text ?? '';
    log(
      `host ${panicked.name}: dom0's kernel crashed (${oops.trim()}; ${path.relative(process.cwd(), runDir)}/${panicked.name}.crashed-1/serial.log): running both hosts once more`,
    );
    for (const h of ['a', 'b']) {
      fs.renameSync(path.join(runDir, h), path.join(runDir, `${h}.crashed-1`));
      fs.mkdirSync(path.join(runDir, h));
    }
    [a, b] = await runHosts();
  }
  timings.push(['QEMU run (both hosts)', (Date.now() - qemuStart) / 1000]);

  const parsed = parseMarkers(a.lines, b.lines);
  const problems = judge(parsed, a, b, opts.scenarios);
  console.log('');
  console.log('host stages:');
  for (const [name, s] of timings) console.log(`  ${name.padEnd(34)} ${s.toFixed(1)}s`);
  console.log('');
  for (const l of summary(parsed)) console.log(l);
  if (opts.profile) {
    console.log('');
    for (const l of profileReport(runDir)) console.log(l);
  }
  const total = ((Date.now() - START) / 1000).toFixed(0);
  if (problems.length === 0) log(`PASS (${total} s in all); logs in ${path.relative(process.cwd(), runDir)}`);
  else {
    console.log('\ndeploy: FAILED:');
    for (const p of problems) console.log(`  - ${p}`);
    console.log('');
    console.log(excerpts(parsed, a.lines, b.lines, runDir));
    log(`serial logs, journals and guest consoles under ${runDir}`);
  }
  const m = parsed.metrics;
  const num = (v) => (v === undefined || v === '' || Number.isNaN(Number(v)) ? null : Number(v));
  console.log(
    JSON.stringify({
      checks_passed: parsed.results.filter((r) => r.verdict === 'PASS').length,
      checks_failed:
        parsed.results.filter((r) => r.verdict !== 'PASS').length +
        (problems.length > 0 && parsed.results.every((r) => r.verdict === 'PASS') ? 1 : 0),
      downtime_ms: num(m.downtime_ms),
      xl_downtime_ms: num(m.xl_downtime_ms),
      disk_blocks_verified: num(m.disk_blocks_verified) ?? 0,
    }),
  );
  return problems.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`deploy: ERROR: ${err.stack ?? err}`);
    console.log(
      JSON.stringify({
        checks_passed: 0,
        checks_failed: 1,
        downtime_ms: null,
        xl_downtime_ms: null,
        disk_blocks_verified: 0,
      }),
    );
    process.exit(1);
  },
);
