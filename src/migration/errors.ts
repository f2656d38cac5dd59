// Typed errors of the migration engine: each carries the job, field or phase it is about, so the
// engine can write a precise one-line error to XenStore and tests can branch on the kind.

/** A request field was refused; `field` is the request node's name. */
export class JobValidationError extends Error {
  override readonly name = 'JobValidationError';
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`request/${field}: ${reason}`);
  }
}

/** An event is not allowed in the job's current state (a bug or a stale control). */
export class InvalidTransitionError extends Error {
  override readonly name = 'InvalidTransitionError';
  constructor(
    readonly state: string,
    readonly event: string,
  ) {
    super(`event ${event} is not allowed in state ${state}`);
  }
}

/** A wait ran out: a device operation, a phase, a suspend, a step. */
export class EngineTimeoutError extends Error {
  override readonly name = 'EngineTimeoutError';
  constructor(
    readonly what: string,
    readonly timeoutMs: number,
  ) {
    super(`${what} timed out after ${timeoutMs} ms`);
  }
}

/** The job was aborted by the requester (control=abort / recover) or by its deadline. */
export class JobAbortedError extends Error {
  override readonly name = 'JobAbortedError';
  constructor(readonly why: string) {
    super(why);
  }
}

/** The domain disappeared while its job ran. */
export class DomainGoneError extends Error {
  override readonly name = 'DomainGoneError';
  constructor(readonly domid: number) {
    super(`domain ${domid} was destroyed`);
  }
}

/** One line, no control characters, bounded: what goes into an error/reason node. */
export function oneLine(msg: string, max = 400): string {
  // eslint-disable-next-line no-control-regex
  const flat = msg.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 3)}...` : flat;
}
