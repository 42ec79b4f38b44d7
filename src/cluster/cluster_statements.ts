/**
 * The statement methods of {@linkcode Cluster}: `exec`, `query`, `queryRow`,
 * `readQuery`, `readQueryRow`, `copyFrom`, `sendBatch`. Each is a short
 * delegation: a statement is routed, retried and observed in `dispatch.ts`
 * (with `route.ts`, `retry.ts`, `attempt.ts`).
 *
 * Routing is by method, never by parsing SQL: `exec`, `query` and
 * `queryRow` go to the node that currently *is* primary; `readQuery` and
 * `readQueryRow` go to a healthy replica chosen by the balancer and fall
 * back to the primary. Inside a transaction of this cluster bound to the
 * async context (`runTx`, `runInTx`, `withExecutor(tx, fn)`), every
 * statement method runs in that transaction instead.
 *
 * @module
 */
import {
  batchInfo,
  type BatchOptions,
  type BatchQuery,
  type BatchResult,
  checkBatchOptions,
  runBatch,
} from "../tx/batch.ts";
import { ClusterBase, type ClusterInternals, internalsOf } from "./cluster_base.ts";
import type { ClusterConfig } from "../config/config.ts";
import { checkCopyArgs, copyIn, copyInfo, type CopyOptions, type CopyRows } from "../tx/copy.ts";
import { onPinned, statement } from "../call/dispatch.ts";
import {
  type CommandResult,
  type Executor,
  firstRow,
  type QueryOptions,
  type ReadOptions,
  type Row,
  toCommandResult,
} from "../executor.ts";
import { withCall } from "../call/signal.ts";
import { checkCallOptions } from "../call/validate.ts";

/**
 * The statement methods of a cluster; use {@linkcode Cluster}, which adds
 * sessions, LISTEN/NOTIFY, streams and the ORM facade.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * await cluster.exec("insert into events(kind) values ($1)", ["login"]);
 * ```
 */
export class ClusterStatements extends ClusterBase implements Executor {
  readonly #i: ClusterInternals;

  /**
   * Builds the cluster without connecting. Use {@linkcode connect}, which
   * also verifies the primary and starts the health checker.
   *
   * @param config A config, or a (multi-host) connection string; validated here.
   * @throws {ConfigError} when a setting is invalid.
   */
  constructor(config: ClusterConfig | string) {
    super(config);
    this.#i = internalsOf(this);
  }

