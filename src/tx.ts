/**
 * Transactions: {@linkcode Tx} on one pinned primary connection, savepoints
 * for nested `runTx`, and the `runTx` loop (commit on return, rollback on
 * throw, re-run on serialization failure or deadlock when asked).
 *
 * Statements inside a transaction are never retried one by one: a failure
 * is the caller's to handle, and `runTx({ retries })` re-runs the whole
 * callback on 40001/40P01 only.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { withExecutor } from "./context.ts";
import { DbxError, isConnectionError, isSerializationFailure, NoRowsError } from "./errors.ts";
import {
  checkStatement,
  type CommandResult,
  type Executor,
  type QueryOptions,
  type Row,
} from "./executor.ts";
import type { Node } from "./node.ts";
import { backoffDelay, CallSignal, delay } from "./retry.ts";

/**
 * Transaction isolation levels PostgreSQL implements.
 *
 * @example
 * ```ts
 * import type { IsolationLevel } from "@codelab/dbx";
 *
 * const level: IsolationLevel = "repeatable read";
 * ```
 */
export type IsolationLevel = "read committed" | "repeatable read" | "serializable";

/**
 * Characteristics of a transaction (`BEGIN ...`).
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * await using tx = await cluster.begin({ isolation: "serializable", readOnly: true, deferrable: true });
 * ```
 */
export interface TxOptions {
  /** Isolation level. @default the server's default_transaction_isolation (normally "read committed") */
  isolation?: IsolationLevel;
  /** `READ ONLY`: writes fail with 25006. @default false */
  readOnly?: boolean;
  /** `DEFERRABLE` (meaningful for serializable read-only transactions). @default false */
  deferrable?: boolean;
}

/**
 * Options of `runTx`.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * await cluster.runTx((tx) => tx.exec("update counters set n = n + 1"), {
 *   isolation: "serializable",
 *   retries: 3,
 * });
 * ```
 */
export interface RunTxOptions extends TxOptions {
  /**
   * How many times to re-run the whole callback after a serialization
   * failure (40001) or deadlock (40P01). Nothing else is retried.
   * @default 0
   */
  retries?: number;
}

/**
 * A transaction on one pinned connection. Disposing of it (`await using`)
 * rolls it back if it is still open.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * await using tx = await cluster.begin({ isolation: "serializable" });
 * await tx.exec("update accounts set balance = balance - 10 where id = $1", [1]);
 * await tx.commit(); // without it, leaving the block rolls back
 * ```
 */
export interface Tx extends Executor, AsyncDisposable {
  /** Whether statements can still run (not committed, rolled back or broken). */
  readonly active: boolean;
  /**
   * Commits. Throws if the transaction had failed (the server rolled it back).
   *
   * @returns Resolves when committed.
   */
  commit(): Promise<void>;
  /**
   * Rolls back.
   *
   * @returns Resolves when rolled back.
   */
  rollback(): Promise<void>;
}

const ISOLATION: Readonly<Record<IsolationLevel, string>> = {
  "read committed": "read committed",
  "repeatable read": "repeatable read",
  serializable: "serializable",
};

/**
 * Builds the BEGIN statement for `options`, validating them.
 *
 * @param method The public method, for error messages.
 * @param options Transaction characteristics.
 * @returns The statement.
 * @throws {RangeError} for an unknown isolation level or non-boolean flags.
 */
export function beginStatement(method: string, options: TxOptions | undefined): string {
  if (options === undefined) return "begin";
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`Cannot run ${method}() as 'options' must be an object`);
  }
  let sql = "begin";
  const { isolation, readOnly, deferrable } = options;
  if (isolation !== undefined) {
    if (!Object.hasOwn(ISOLATION, isolation)) {
      throw new RangeError(
        `Cannot run ${method}() as 'options.isolation' must be one of ${
          Object.keys(ISOLATION).map((k) => `"${k}"`).join(", ")
        }: current value is ${JSON.stringify(isolation)}`,
      );
    }
    sql += ` isolation level ${ISOLATION[isolation]}`;
  }
  for (const [field, value] of [["readOnly", readOnly], ["deferrable", deferrable]] as const) {
    if (value !== undefined && typeof value !== "boolean") {
      throw new TypeError(
        `Cannot run ${method}() as 'options.${field}' must be a boolean: current value is ${
          String(value)
        }`,
      );
    }
  }
  if (readOnly !== undefined) sql += readOnly ? " read only" : " read write";
  if (deferrable !== undefined) sql += deferrable ? " deferrable" : " not deferrable";
  return sql;
}

