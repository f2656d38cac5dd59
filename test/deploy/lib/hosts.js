// Boots one Xen host of the deployment e2e in QEMU (TCG): Xen 4.20 + a systemd dom0 on a
// copy-on-write view of the cached root image, a virtio NIC on a point-to-point UDP link over
// 127.0.0.1 shared with the other host only, the repository and the run folder over 9p. Records
// its serial console line by line with arrival times; every QEMU it starts is killed on exit.
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';

export const PANIC_RE =
  /Panic on CPU|Kernel panic|\bBUG: |general protection fault|Oops: |FATAL PAGE FAULT|Reboot in five seconds/;

const running = new Set();
const killAll = () => {
  for (const q of running) q.kill('SIGKILL');
};
process.once('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM'])
  process.once(sig, () => {
    killAll();
    process.exit(130);
  });

/** Two UDP ports on 127.0.0.1 free right now (bound, then released for QEMU). */
export async function freeUdpPorts(n) {
  const socks = [];
  const ports = [];
  for (let i = 0; i < n; i++) {
    const s = dgram.createSocket('udp4');
    await new Promise((resolve, reject) => {
      s.once('error', reject);
      s.bind(0, '127.0.0.1', resolve);
    });
    socks.push(s);
    ports.push(s.address().port);
  }
  for (const s of socks) s.close();
  return ports;
}

/**
 * bootHost({ name, image, repo, runDir, mac, localPort, remotePort, serialLog, timeoutMs, onLine })
 * resolves { name, lines: [{t, text}], exit, reason, seconds } when QEMU exits; reason is
 * 'exited' | 'timeout' | 'panic' | 'stopped'. The returned promise has .stop() to kill it early.
 */
export function bootHost(o) {
  for (const p of [o.image, o.repo, o.runDir])
    if (p.includes(',')) throw new Error(`QEMU option paths must not contain a comma: ${p}`);
  // No speculative-execution mitigations in Xen nor the dom0 kernel: this is an emulated test
  // machine running only our code, and each mitigation's barrier is emulated too.
  const dom0 = `root=/dev/vda rw console=hvc0 quiet loglevel=4 systemd.show_status=error mitigations=off deploy.host=${o.name}`;
  // Two physical CPUs per Xen by default but ONE dom0 vCPU, pinned to pCPU 0: the guests are
  // pinned to pCPU 1 (scenarios.sh), so a guest that computes all the time (the disk writer)
  // no longer takes half of dom0's only CPU away from xl, ssh and the agent (with one pCPU a
  // migration ran over 10 minutes). A dom0 with 2 vCPUs is what stays out: a descheduled vCPU
  // stalls the other's IPIs and spinlocks (docs/deploy-e2e.md, Figures). An idle pCPU costs
  // nothing here: its QEMU thread sleeps in hlt.
  const smp = o.smp ?? 2;
  const xen = `console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=${o.dom0Vcpus ?? 1} dom0_vcpus_pin loglvl=warning guest_loglvl=warning spec-ctrl=no noreboot`;
  const args = [
    '-accel',
    'tcg,thread=multi',
    '-machine',
    'q35',
    '-cpu',
    'qemu64,+npt',
    '-m',
    '1792',
    '-smp',
    String(smp),
    '-no-reboot',
    '-monitor',
    'none',
    '-serial',
    'stdio',
    '-display',
    'none',
    '-vga',
    'none',
    '-nodefaults',
    '-drive',
    `file=${o.image}/base.img,if=virtio,format=raw,snapshot=on`,
    // The hosts' only network: a UDP tunnel between the two QEMUs on the loopback.
    '-netdev',
    `dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=${o.localPort},remote.type=inet,remote.host=127.0.0.1,remote.port=${o.remotePort}`,
    '-device',
    `virtio-net-pci,netdev=n0,mac=${o.mac}`,
    '-virtfs',
    `local,path=${o.repo},mount_tag=hostshare,security_model=none,readonly=on,id=hs`,
    '-virtfs',
    `local,path=${o.runDir},mount_tag=run,security_model=none,id=rs`,
    '-kernel',
    `${o.image}/xen`,
    '-append',
    xen,
    '-initrd',
    // Inside -initrd a comma of a module's command line is doubled.
    `${o.image}/vmlinuz ${dom0.replace(/,/g, ',,')},${o.image}/initrd.img`,
  ];
  const out = fs.createWriteStream(o.serialLog);
  const started = Date.now();
  const lines = [];
  let qemu;
  let reason = 'exited';
  const p = new Promise((resolve) => {
    qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(qemu);
    // The QEMU's CPU use, once a second (wall clock ms, % of one core): where a migration's
    // downtime goes on this machine, read against the dom0s' timelines (their clocks are this
    // machine's, through QEMU's RTC).
    const cpuLog = fs.createWriteStream(o.serialLog.replace(/serial\.log$/, 'qemu-cpu.log'));
    let lastTicks;
    const cpuTimer = setInterval(() => {
      try {
        const f = fs.readFileSync(`/proc/${qemu.pid}/stat`, 'utf8').split(') ')[1].split(' ');
        const ticks = Number(f[11]) + Number(f[12]); // utime + stime, in 1/100 s
        if (lastTicks !== undefined) cpuLog.write(`${Date.now()} ${ticks - lastTicks}\n`);
        lastTicks = ticks;
      } catch {
        // QEMU is gone; 'close' below stops this.
      }
    }, 1000);
    let partial = '';
    let panicTimer;
    const whole = setTimeout(() => {
      reason = 'timeout';
      qemu.kill('SIGKILL');
    }, o.timeoutMs);
    const push = (text) => {
      const t = (Date.now() - started) / 1000;
      lines.push({ t, text });
      out.write(`[${t.toFixed(1).padStart(6)}] ${text}\n`);
      o.onLine?.(t, text);
      if (PANIC_RE.test(text) && !panicTimer)
        panicTimer = setTimeout(() => {
          reason = 'panic';
          qemu.kill('SIGKILL');
        }, 5000);
    };
    qemu.stdout.on('data', (chunk) => {
      partial += chunk.toString('latin1');
      let nl;
      while ((nl = partial.indexOf('\n')) >= 0) {
        // Strip terminal control sequences systemd and the kernel may send to the console.
        push(
          partial
            .slice(0, nl)
            .replace(/\r/g, '')
            .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, ''),
        );
        partial = partial.slice(nl + 1);
      }
    });
    qemu.stderr.on('data', (c) => {
      for (const text of c.toString().split('\n').filter(Boolean))
        if (!/module ui-ui-(gtk|sdl) not found/.test(text)) push(`QEMU: ${text}`);
    });
    qemu.on('error', (err) => push(`QEMU: cannot start: ${err.message}`));
    qemu.on('close', (code, signal) => {
      clearInterval(cpuTimer);
      cpuLog.end();
      clearTimeout(whole);
      clearTimeout(panicTimer);
      running.delete(qemu);
      if (partial) push(partial);
      out.end();
      resolve({ name: o.name, lines, exit: code ?? signal, reason, seconds: (Date.now() - started) / 1000 });
    });
  });
  p.stop = (why = 'stopped') => {
    reason = why;
    qemu?.kill('SIGKILL');
  };
  return p;
}
