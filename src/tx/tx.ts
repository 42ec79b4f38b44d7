/**
 * Transactions: `Tx` on one pinned primary connection, and
 * savepoints for nested `runTx`. Every statement of a transaction (COPY and
 * batches included) runs through the cluster's attempt runner, in order, on
 * the pinned connection. The `runTx` loop lives in `run_tx.ts`.
 *
 * Statements inside a transaction are never retried one by one: a failure
 * is the caller's to handle, and `runTx({ retries })` re-runs the whole
 * callback on 40001/40P01 only.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { type AttemptInfo, type AttemptRunner, failureOf } from "../call/attempt.ts";
import type { BatchOptions, BatchQuery, BatchResult } from "./batch.ts";
import type { CopyOptions, CopyRows } from "./copy.ts";
import { batchCall, copyCall, type LeaseCall } from "./lease_calls.ts";
import { DbxError } from "../errors.ts";
import { markInDoubt } from "../failure.ts";
import {
  type CommandResult,
  type QueryOptions,
  type ReadOptions,
  type Row,
  rowOf,
  rowsOf,
  toCommandResult,
  type Tx,
} from "../executor.ts";
import type { Lease } from "../node/lease.ts";
import type { Node } from "../node/node.ts";
import type { SessionState } from "../call/session.ts";
import { type CallOptions, withCall } from "../call/signal.ts";
import { checkCall } from "../call/validate.ts";

/** Where a transaction is: once commit() or rollback() is called, nothing else is accepted. */
type TxState =
  | "active"
  | "being committed"
  | "being rolled back"
  | "committed"
  | "rolled back"
  | "failed";

/** Work on a transaction's connection: a statement, a COPY or a batch. */
type TxWork<R> = (lease: Lease, signal: AbortSignal | undefined) => Promise<R>;

/** Base of a top-level transaction and a savepoint: the statement methods. */
abstract class TxBase implements Tx {
  protected state: TxState = "active";

  get active(): boolean {
    return this.state === "active";
  }

  /** The top-level transaction, whose connection and queue every statement uses. */
  abstract get root(): Transaction;

  protected assertActive(method: string): void {
    if (this.state !== "active") {
      throw new DbxError(`Cannot run ${method}() as the transaction is already ${this.state}`);
    }
  }

  /**
   * Runs one statement in the transaction, after its earlier ones (the
   * statement methods, and the cluster's while this transaction is ambient).
   *
   * @param method Method name for argument errors.
   * @param sql Statement text.
   * @param args Bind parameters.
   * @param options The call's signal and deadline.
   * @returns The driver's result.
   */
  statement(
    method: string,
    sql: string,
    args: readonly unknown[] | undefined,
    options: QueryOptions | undefined,
  ): Promise<pg.QueryResult> {
    try {
      this.assertActive(method);
      checkCall(method, sql, args, options);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.root.enqueue(
      { sql, argCount: args?.length ?? 0, attempt: 1 },
      options,
      (lease, signal) => lease.run(sql, args, signal),
    );
  }

  exec(sql: string, args?: readonly unknown[], options?: QueryOptions): Promise<CommandResult> {
    return this.statement("exec", sql, args, options).then(toCommandResult);
  }

  query<T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions): Promise<T[]> {
    return this.statement("query", sql, args, options).then(rowsOf<T>);
  }

  queryRow<T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions): Promise<T> {
    return this.statement("queryRow", sql, args, options).then(rowOf<T>);
  }

  readQuery<T = Row>(sql: string, args?: readonly unknown[], options?: ReadOptions): Promise<T[]> {
    return this.statement("readQuery", sql, args, options).then(rowsOf<T>);
  }

  readQueryRow<T = Row>(sql: string, args?: readonly unknown[], options?: ReadOptions): Promise<T> {
    return this.statement("readQueryRow", sql, args, options).then(rowOf<T>);
  }

  copyFrom(
    table: string,
    columns: readonly string[],
    rows: CopyRows,
    options?: CopyOptions,
  ): Promise<number> {
    let call: LeaseCall<number>;
    try {
      this.assertActive("copyFrom");
      call = copyCall(table, columns, rows, options);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.root.enqueue(call.info, options, (lease, signal) => call.work(lease, signal));
  }

  sendBatch(
    queries: readonly BatchQuery[],
    options?: BatchOptions & { atomic?: true | undefined },
  ): Promise<BatchResult[]>;
  sendBatch(
    queries: readonly BatchQuery[],
    options: BatchOptions & { atomic: false },
  ): Promise<PromiseSettledResult<BatchResult>[]>;
  sendBatch(
    queries: readonly BatchQuery[],
    options?: BatchOptions,
  ): Promise<BatchResult[] | PromiseSettledResult<BatchResult>[]> {
    let call: LeaseCall<BatchResult[] | PromiseSettledResult<BatchResult>[]>;
    try {
      this.assertActive("sendBatch");
      call = batchCall(queries, options, true);
    } catch (err) {
      return Promise.reject(err);
    }
    if (queries.length === 0) return Promise.resolve([]);
    return this.root.enqueue(call.info, options, (lease, signal) => call.work(lease, signal));
  }

  abstract commit(): Promise<void>;
  abstract rollback(): Promise<void>;

  /** Rolls back if still active; never throws (a broken connection already ended the transaction). */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.state === "active") await this.rollback().catch(() => {});
  }
}

/**
 * A top-level transaction on a pinned connection. Internal: users see it
 * as {@linkcode Tx}.
 */
