// Boots Xen + dom0 in QEMU (TCG, as docs/e2e.md says), records the serial console line by line
// with the time each line arrived, and bounds the run: a whole-run timeout, an early stop a few
// seconds after a Xen or dom0 panic, and a short grace period after dom0's E2E-DONE.
import { spawn } from 'node:child_process';
import fs from 'node:fs';

export const PANIC_RE =
  /Panic on CPU|Kernel panic|\bBUG: |general protection fault|Oops: |FATAL PAGE FAULT|Reboot in five seconds/;

/**
 * Runs QEMU to completion. Returns { lines: [{t, text}], exit, reason } where t is seconds since
 * QEMU started and reason is 'exited' | 'timeout' | 'panic' | 'done-no-exit'.
 */
export function bootXen({ images, shareDir, resultsDir, serialLog, timeoutMs, onLine }) {
  const dom0Cmdline = 'console=hvc0 earlyprintk=xen rdinit=/init';
  const xenCmdline =
    'console=com1 com1=115200,8n1 dom0_mem=512M,max:512M dom0_max_vcpus=1 loglvl=all guest_loglvl=all noreboot';
  // Inside -initrd, a comma within one module's command line must be doubled.
  const initrd = `${images}/vmlinuz ${dom0Cmdline.replace(/,/g, ',,')},${images}/dom0.cpio.gz`;
  const args = [
    '-accel',
    'tcg,thread=multi',
    '-machine',
    'q35',
    '-cpu',
    'qemu64,+npt',
    '-m',
    '1536',
    '-smp',
    '2',
    '-no-reboot',
    '-monitor',
    'none',
    '-serial',
    'stdio',
    '-display',
    'none',
    '-vga',
    'none',
    '-nic',
    'none',
    '-virtfs',
    `local,path=${shareDir},mount_tag=hostshare,security_model=none,readonly=on,id=hs`,
    '-virtfs',
    `local,path=${resultsDir},mount_tag=results,security_model=none,id=rs`,
    '-kernel',
    `${images}/xen`,
    '-append',
    xenCmdline,
    '-initrd',
    initrd,
  ];
  for (const p of [shareDir, resultsDir, images]) {
    if (p.includes(',')) throw new Error(`QEMU option paths must not contain a comma: ${p}`);
  }
  const out = fs.createWriteStream(serialLog);
  const started = Date.now();
  const lines = [];
  return new Promise((resolve) => {
    const qemu = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let reason = 'exited';
    let partial = '';
    let stopTimer;
    const stop = (why, afterMs) => {
      if (stopTimer) return;
      stopTimer = setTimeout(() => {
        reason = why;
        qemu.kill('SIGKILL');
      }, afterMs);
    };
    const wholeRun = setTimeout(() => {
      reason = 'timeout';
      qemu.kill('SIGKILL');
    }, timeoutMs);
    const take = (chunk) => {
      partial += chunk.toString('latin1');
      let nl;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const text = partial.slice(0, nl).replace(/\r/g, '');
        partial = partial.slice(nl + 1);
        const t = (Date.now() - started) / 1000;
        lines.push({ t, text });
        out.write(`[${t.toFixed(1).padStart(6)}] ${text}\n`);
        onLine?.(t, text);
        if (PANIC_RE.test(text)) stop('panic', 5000);
        if (text.startsWith('E2E-DONE')) stop('done-no-exit', 30000);
      }
    };
    qemu.stdout.on('data', take);
    qemu.stderr.on('data', (c) => {
      const t = (Date.now() - started) / 1000;
      for (const text of c.toString().split('\n').filter(Boolean)) {
        lines.push({ t, text: `QEMU: ${text}` });
        out.write(`[${t.toFixed(1).padStart(6)}] QEMU: ${text}\n`);
      }
    });
    qemu.on('error', (err) => {
      lines.push({ t: 0, text: `QEMU: cannot start: ${err.message}` });
    });
    qemu.on('close', (code, signal) => {
      clearTimeout(wholeRun);
      if (stopTimer) clearTimeout(stopTimer);
      if (partial) lines.push({ t: (Date.now() - started) / 1000, text: partial });
      out.end();
      resolve({ lines, exit: code ?? signal, reason, seconds: (Date.now() - started) / 1000 });
    });
    // Make sure QEMU dies with us (Ctrl-C, a CI kill).
    const killQemu = () => qemu.kill('SIGKILL');
    process.once('exit', killQemu);
    for (const sig of ['SIGINT', 'SIGTERM']) {
      process.once(sig, () => {
        killQemu();
        process.exit(130);
      });
    }
  });
}
