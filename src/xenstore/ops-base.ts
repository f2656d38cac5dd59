// What both transports' XsOps share: the "handle used after its transaction ended" guard and
// the convenience reads (tryRead, exists) built on the transport's own read/readString. The
// transports extend it and implement the operations that talk to xenstored.

import { XenStoreInputError, isXsErrno } from './errors.js';
import { validatePath } from './paths.js';
import type { Perm, XsOps } from './types.js';

export abstract class XsOpsBase implements XsOps {
  /** Set when a transaction has ended: its handle must not be used any more. */
  protected ended = false;

  /**
   * The preamble of every path operation: a live handle (not used after its transaction ended)
   * and a valid path, else it throws. Synchronous and allocation-free on success (hot path).
   */
  protected checkPath(path: string): void {
    if (this.ended) {
      throw new XenStoreInputError('transaction handle used after the transaction ended', 'tx');
    }
    validatePath(path);
  }

  abstract read(path: string): Promise<Buffer>;
  abstract readString(path: string): Promise<string>;
  abstract write(path: string, value: Buffer | string): Promise<void>;
  abstract mkdir(path: string): Promise<void>;
  abstract rm(path: string): Promise<void>;
  abstract directory(path: string): Promise<string[]>;
  abstract getPerms(path: string): Promise<Perm[]>;
  abstract setPerms(path: string, perms: readonly Perm[]): Promise<void>;

  async tryRead(path: string): Promise<string | undefined> {
    try {
      return await this.readString(path);
    } catch (err) {
      if (isXsErrno(err, 'ENOENT')) return undefined;
      throw err;
    }
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.read(path);
      return true;
    } catch (err) {
      if (isXsErrno(err, 'ENOENT')) return false;
      throw err;
    }
  }
}
