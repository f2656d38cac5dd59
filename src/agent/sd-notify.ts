// Readiness reporting to systemd (Type=notify). Node has no AF_UNIX datagram sockets, so the
// message goes out through libsystemd's sd_pid_notify via koffi, or, where libsystemd is absent,
// through libc socket()+sendto(). Without NOTIFY_SOCKET every call is a no-op.
import koffi, { type LibraryHandle } from 'koffi';

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

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

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
  const libc = koffi.load('libc.so.6');
  // Registered by name: the sendto prototype below refers to it as devmigrate_sockaddr_un.
  const _sockaddrUn = koffi.struct('devmigrate_sockaddr_un', {
    sun_family: 'uint16_t',
    sun_path: koffi.array('uint8_t', 108),
  });
  const socket = libc.func('int socket(int domain, int type, int protocol)');
  const sendto = libc.func(
    'intptr_t sendto(int fd, const void *buf, size_t len, int flags, const devmigrate_sockaddr_un *addr, uint32_t addrlen)',
  );
  const close = libc.func('int close(int fd)');
  const errnoLoc = libc.func('int *__errno_location()');
  const errno = (): number => koffi.decode(errnoLoc(), 'int') as number;
  return (socketPath, message) => {
    // '@' names a socket in the abstract namespace: a leading NUL byte, no trailing one.
    const pathBytes = Buffer.from(socketPath.startsWith('@') ? `\0${socketPath.slice(1)}` : socketPath);
    if (pathBytes.length >= 108) throw new SdNotifyError(`NOTIFY_SOCKET too long: ${socketPath}`);
    const sunPath = new Array<number>(108).fill(0);
    for (let i = 0; i < pathBytes.length; i++) sunPath[i] = pathBytes[i] ?? 0;
    const addrlen = 2 + pathBytes.length + (socketPath.startsWith('@') ? 0 : 1);
    const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
    if (fd < 0) throw new SdNotifyError(`socket(AF_UNIX) failed: errno ${errno()}`, errno());
    try {
      const buf = Buffer.from(message);
      const n = sendto(fd, buf, buf.length, 0, { sun_family: AF_UNIX, sun_path: sunPath }, addrlen) as
        number | bigint;
      if (Number(n) < 0) throw new SdNotifyError(`sendto(${socketPath}) failed: errno ${errno()}`, errno());
    } finally {
      close(fd);
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
