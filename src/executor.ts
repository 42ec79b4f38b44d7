/**
 * The small interfaces repositories depend on. A {@linkcode Cluster}, a
 * transaction and a single node all satisfy {@linkcode Executor}, so data
 * access code can run against any of them.
 *
 * @module
 */

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
  signal?: AbortSignal;
  /**
   * Deadline for the whole call, retries and backoff included. When it
   * passes, a running statement is cancelled on the server and the call
   * rejects with a `DbxError` of kind `"timeout"`.
   * @default undefined (no deadline)
   */
  timeoutMs?: number;
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
  maxLagMs?: number;
  /**
   * A token from `cluster.writeToken()`: only replicas that have replayed
   * at least that WAL position are used, else the primary (read-your-writes).
   * @default undefined
   */
  consistentWith?: string;
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
 * Validates a statement's text and arguments before anything is sent.
 * Internal.
 *
 * @param method The public method, for the message.
 * @param sql Must be a string.
 * @param args Must be an array or undefined.
 * @throws {TypeError} naming the argument and the type it had.
 */
export function checkStatement(method: string, sql: unknown, args: unknown): void {
  if (typeof sql !== "string") {
    throw new TypeError(
      `Cannot run ${method}() as 'sql' must be a string: current value is ${
        sql === null ? "null" : typeof sql
      }`,
    );
  }
  if (args !== undefined && !Array.isArray(args)) {
    throw new TypeError(
      `Cannot run ${method}() as 'args' must be an array: current value is ${
        args === null ? "null" : typeof args
      }`,
    );
  }
}