/** Runs one statement of a transaction (counted and observed by the cluster). */
export type TxRunner = (
  node: Node,
  client: pg.PoolClient,
  sql: string,
  args: readonly unknown[] | undefined,
  signal: AbortSignal | undefined,
) => Promise<pg.QueryResult>;

type TxState = "active" | "committed" | "rolled back" | "failed";

/** Base of a top-level transaction and a savepoint: statement methods and state. */
abstract class TxBase implements Tx {
  /** Serialises statements: a pg connection runs one at a time anyway, in order. */
  #tail: Promise<unknown> = Promise.resolve();
  protected state: TxState = "active";

  get active(): boolean {
    return this.state === "active";
  }

  /** Runs a statement after every earlier one, on the pinned connection. */
  protected abstract send(
    sql: string,
    args: readonly unknown[] | undefined,
    signal: AbortSignal | undefined,
  ): Promise<pg.QueryResult>;

  protected assertActive(method: string): void {
    if (this.state !== "active") {
      throw new DbxError(`Cannot run ${method}() as the transaction is already ${this.state}`);
    }
  }

  protected enqueue(
    method: string,
    sql: string,
    args: readonly unknown[] | undefined,
    options: QueryOptions | undefined,
  ): Promise<pg.QueryResult> {
    try {
      this.assertActive(method);
      checkStatement(method, sql, args);
    } catch (err) {
      return Promise.reject(err);
    }
    const run = async () => {
      if (options?.signal === undefined && options?.timeoutMs === undefined) {
        return this.send(sql, args, undefined);
      }
      const call = new CallSignal(options);
      try {
        return await this.send(sql, args, call.signal);
      } finally {
        call.dispose();
      }
    };
    const result = this.#tail.then(run, run);
    this.#tail = result.catch(() => {});
    return result;
  }

  async exec(
    sql: string,
    args?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<CommandResult> {
    const r = await this.enqueue("exec", sql, args, options);
    return { command: r.command, rowCount: r.rowCount ?? 0 };
  }

  async query<T = Row>(
    sql: string,
    args?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<T[]> {
    return (await this.enqueue("query", sql, args, options)).rows as T[];
  }

  async queryRow<T = Row>(
    sql: string,
    args?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<T> {
    const { rows } = await this.enqueue("queryRow", sql, args, options);
    if (rows.length === 0) throw new NoRowsError();
    return rows[0] as T;
  }

  abstract commit(): Promise<void>;
  abstract rollback(): Promise<void>;

  /** Rolls back if still active; never throws (a broken connection already ended the transaction). */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.state === "active") await this.rollback().catch(() => {});
  }
}

/**
 * A top-level transaction on a pinned primary connection. Internal: users
 * get it as a {@linkcode Tx} from `begin()` or `runTx()`.
 */
export class Transaction extends TxBase {
  readonly #node: Node;
  readonly #client: pg.PoolClient;
  readonly #run: TxRunner;
  #savepoints = 0;
  /** The cluster that opened it: nested `runTx` on that cluster uses a savepoint. */
  readonly owner: object;

  /** The top-level transaction (itself). */
  get root(): Transaction {
    return this;
  }

  /**
   * @param owner The cluster that opened it.
   * @param node The primary it runs on.
   * @param client The pinned connection (BEGIN already sent).
   * @param run Runs a statement on it.
   */
  constructor(owner: object, node: Node, client: pg.PoolClient, run: TxRunner) {
    super();
    this.owner = owner;
    this.#node = node;
    this.#client = client;
    this.#run = run;
  }

  protected async send(
    sql: string,
    args: readonly unknown[] | undefined,
    signal: AbortSignal | undefined,
  ): Promise<pg.QueryResult> {
    try {
      return await this.#run(this.#node, this.#client, sql, args, signal);
    } catch (err) {
      // A lost connection ends the transaction: the server rolls it back.
      if (isConnectionError(err)) this.#finish("failed");
      throw err;
    }
  }

  override async commit(): Promise<void> {
    this.assertActive("commit");
    let result: pg.QueryResult;
    try {
      result = await this.enqueue("commit", "commit", undefined, undefined);
    } catch (err) {
      this.#finish("failed");
      throw err;
    }
    // COMMIT of a transaction an earlier statement broke is answered ROLLBACK.
    if (result.command === "ROLLBACK") {
      this.#finish("rolled back");
      throw new DbxError("transaction was rolled back by the server: an earlier statement failed", {
        node: this.#node.name,
      });
    }
    this.#finish("committed");
  }

  override async rollback(): Promise<void> {
    this.assertActive("rollback");
    try {
      await this.enqueue("rollback", "rollback", undefined, undefined);
    } catch (err) {
      this.#finish("failed");
      throw err;
    }
    this.#finish("rolled back");
  }

