// The recorded layout of the installed Xen release (xen-releases.ts) against gcc's reading of that
// release's own headers (libxen-dev: 4.17 on Debian 12, 4.20 on Debian 13): sizeof, every offset
// we record, the flag bits and XEN_DOMCTL_INTERFACE_VERSION. CI runs this on both releases.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { XEN_DOMINF } from '../../native-bindings/libxenctrl.js';
import { findRelease } from '../../native-bindings/xen-releases.js';
import { xenToolsVersion } from '../../xen-mocks/paths.js';

const execFileP = promisify(execFile);
const INSTALLED = xenToolsVersion();

const FIELDS = [
  'domain',
  'flags',
  'tot_pages',
  'max_pages',
  'outstanding_pages',
  'shr_pages',
  'paged_pages',
  'shared_info_frame',
  'cpu_time',
  'nr_online_vcpus',
  'max_vcpu_id',
  'ssidref',
  'handle',
  'cpupool',
  'gpaddr_bits',
  'arch_config',
];

/** Prints one "name value" line per fact, read by gcc from <xenctrl.h> (which has xc_domaininfo_t). */
const PROGRAM = `#include <stdio.h>
#include <stddef.h>
#include <xenctrl.h>
int main(void) {
  printf("iface %d\\n", XEN_DOMCTL_INTERFACE_VERSION);
  printf("size %zu\\n", sizeof(xc_domaininfo_t));
${FIELDS.map((f) => `  printf("${f} %zu\\n", offsetof(xc_domaininfo_t, ${f}));`).join('\n')}
  printf("dying %d\\nhvm %d\\nshutdown %d\\npaused %d\\nrunning %d\\nhap %d\\nshift %d\\nmask %d\\n",
         XEN_DOMINF_dying, XEN_DOMINF_hvm_guest, XEN_DOMINF_shutdown, XEN_DOMINF_paused,
         XEN_DOMINF_running, XEN_DOMINF_hap, XEN_DOMINF_shutdownshift, XEN_DOMINF_shutdownmask);
  return 0;
}
`;

describe(`xc_domaininfo_t of the installed Xen ${INSTALLED} headers (gcc)`, () => {
  const dir = mkdtempSync(join(tmpdir(), 'xen-layout-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('matches the recorded layout, flags and domctl interface version', async () => {
    const release = findRelease(4, Number(INSTALLED.split('.')[1]));
    expect(release, `Xen ${INSTALLED} installed here is not in xen-releases.ts`).toBeDefined();
    writeFileSync(join(dir, 'layout.c'), PROGRAM);
    await execFileP('gcc', ['-o', join(dir, 'layout'), join(dir, 'layout.c')], { timeout: 60_000 });
    const { stdout } = await execFileP(join(dir, 'layout'), [], { timeout: 10_000 });
    const facts = Object.fromEntries(
      stdout
        .trim()
        .split('\n')
        .map((l) => l.split(' '))
        .map(([k, v]) => [k, Number(v)]),
    );
    expect(facts['iface']).toBe(release?.domctlInterfaceVersion);
    expect(facts['size']).toBe(release?.domainInfo.size);
    for (const f of FIELDS) {
      expect(facts[f], f).toBe(release?.domainInfo.offsets[f as keyof typeof release.domainInfo.offsets]);
    }
    expect(facts).toMatchObject({
      dying: XEN_DOMINF.dying,
      hvm: XEN_DOMINF.hvmGuest,
      shutdown: XEN_DOMINF.shutdown,
      paused: XEN_DOMINF.paused,
      running: XEN_DOMINF.running,
      hap: XEN_DOMINF.hap,
      shift: XEN_DOMINF.shutdownShift,
      mask: XEN_DOMINF.shutdownMask,
    });
  });
});
