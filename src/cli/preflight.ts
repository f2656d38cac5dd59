// Checks a CLI command makes before it asks the agent for anything: that an agent is running,
// and that the named domain exists and may be migrated. Shared by `step`, `check` and `migrate`.
import type { XenStore } from '../xenstore/types.js';
import { CliError, ExitCode } from './exit-codes.js';
import { agentPresence, checkMigratable, resolveDomain, type DomainRef } from './job-client.js';

/** Before asking anything of the agent: say so at once when none is running. */
export async function requireAgent(xs: XenStore): Promise<void> {
  const a = await agentPresence(xs);
  if (!a.alive) {
    throw new CliError(
      `no devmigrate agent is running (agent state: ${a.state ?? 'never started'}${a.pid ? `, pid ${a.pid}` : ''})`,
      ExitCode.UNAVAILABLE,
      ['start it: systemctl start xen-devmigrate (or: devmigrate agent)'],
    );
  }
}

/** The domain a new or continued migration is about, in the order the user should hear of problems. */
export async function resolveMigratable(xs: XenStore, spec: string): Promise<DomainRef> {
  const dom = await resolveDomain(xs, spec);
  checkMigratable(dom);
  await requireAgent(xs);
  return dom;
}
