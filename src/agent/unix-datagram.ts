// AF_UNIX datagrams from Node, which has none: libc's socket() and sendto() through koffi. Used for
// systemd's notify socket (sd-notify.ts, where libsystemd is missing) and journald's native socket
// (journald.ts). A path starting with '@' names a socket in the abstract namespace.
import koffi from 'koffi';

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const SUN_PATH = 108;

export class DatagramError extends Error {
  override readonly name = 'DatagramError';
  constructor(
    message: string,
    readonly errno?: number,
  ) {
    super(message);
  }
}

interface Libc {
  socket(domain: number, type: number, protocol: number): number;
  sendto(
    fd: number,
    buf: Buffer,
    len: number,
    flags: number,
    addr: unknown,
    addrlen: number,
  ): number | bigint;
  close(fd: number): number;
  errno(): number;
}

let libc: Libc | undefined;

function load(): Libc {
  if (libc !== undefined) return libc;
  const lib = koffi.load('libc.so.6');
  // Registered once per process, by name: the sendto prototype refers to it.
  koffi.struct('devmigrate_sockaddr_un', {
    sun_family: 'uint16_t',
    sun_path: koffi.array('uint8_t', SUN_PATH),
  });
  const socket = lib.func('int socket(int domain, int type, int protocol)');
  const sendto = lib.func(
    'intptr_t sendto(int fd, const void *buf, size_t len, int flags, const devmigrate_sockaddr_un *addr, uint32_t addrlen)',
  );
  const close = lib.func('int close(int fd)');
  const errnoLoc = lib.func('int *__errno_location()');
  libc = {
    socket: (d, t, p) => socket(d, t, p) as number,
    sendto: (fd, buf, len, flags, addr, addrlen) =>
      sendto(fd, buf, len, flags, addr, addrlen) as number | bigint,
    close: (fd) => close(fd) as number,
    errno: () => koffi.decode(errnoLoc(), 'int') as number,
  };
  return libc;
}

function address(path: string): { addr: { sun_family: number; sun_path: number[] }; len: number } {
  const abstract = path.startsWith('@');
  const bytes = Buffer.from(abstract ? `\0${path.slice(1)}` : path);
  if (bytes.length >= SUN_PATH) throw new DatagramError(`socket path too long: ${path}`);
  const sunPath = new Array<number>(SUN_PATH).fill(0);
  for (let i = 0; i < bytes.length; i++) sunPath[i] = bytes[i] ?? 0;
  return { addr: { sun_family: AF_UNIX, sun_path: sunPath }, len: 2 + bytes.length + (abstract ? 0 : 1) };
}

/** One unbound datagram socket, kept open for many sends to one or more paths. */
export class UnixDatagramSocket {
  private fd: number;
  private readonly c: Libc;

  constructor() {
    this.c = load();
    this.fd = this.c.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (this.fd < 0)
      throw new DatagramError(`socket(AF_UNIX) failed: errno ${this.c.errno()}`, this.c.errno());
  }

  /** Sends one datagram; throws DatagramError with errno (ENOENT, ECONNREFUSED, EMSGSIZE, ...). */
  send(path: string, data: Buffer): void {
    if (this.fd < 0) throw new DatagramError('socket closed');
    const { addr, len } = address(path);
    const n = this.c.sendto(this.fd, data, data.length, 0, addr, len);
    if (Number(n) < 0) {
      const e = this.c.errno();
      throw new DatagramError(`sendto(${path}) failed: errno ${e}`, e);
    }
  }

  close(): void {
    if (this.fd >= 0) this.c.close(this.fd);
    this.fd = -1;
  }
}