  /**
   * Opens a savepoint: a nested transaction whose commit releases it and
   * whose rollback undoes only what ran since.
   *
   * @returns The savepoint as a {@linkcode Tx}.
   */
  async savepoint(): Promise<Tx> {
    const name = `dbx_sp_${++this.#savepoints}`;
    await this.exec(`savepoint ${name}`);
    return new Savepoint(this, name);
  }

  /** Ends the transaction's hold on the connection (once). */
  #finish(state: TxState): void {
    if (this.state !== "active") return;
    this.state = state;
    // Anything but a clean end (status idle) destroys the connection.
    this.#node.release(this.#client, state === "failed");
  }

  /** Statement passthrough for savepoints (which share the connection and queue). */
  run(
    method: string,
    sql: string,
    args: readonly unknown[] | undefined,
    options: QueryOptions | undefined,
  ) {
    return this.enqueue(method, sql, args, options);
  }
}

/** A savepoint inside a {@linkcode Transaction}. */
export class Savepoint extends TxBase {
  readonly #parent: Transaction;
  readonly #name: string;

  constructor(parent: Transaction, name: string) {
    super();
    this.#parent = parent;
    this.#name = name;
  }

  /** The top-level transaction this savepoint lives in. */
  get root(): Transaction {
    return this.#parent;
  }

  protected send(): Promise<pg.QueryResult> {
    throw new Error("unreachable: savepoint statements go through the parent");
  }

  protected override enqueue(
    method: string,
    sql: string,
    args: readonly unknown[] | undefined,
    options: QueryOptions | undefined,
  ): Promise<pg.QueryResult> {
    try {
      this.assertActive(method);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#parent.run(method, sql, args, options);
  }

  override async commit(): Promise<void> {
    this.assertActive("commit");
    this.state = "committed";
    await this.#parent.run("commit", `release savepoint ${this.#name}`, undefined, undefined);
  }

  override async rollback(): Promise<void> {
    this.assertActive("rollback");
    this.state = "rolled back";
    await this.#parent.run("rollback", `rollback to savepoint ${this.#name}`, undefined, undefined);
    await this.#parent.run("rollback", `release savepoint ${this.#name}`, undefined, undefined);
  }
}

/** Attaches a rollback failure to the error that caused the rollback, never replacing it. */
function attachRollbackError(err: unknown, rollbackErr: unknown): void {
  if (err instanceof Error && err.cause === undefined) {
    Object.defineProperty(err, "cause", { value: rollbackErr, configurable: true, writable: true });
  }
}

/** What `runTransaction` needs from the cluster. */
export interface TxHost {
  begin(options?: TxOptions): Promise<Tx>;
}

/**
 * The `runTx` loop: begin, run `fn` with the transaction bound to the async
 * context, commit on return, roll back on throw and re-throw the original
 * error; re-run on 40001/40P01 up to `retries` times with backoff. Inside a
 * transaction of the same cluster, `fn` runs in a savepoint instead.
 *
 * @param host The cluster.
 * @param fn The transaction body.
 * @param options Characteristics and retries.
 * @param parent The transaction bound to the current context, if any.
 * @param backoff Base and cap of the delay between re-runs.
 * @returns What `fn` returned.
 */
export async function runTransaction<T>(
  host: TxHost,
  fn: (tx: Tx) => Promise<T>,
  options: RunTxOptions | undefined,
  parent: Transaction | undefined,
  backoff: { baseDelayMs: number; maxDelayMs: number },
): Promise<T> {
  if (typeof fn !== "function") {
    throw new TypeError(
      `Cannot run runTx() as 'fn' must be a function: current value is ${typeof fn}`,
    );
  }
  const retries = options?.retries ?? 0;
  if (!Number.isInteger(retries) || retries < 0) {
    throw new RangeError(
      `Cannot run runTx() as 'options.retries' must be a non-negative integer: current value is ${retries}`,
    );
  }
  for (let attempt = 0;; attempt++) {
    const tx = parent?.active ? await parent.savepoint() : await host.begin(options);
    try {
      const result = await withExecutor(tx, () => fn(tx));
      if (tx.active) await tx.commit();
      return result;
    } catch (err) {
      if (tx.active) {
        try {
          await tx.rollback();
        } catch (rollbackErr) {
          attachRollbackError(err, rollbackErr);
        }
      }
      // A savepoint cannot be re-run on its own: the serialization failure
      // aborted the enclosing transaction, whose runTx decides.
      if (parent === undefined && attempt < retries && isSerializationFailure(err)) {
        await delay(backoffDelay(attempt + 1, backoff));
        continue;
      }
      throw err;
    }
  }
}
