/**
 * The small interfaces repositories depend on. A {@linkcode Cluster}, a
 * transaction and a single node all satisfy {@linkcode Executor}, so data
 * access code can run against any of them.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import type { BatchOptions, BatchQuery, BatchResult } from "./tx/batch.ts";
import type { CopyOptions, CopyRows } from "./tx/copy.ts";
import { NoRowsError } from "./errors.ts";

/**
 * The command tag and row count of a driver result. Internal.
 *
 * @param r The driver's result.
 * @returns What `exec` returns.
 */
export function toCommandResult(r: pg.QueryResult): CommandResult {
  return { command: r.command, rowCount: r.rowCount ?? 0 };
}

/**
 * The rows of a driver result, typed.
 *
 * @param result A driver result.
 * @returns Its rows.
 */
export function rowsOf<T>(result: { rows: unknown[] }): T[] {
  return result.rows as T[];
}

/**
 * The first row of a driver result.
 *
 * @param result A driver result.
 * @returns Its first row.
 * @throws {NoRowsError} when it has none.
 */
export function rowOf<T>(result: { rows: unknown[] }): T {
  return firstRow<T>(result.rows);
}

/**
 * The first row, for `queryRow`-style methods. Internal.
 *
 * @param rows The rows.
 * @returns The first one.
 * @throws {NoRowsError} when there is none.
 */
export function firstRow<T>(rows: unknown[]): T {
  if (rows.length === 0) throw new NoRowsError();
  return rows[0] as T;
}

/**
 * A result row: column name to parsed value.
 *
 * @example
 * ```ts
 * import { connect, type Row } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const rows: Row[] = await cluster.query("select 1 as one");
 * ```
 */
export type Row = Record<string, unknown>;

/**
 * What a statement did.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const { command, rowCount } = await cluster.exec("delete from sessions where expired");
 * console.log(command, rowCount); // "DELETE" 3
 * ```
 */
export interface CommandResult {
  /** The command tag's verb: `"INSERT"`, `"UPDATE"`, `"SELECT"`, ... */
  readonly command: string;
  /** Rows inserted, updated, deleted, copied or returned. */
  readonly rowCount: number;
}

/**
 * Per-call options of every statement method.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const ac = new AbortController();
 * await cluster.query("select * from reports", [], { signal: ac.signal, timeoutMs: 2_000 });
 * ```
 */
export interface QueryOptions {
  /**
   * Aborting cancels the call: a wait for a connection or a backoff ends at
   * once, and a running statement is cancelled on the server (SQLSTATE 57014).
   * The call rejects with a `DbxError` of kind `"canceled"`.
   * @default undefined
   */
  signal?: AbortSignal | undefined;
  /**
   * Deadline for the whole call, retries and backoff included. When it
   * passes, a running statement is cancelled on the server and the call
   * rejects with a `DbxError` of kind `"timeout"`.
   * @default undefined (no deadline)
   */
  timeoutMs?: number | undefined;
}

/**
 * Options of `readQuery` / `readQueryRow`.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app"],
 * });
 * await cluster.readQuery("select * from feed", [], { maxLagMs: 500, timeoutMs: 1_000 });
 * ```
 */
export interface ReadOptions extends QueryOptions {
  /**
   * Skip replicas whose replay lag is above this many milliseconds (or
   * unknown: a replica behind the primary that has not replayed a
   * transaction since it started); the primary answers when none qualifies.
   * @default undefined (any healthy replica)
   */
  maxLagMs?: number | undefined;
  /**
   * A token from `cluster.writeToken()`: only replicas that have replayed
   * at least that WAL position are used, else the primary (read-your-writes).
   * @default undefined
   */
  consistentWith?: string | undefined;
}

/**
 * The interface repositories depend on (Go's `Querier`).
 *
 * @example A repository that works on a cluster or inside a transaction
 * ```ts
 * import type { Executor } from "@codelab/dbx";
 *
 * interface User { id: number; name: string }
 *
 * export function usersRepo(db: Executor) {
 *   return {
 *     byId: (id: number) => db.queryRow<User>("select id, name from users where id = $1", [id]),
 *     rename: (id: number, name: string) =>
 *       db.exec("update users set name = $2 where id = $1", [id, name]),
 *   };
 * }
 * ```
 */
export interface Executor {
  /**
   * Runs a statement for its effect.
   *
   * @param sql Statement text with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options Cancellation and deadline.
   * @returns The command tag and row count.
   */
  exec(sql: string, args?: readonly unknown[], options?: QueryOptions): Promise<CommandResult>;
  /**
   * Runs a statement and returns its rows.
   *
   * @param sql Statement text with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options Cancellation and deadline.
   * @returns Every row, in order.
   */
  query<T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions): Promise<T[]>;
  /**
   * Runs a statement and returns its first row.
   *
   * @param sql Statement text with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options Cancellation and deadline.
   * @returns The first row.
   * @throws {NoRowsError} when the statement returned no row.
   */
  queryRow<T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions): Promise<T>;
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
  /**
   * Runs a query on the transaction's connection (reads see its writes).
   *
   * @param sql Statement text.
   * @param args Values for the placeholders.
   * @param options Cancellation and deadline (replica options do not apply).
   * @returns Every row.
   */
  readQuery<T = Row>(sql: string, args?: readonly unknown[], options?: ReadOptions): Promise<T[]>;
  /**
   * Like {@linkcode Tx.readQuery}, returning the first row.
   *
   * @param sql Statement text.
   * @param args Values for the placeholders.
   * @param options Cancellation and deadline.
   * @returns The first row.
   * @throws {NoRowsError} when there is none.
   */
  readQueryRow<T = Row>(sql: string, args?: readonly unknown[], options?: ReadOptions): Promise<T>;
  /**
   * COPY FROM STDIN inside the transaction.
   *
   * @param table Table (or schema.table).
   * @param columns Columns, in row order.
   * @param rows Rows of `columns.length` values.
   * @param options Cancellation and deadline.
   * @returns Rows copied.
   */
  copyFrom(
    table: string,
    columns: readonly string[],
    rows: CopyRows,
    options?: CopyOptions,
  ): Promise<number>;
  /**
   * Pipelines statements on the transaction's connection. Atomic (the
   * default): the first failure rejects with its `batchIndex` and leaves
   * the transaction failed. `atomic: false`: one settled result each.
   *
   * @param queries The statements.
   * @param options `atomic`, cancellation and deadline.
   * @returns One result per statement.
   */
  sendBatch(
    queries: readonly BatchQuery[],
    options?: BatchOptions & { atomic?: true | undefined },
  ): Promise<BatchResult[]>;
  /**
   * Non-atomic form of {@linkcode Tx.sendBatch}.
   *
   * @param queries The statements.
   * @param options `atomic: false`, cancellation and deadline.
   * @returns One settled result per statement.
   */
  sendBatch(
    queries: readonly BatchQuery[],
    options: BatchOptions & { atomic: false },
  ): Promise<PromiseSettledResult<BatchResult>[]>;
}
