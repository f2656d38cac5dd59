// Whether a process id names a live process: used to tell a running agent or simulated host
// from a stale record of one. EPERM means it exists but belongs to someone else.

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
