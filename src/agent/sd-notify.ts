// Readiness reporting to systemd (Type=notify). Node has no AF_UNIX datagram sockets, so the
// message goes out through libsystemd's sd_pid_notify via koffi, or, where libsystemd is absent,
// through libc socket()+sendto(). Without NOTIFY_SOCKET every call is a no-op.
import koffi, { type LibraryHandle } from 'koffi';
import { UnixDatagramSocket, type DatagramError } from './unix-datagram.js';

export class SdNotifyError extends Error {
  override readonly name = 'SdNotifyError';
  constructor(
    message: string,
    readonly errno?: number,
  ) {
    super(message);
  }
}

type SendFn = (socketPath: string, message: string) => void;

/** Loaded senders by kind: koffi type names may be registered only once per process. */
const senders = new Map<string, { name: string; send: SendFn }>();

/** libsystemd reads NOTIFY_SOCKET from the C environment; we pass the path ourselves instead. */
function libsystemdSender(): SendFn | undefined {
  let lib: LibraryHandle;
  try {
    lib = koffi.load('libsystemd.so.0');
  } catch {
    return undefined;
  }
  // sd_pid_notify_with_fds would let us pass fds; plain sd_notify needs NOTIFY_SOCKET in environ,
  // which Node keeps in sync with process.env (setenv), so we set it just for the call.
  const sdNotify = lib.func('int sd_notify(int unset_environment, const char *state)');
  return (socketPath, message) => {
    const prev = process.env['NOTIFY_SOCKET'];
    process.env['NOTIFY_SOCKET'] = socketPath;
    try {
      const rc = sdNotify(0, message) as number;
      if (rc < 0) throw new SdNotifyError(`sd_notify failed: errno ${-rc}`, -rc);
    } finally {
      if (prev === undefined) delete process.env['NOTIFY_SOCKET'];
      else process.env['NOTIFY_SOCKET'] = prev;
    }
  };
}

function libcSender(): SendFn {
  return (socketPath, message) => {
    let sock: UnixDatagramSocket;
    try {
      sock = new UnixDatagramSocket();
    } catch (err) {
      throw new SdNotifyError((err as Error).message, (err as DatagramError).errno);
    }
    try {
      sock.send(socketPath, Buffer.from(message));
    } catch (err) {
      throw new SdNotifyError((err as Error).message, (err as DatagramError).errno);
    } finally {
      sock.close();
    }
  };
}

/** Which way messages go out: 'libsystemd' or 'libc'. Loaded once per kind, lazily. */
export function notifySender(prefer: 'libsystemd' | 'libc' = 'libsystemd'): { name: string; send: SendFn } {
  const known = senders.get(prefer);
  if (known) return known;
  const viaSystemd = prefer === 'libsystemd' ? libsystemdSender() : undefined;
  const chosen = viaSystemd
    ? { name: 'libsystemd', send: viaSystemd }
    : (senders.get('libc') ?? { name: 'libc', send: libcSender() });
  senders.set(prefer, chosen);
  senders.set(chosen.name, chosen);
  return chosen;
}

export interface Notifier {
  /** True when NOTIFY_SOCKET was set, i.e. systemd listens. */
  readonly enabled: boolean;
  ready(status?: string): void;
  stopping(status?: string): void;
  reloading(): void;
  status(text: string): void;
  watchdog(): void;
  /** Watchdog interval asked by systemd (WATCHDOG_USEC), ms; undefined when off or meant for another pid. */
  readonly watchdogMs: number | undefined;
}

export interface NotifierOptions {
  env?: NodeJS.ProcessEnv;
  prefer?: 'libsystemd' | 'libc';
  /** Called when a send fails: readiness must never crash the daemon. */
  onError?: (err: Error) => void;
}

export function createNotifier(opts: NotifierOptions = {}): Notifier {
  const env = opts.env ?? process.env;
  const socketPath = env['NOTIFY_SOCKET'];
  const wdUsec = Number(env['WATCHDOG_USEC']);
  const wdPid = env['WATCHDOG_PID'];
  const watchdogMs =
    Number.isFinite(wdUsec) && wdUsec > 0 && (wdPid === undefined || Number(wdPid) === process.pid)
      ? Math.floor(wdUsec / 1000)
      : undefined;
  const send = (msg: string): void => {
    if (!socketPath) return;
    try {
      notifySender(opts.prefer).send(socketPath, msg);
    } catch (err) {
      opts.onError?.(err instanceof Error ? err : new Error(String(err)));
    }
  };
  // STATUS must be one line; systemd shows it in `systemctl status`.
  const st = (s: string | undefined): string => (s === undefined ? '' : `\nSTATUS=${s.replace(/\n/g, ' ')}`);
  return {
    enabled: Boolean(socketPath),
    watchdogMs,
    ready: (s) => send(`READY=1\nMAINPID=${process.pid}${st(s)}`),
    stopping: (s) => send(`STOPPING=1${st(s)}`),
    reloading: () => send('RELOADING=1'),
    status: (s) => send(st(s).slice(1)),
    watchdog: () => send('WATCHDOG=1'),
  };
}