  /**
   * Runs a statement on the primary for its effect. A SELECT through `exec`
   * still goes to the primary.
   *
   * @param sql Statement text with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options Cancellation and deadline.
   * @returns The command tag and row count.
   * @throws {DbxError} on failure (see `kind`); {@linkcode RetryExhaustedError} when retries ran out.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * const { rowCount } = await cluster.exec("delete from sessions where expires_at < now()");
   * ```
   */
  async exec(
    sql: string,
    args?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<CommandResult> {
    const tx = this.#i.ambient();
    if (tx !== undefined) return tx.exec(sql, args, options);
    return toCommandResult(await statement(this.#i.d, "exec", false, sql, args, options));
  }

  /**
   * Runs a statement on the primary and returns its rows.
   *
   * @param sql Statement text with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options Cancellation and deadline.
   * @returns Every row.
   * @throws {DbxError} on failure.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * const ids = await cluster.query<{ id: number }>("insert into t(v) values ($1), ($2) returning id", [1, 2]);
   * ```
   */
  async query<T = Row>(
    sql: string,
    args?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<T[]> {
    const tx = this.#i.ambient();
    if (tx !== undefined) return tx.query<T>(sql, args, options);
    return (await statement(this.#i.d, "query", false, sql, args, options)).rows as T[];
  }

  /**
   * Runs a statement on the primary and returns its first row.
   *
   * @param sql Statement text with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options Cancellation and deadline.
   * @returns The first row.
   * @throws {NoRowsError} when there is none; {@linkcode DbxError} on failure.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * const { id } = await cluster.queryRow<{ id: number }>("insert into t(v) values ($1) returning id", [1]);
   * ```
   */
  async queryRow<T = Row>(
    sql: string,
    args?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<T> {
    const tx = this.#i.ambient();
    if (tx !== undefined) return tx.queryRow<T>(sql, args, options);
    return firstRow<T>((await statement(this.#i.d, "queryRow", false, sql, args, options)).rows);
  }

  /**
   * Runs a read on a healthy replica (round-robin by default), falling back
   * to the primary when no replica qualifies. Reads are retried on another
   * node after a connection failure.
   *
   * @param sql Statement text with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options Cancellation, deadline, lag bound and read-your-writes token.
   * @returns Every row.
   * @throws {DbxError} on failure.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({
   *   master: "postgres://app@db1:5432/app",
   *   replicas: ["postgres://app@db2:5432/app"],
   * });
   * const users = await cluster.readQuery<{ id: number }>("select id from users where org = $1", [7]);
   * ```
   */
  async readQuery<T = Row>(
    sql: string,
    args?: readonly unknown[],
    options?: ReadOptions,
  ): Promise<T[]> {
    const tx = this.#i.ambient();
    if (tx !== undefined) return tx.readQuery<T>(sql, args, options);
    return (await statement(this.#i.d, "readQuery", true, sql, args, options)).rows as T[];
  }

  /**
   * Like {@linkcode readQuery}, returning the first row.
   *
   * @param sql Statement text with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options Cancellation, deadline, lag bound and read-your-writes token.
   * @returns The first row.
   * @throws {NoRowsError} when there is none; {@linkcode DbxError} on failure.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * const { n } = await cluster.readQueryRow<{ n: number }>("select count(*)::int as n from users");
   * ```
   */
  async readQueryRow<T = Row>(
    sql: string,
    args?: readonly unknown[],
    options?: ReadOptions,
  ): Promise<T> {
    const tx = this.#i.ambient();
    if (tx !== undefined) return tx.readQueryRow<T>(sql, args, options);
    return firstRow<T>((await statement(this.#i.d, "readQueryRow", true, sql, args, options)).rows);
  }

  /**
   * Streams rows into a table with `COPY ... FROM STDIN` on the primary.
   * Values are escaped for COPY's text format (NULL, tabs, newlines,
   * backslashes; Dates, JSON and bytes encoded). A row of the wrong width
   * aborts the COPY, so nothing is committed. Only taking the connection is
   * retried; the COPY itself is a write and is never re-sent.
   *
   * @param table Table name, optionally schema-qualified (`"audit.events"`).
   * @param columns Column names, in the order of each row's values.
   * @param rows Arrays of values, from a sync or async iterable (consumed with back-pressure).
   * @param options Cancellation and deadline: aborting sends CopyFail, so nothing is kept.
   * @returns Number of rows copied.
   * @throws {TypeError} / {RangeError} for bad arguments or a row of the wrong width.
   * @throws {DbxError} when the server rejects the data.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * const n = await cluster.copyFrom("events", ["id", "kind"], [[1, "login"], [2, null]]);
   * ```
   */
  async copyFrom(
    table: string,
    columns: readonly string[],
    rows: CopyRows,
    options?: CopyOptions,
  ): Promise<number> {
    const tx = this.#i.ambient();
    if (tx !== undefined) return tx.copyFrom(table, columns, rows, options);
    this.#i.d.assertOpen();
    checkCopyArgs("copyFrom", table, columns, rows);
    checkCallOptions("copyFrom", options);
    return await withCall(
      options,
      (signal) =>
        onPinned(
          this.#i.d,
          copyInfo(table),
          signal,
          // COPY answers an abort with CopyFail itself: no cancel request.
          (lease) => lease.use(undefined, (client) => copyIn(client, table, columns, rows, signal)),
        ),
    );
  }

  /**
   * Sends statements pipelined on one primary connection (one round trip).
   * Atomic by default: the batch runs in one transaction, and a failure
   * rolls everything back and rejects with that statement's `DbxError`,
   * its position in `batchIndex`. With `{ atomic: false }` each statement
   * runs on its own and the result is one settled result per statement.
   *
   * @param queries The statements, in order.
   * @param options `atomic` (default `true`), `signal`, `timeoutMs`.
   * @returns One result per statement, in order.
   * @throws {BatchError} (a DbxError with `batchIndex`) when an atomic batch fails.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * const [, counted] = await cluster.sendBatch([
   *   { sql: "insert into events(kind) values ($1)", args: ["login"] },
   *   { sql: "select count(*)::int as n from events" },
   * ]);
   * console.log(counted?.rows[0]);
   * ```
   */
  sendBatch(
    queries: readonly BatchQuery[],
    options?: BatchOptions & { atomic?: true },
  ): Promise<BatchResult[]>;
  /**
   * Sends statements pipelined, each on its own: one settled result per statement.
   *
   * @param queries The statements, in order.
   * @param options `{ atomic: false }`.
   * @returns One settled result per statement, in order.
   */
  sendBatch(
    queries: readonly BatchQuery[],
    options: BatchOptions & { atomic: false },
  ): Promise<PromiseSettledResult<BatchResult>[]>;
  async sendBatch(
    queries: readonly BatchQuery[],
    options?: BatchOptions,
  ): Promise<BatchResult[] | PromiseSettledResult<BatchResult>[]> {
    const tx = this.#i.ambient();
    if (tx !== undefined) return tx.sendBatch(queries, options as BatchOptions & { atomic?: true });
    this.#i.d.assertOpen();
    const atomic = checkBatchOptions(queries, options);
    if (queries.length === 0) return [];
    return await withCall(
      options,
      (signal) =>
        onPinned(
          this.#i.d,
          batchInfo(queries),
          signal,
          (lease) => runBatch(lease, signal, queries, { atomic, inTransaction: false }),
        ),
    );
  }
}
