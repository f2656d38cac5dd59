// Ctrl-C and friends for the CLI's long commands: SIGINT, SIGTERM and SIGHUP abort one signal
// that every wait listens to, so the command can stop what it started (abort its job, make xl
// fail before its point of no return) and exit 128 + the signal. A repeated signal is passed to
// whoever asked for it (migrate: "leave now"), else it ends the process at once.
import { CliError, ExitCode, type ExitCodeValue } from './exit-codes.js';

export type InterruptSignal = 'SIGINT' | 'SIGTERM' | 'SIGHUP';
export const INTERRUPT_SIGNALS: readonly InterruptSignal[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

export const SIGNAL_EXIT: Readonly<Record<InterruptSignal, ExitCodeValue>> = {
  SIGINT: ExitCode.INTERRUPTED,
  SIGTERM: ExitCode.TERMINATED,
  SIGHUP: ExitCode.HANGUP,
};

/** A wait ended because the user interrupted the command. */
export class InterruptedError extends CliError {
  override readonly name: string = 'InterruptedError';
  constructor(
    readonly signalName: InterruptSignal,
    message = `interrupted (${signalName})`,
    hints: readonly string[] = [],
  ) {
    super(message, SIGNAL_EXIT[signalName], hints);
  }
}

export class Interrupt {
  private readonly ctl = new AbortController();
  private signalSeen: InterruptSignal | undefined;
  private repeats = 0;
  private onRepeatCb: ((sig: InterruptSignal) => void) | undefined;
  private readonly handlers = new Map<InterruptSignal, () => void>();

  /** Aborted at the first signal; its reason is an InterruptedError. */
  get signal(): AbortSignal {
    return this.ctl.signal;
  }

  get received(): InterruptSignal | undefined {
    return this.signalSeen;
  }

  get exitCode(): ExitCodeValue {
    return this.signalSeen === undefined ? ExitCode.INTERRUPTED : SIGNAL_EXIT[this.signalSeen];
  }

  /** The command takes the second and later signals itself (e.g. "leave now"). */
  onRepeat(cb: ((sig: InterruptSignal) => void) | undefined): void {
    this.onRepeatCb = cb;
  }

  /** What a signal does (also called by tests instead of a real signal). */
  fire(sig: InterruptSignal, force: () => void = () => undefined): void {
    if (this.signalSeen === undefined) {
      this.signalSeen = sig;
      this.ctl.abort(new InterruptedError(sig));
      return;
    }
    this.repeats += 1;
    if (this.onRepeatCb !== undefined) this.onRepeatCb(sig);
    else force();
  }

  /** Listens to the process's signals; `force` ends the process when nobody takes a repeat. */
  install(force: (code: ExitCodeValue) => void): void {
    for (const sig of INTERRUPT_SIGNALS) {
      const h = (): void => this.fire(sig, () => force(SIGNAL_EXIT[sig]));
      this.handlers.set(sig, h);
      process.on(sig, h);
    }
  }

  uninstall(): void {
    for (const [sig, h] of this.handlers) process.off(sig, h);
    this.handlers.clear();
  }
}

/** Rejects with the interrupt's error once `signal` aborts (never resolves otherwise). */
export function whenInterrupted(signal: AbortSignal | undefined): Promise<never> {
  return new Promise<never>((_, reject) => {
    if (signal === undefined) return;
    const fail = (): void =>
      reject(signal.reason instanceof Error ? signal.reason : new Error('interrupted'));
    if (signal.aborted) fail();
    else signal.addEventListener('abort', fail, { once: true });
  });
}
