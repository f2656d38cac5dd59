// The files a simulated host keeps in its folder (`sim up --dir D`): shared by `sim up`,
// `sim down` and the supervisor (`sim serve`) so the three agree on names.

export const SIM_FILES = {
  /** The supervisor's pid (its process group holds xenstored and the guests). */
  pid: 'sim.pid',
  /** The environment for tools, as JSON (name -> value). */
  env: 'sim-env.json',
  /** Written last: the host is laid out and every guest runs. */
  ready: 'sim.ready',
  /** The supervisor's output. */
  log: 'sim.log',
  /** xenstored's own folder (socket, state). */
  xenstored: 'xenstored',
  /** With `sim up --agent`: the agent's pid and its log. */
  agentPid: 'agent.pid',
  agentLog: 'agent.log',
  /** The guests of the host, as JSON (domid, name, device kinds). */
  guests: 'sim-guests.json',
} as const;

export type SimEnv = Record<string, string>;