export class Transaction extends TxBase {
  /** The node the connection belongs to. */
  readonly node: Node;
  /** The cluster that opened it: its methods join it, nested `runTx` uses a savepoint. */
  readonly owner: object;
  readonly #lease: Lease;
  readonly #runner: AttemptRunner;
  /** `runTx`'s signal: cancels whatever runs when it aborts. */
  readonly #signal: AbortSignal | undefined;
  /** The read-your-writes session that opened it: told when COMMIT ends. */
  readonly #session: SessionState | undefined;
  /** Serialises work: a pg connection runs one statement at a time anyway, in order. */
  #tail: Promise<unknown> = Promise.resolve();
  #savepoints = 0;

  /**
   * @param owner The cluster that opened it.
   * @param lease The connection, inside BEGIN.
   * @param runner The cluster's attempt runner.
   * @param signal Cancels every statement of the transaction.
   */
  constructor(
    owner: object,
    lease: Lease<Node>,
    runner: AttemptRunner,
    options?: { signal?: AbortSignal | undefined; session?: SessionState | undefined },
  ) {
    super();
    this.owner = owner;
    this.node = lease.node;
    this.#lease = lease;
    this.#runner = runner;
    this.#signal = options?.signal;
    this.#session = options?.session;
  }

  /** The top-level transaction (itself). */
  get root(): Transaction {
    return this;
  }

  /**
   * Runs `work` after every earlier one, through the attempt runner, within
   * the transaction's signal and the call's own.
   *
   * @param info What it is, for hooks and tracers.
   * @param options The call's signal and deadline.
   * @param work The work on the connection.
   * @returns What `work` returned.
   */
  enqueue<R>(info: AttemptInfo, options: CallOptions | undefined, work: TxWork<R>): Promise<R> {
    if (this.state !== "active") {
      // A late statement (a callback still running after commit() was
      // called): never run on the released connection, outside the transaction.
      return Promise.reject(
        new DbxError(`Cannot run a statement as the transaction is already ${this.state}`),
      );
    }
    const own = options?.signal;
    const txSignal = this.#signal;
    const call: CallOptions | undefined = txSignal === undefined ? options : {
      signal: own === undefined ? txSignal : AbortSignal.any([own, txSignal]),
      timeoutMs: options?.timeoutMs,
    };
    return this.#queue(info, call, work);
  }

  /** Runs a transaction-control statement (never cancelled by the call's signal). */
  control(sql: string): Promise<pg.QueryResult> {
    const info = { sql, argCount: 0, attempt: 1 };
    return this.#queue(info, undefined, (lease) => lease.run(sql, undefined, undefined));
  }

  /** Runs `work` after every earlier one, through the attempt runner. */
  #queue<R>(info: AttemptInfo, call: CallOptions | undefined, work: TxWork<R>): Promise<R> {
    const run = () =>
      withCall(
        call,
        (signal) => this.#runner.run(this.node, info, signal, () => work(this.#lease, signal)),
      )
        .catch((err) => {
          // A lost connection ends the transaction: the server rolls it back.
          if (failureOf(err).connectionLost) this.#finish("failed");
          throw err;
        });
    const result = this.#tail.then(run, run);
    this.#tail = result.catch(() => {});
    return result;
  }

  override async commit(): Promise<void> {
    this.assertActive("commit");
    this.state = "being committed";
    let result: pg.QueryResult;
    try {
      result = await this.control("commit");
    } catch (err) {
      this.#finish("failed");
      // COMMIT sent, answer lost: the transaction may or may not have committed.
      throw failureOf(err).connectionLost ? markInDoubt(err) : err;
    } finally {
      // Committed, or maybe (a lost answer): the session's reads must see it.
      this.#session?.noteWrite();
    }
    // COMMIT of a transaction an earlier statement broke is answered ROLLBACK.
    if (result.command === "ROLLBACK") {
      this.#finish("rolled back");
      throw new DbxError("transaction was rolled back by the server: an earlier statement failed", {
        node: this.node.name,
      });
    }
    this.#finish("committed");
  }

  override async rollback(): Promise<void> {
    this.assertActive("rollback");
    this.state = "being rolled back";
    try {
      await this.control("rollback");
    } catch (err) {
      this.#finish("failed");
      throw err;
    }
    this.#finish("rolled back");
  }

  /**
   * Opens a savepoint (a nested `runTx`).
   *
   * @returns The savepoint as a {@linkcode Tx}.
   */
  async savepoint(): Promise<Savepoint> {
    this.assertActive("runTx");
    const name = `dbx_sp_${++this.#savepoints}`;
    await this.control(`savepoint ${name}`);
    return new Savepoint(this, name);
  }

  /** Ends the transaction's hold on the connection (once). */
  #finish(state: TxState): void {
    if (this.#lease.released) return;
    this.state = state;
    // The lease's rule: anything but a clean end destroys the connection,
    // a plain SET inside the transaction has it reset.
    this.#lease.release(state === "failed");
  }
}

/** A savepoint inside a {@linkcode Transaction}: its statements use the parent's queue. */
export class Savepoint extends TxBase {
  readonly #parent: Transaction;
  readonly #name: string;

  /**
   * @param parent The enclosing transaction.
   * @param name The savepoint's name.
   */
  constructor(parent: Transaction, name: string) {
    super();
    this.#parent = parent;
    this.#name = name;
  }

  /** The top-level transaction this savepoint lives in. */
  get root(): Transaction {
    return this.#parent;
  }

  override async commit(): Promise<void> {
    this.assertActive("commit");
    this.state = "committed";
    await this.#parent.control(`release savepoint ${this.#name}`);
  }

  override async rollback(): Promise<void> {
    this.assertActive("rollback");
    this.state = "rolled back";
    await this.#parent.control(`rollback to savepoint ${this.#name}`);
    await this.#parent.control(`release savepoint ${this.#name}`);
  }
}
