/**
 * The {@linkcode Cluster}: one object in front of a primary and its read
 * replicas. Lifecycle (connect, close) and the public methods, each a short
 * delegation: a statement is routed, retried and observed in `dispatch.ts`
 * (with `route.ts`, `retry.ts`, `attempt.ts`), a transaction runs in
 * `tx.ts` / `run_tx.ts`.
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

// @ts-types="@types/pg"
import type pg from "pg";
import { AttemptRunner } from "./attempt.ts";
import {
  batchInfo,
  type BatchOptions,
  type BatchQuery,
  type BatchResult,
  checkBatchOptions,
  runBatch,
} from "./batch.ts";
import type { Component } from "./component.ts";
import { type ClusterConfig, resolveConfig, type ResolvedConfig } from "./config.ts";
import { boundExecutor, currentExecutor } from "./context.ts";
import { checkCopyArgs, copyIn, copyInfo, type CopyOptions, type CopyRows } from "./copy.ts";
import { type Dispatcher, noPrimary, onPinned, pin, routed } from "./dispatch.ts";
import { ClusterClosedError, type DbxError, handleError, NoRowsError } from "./errors.ts";
import type { CommandResult, Executor, QueryOptions, ReadOptions, Row, Tx } from "./executor.ts";
import { isConnectionError } from "./failure.ts";
import { HealthChecker } from "./health.ts";
import { Node } from "./node.ts";
import { Observer } from "./observe.ts";
import { backoffDelay, delay } from "./retry.ts";
import { beginStatement, runTransaction, type RunTxOptions, type TxOptions } from "./run_tx.ts";
import { withCall } from "./signal.ts";
import { buildHealth, buildStats, type ClusterStats, type HealthReport } from "./stats.ts";
import { Savepoint, Transaction } from "./tx.ts";
import { checkCallOptions, checkStatement } from "./validate.ts";

/** Grace given to running statements by close() before their connections are cut. */
const CLOSE_GRACE_MS = 5_000;

const commandResult = (r: pg.QueryResult): CommandResult => ({
  command: r.command,
  rowCount: r.rowCount ?? 0,
});

function firstRow<T>(rows: unknown[]): T {
  if (rows.length === 0) throw new NoRowsError();
  return rows[0] as T;
}

/**
 * A primary and its read replicas behind one {@linkcode Executor}. Create it
 * with {@linkcode connect}; dispose of it with `await using` or `close()`.
 *
 * @example Route writes and reads
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app"],
 * });
 * await cluster.exec("insert into events(kind) values ($1)", ["login"]);
 * const recent = await cluster.readQuery<{ kind: string }>("select kind from events limit 10");
 * ```
 */
export class Cluster implements Component, AsyncDisposable {
  readonly #config: ResolvedConfig;
  readonly #nodes: readonly Node[];
  readonly #checker: HealthChecker;
  readonly #d: Dispatcher;
  #started: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  /**
   * Builds the cluster without connecting. Use {@linkcode connect}, which
   * also verifies the primary and starts the health checker.
   *
   * @param config A config; validated here.
   * @throws {ConfigError} when a setting is invalid.
   */
  constructor(config: ClusterConfig) {
    const resolved = this.#config = resolveConfig(config);
    const observer = new Observer(resolved.logger, resolved.metrics, resolved.slowQueryThresholdMs);
    const nodes = this.#nodes = resolved.nodes.map((n) =>
      new Node(n, (node, err) => {
        // An idle connection died: the pool already dropped it. Take the node
        // out of rotation only if the server itself is gone; the probe decides.
        observer.log("debug", "dbx: idle connection lost", { node: node.name, error: err.message });
        if (isConnectionError(err)) checker.recheck(node);
      })
    );
    const checker = this.#checker = new HealthChecker(nodes, resolved.healthCheck, observer);
    const runner = new AttemptRunner(observer, (node, err) => checker.markDown(node, err));
    this.#d = { config: resolved, nodes, checker, runner, observer };
  }

  /**
   * Verifies that a primary answers (probing every node, with retry and
   * backoff) and starts the background health checker. `connect()` calls it;
   * calling it again returns the same promise.
   *
   * @returns Resolves when a primary has answered.
   * @throws {NoHealthyNodeError} when no node reported primary after every attempt.
   */
  start(): Promise<void> {
    if (this.#closing !== undefined) return Promise.reject(new ClusterClosedError());
    return this.#started ??= this.#start();
  }

  async #start(): Promise<void> {
    const { maxAttempts, baseDelayMs, maxDelayMs } = this.#config.retry;
    for (let attempt = 1;; attempt++) {
      await this.#checker.checkAll();
      if (this.#closing !== undefined) throw new ClusterClosedError();
      const topology = this.#checker.topology;
      if (topology.primary?.state.probe !== undefined) break;
      if (attempt >= maxAttempts) throw noPrimary(this.#d, topology);
      await delay(backoffDelay(attempt, { baseDelayMs, maxDelayMs }));
    }
    this.#checker.start();
  }

  /**
   * Stops the cluster: the same as {@linkcode close} (the `Component` contract).
   *
   * @returns Resolves when everything is closed.
   */
  stop(): Promise<void> {
    return this.close();
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
    const tx = this.#ambient();
    if (tx !== undefined) return tx.exec(sql, args, options);
    return commandResult(await this.#statement("exec", false, sql, args, options));
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
    const tx = this.#ambient();
    if (tx !== undefined) return tx.query<T>(sql, args, options);
    return (await this.#statement("query", false, sql, args, options)).rows as T[];
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
    const tx = this.#ambient();
    if (tx !== undefined) return tx.queryRow<T>(sql, args, options);
    return firstRow<T>((await this.#statement("queryRow", false, sql, args, options)).rows);
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
    const tx = this.#ambient();
    if (tx !== undefined) return tx.readQuery<T>(sql, args, options);
    return (await this.#statement("readQuery", true, sql, args, options)).rows as T[];
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
    const tx = this.#ambient();
    if (tx !== undefined) return tx.readQueryRow<T>(sql, args, options);
    return firstRow<T>((await this.#statement("readQueryRow", true, sql, args, options)).rows);
  }

  /**
   * Opens a transaction on one pinned primary connection. Acquiring the
   * connection and sending BEGIN are retried like a read (BEGIN alone
   * changes nothing); statements inside the transaction are never retried.
   *
   * @param options Isolation level, read-only, deferrable; `signal` / `timeoutMs` bound opening it.
   * @returns The open transaction; commit or roll it back, or dispose of it
   * (`await using`) to roll back.
   * @throws {RangeError} for an unknown isolation level.
   * @throws {DbxError} when no primary could be reached.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * await using tx = await cluster.begin({ isolation: "repeatable read" });
   * const { n } = await tx.queryRow<{ n: number }>("select count(*)::int as n from orders");
   * await tx.exec("insert into order_counts(n) values ($1)", [n]);
   * await tx.commit();
   * ```
   */
  async begin(options?: TxOptions): Promise<Tx> {
    this.#assertOpen();
    const sql = beginStatement("begin", options);
    return await withCall(options, (signal) => this.#open(sql, undefined, signal));
  }

  /** Opens a transaction; `txSignal` (runTx's) cancels its statements. */
  async #open(
    sql: string,
    txSignal: AbortSignal | undefined,
    signal: AbortSignal | undefined,
  ): Promise<Transaction> {
    const { node, client } = await pin(this.#d, sql, signal);
    return new Transaction(this, node, client, this.#d.runner, txSignal);
  }

  /**
   * Runs `fn` in a transaction on the primary: commits when it returns, rolls
   * back when it throws and re-throws the original error (a failed rollback
   * is attached as its `cause` when it has none). The transaction is bound
   * to the async context, so `getExecutor()` inside `fn` returns it. Called
   * inside another `runTx` of this cluster, `fn` runs in a savepoint.
   * With `retries`, the whole callback is re-run after a serialization
   * failure (40001) or deadlock (40P01), with backoff.
   *
   * @param fn The transaction body.
   * @param options Isolation level, read-only, deferrable, retries; `signal` / `timeoutMs`
   * bound the whole call (a running statement is cancelled on the server).
   * @returns What `fn` returned.
   * @throws Whatever `fn` threw, or the commit's error.
   * @throws {TypeError} when nested with options a savepoint cannot have (`isolation`, `readOnly`, `deferrable`).
   *
   * @example Transfer money atomically
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * await cluster.runTx(async (tx) => {
   *   await tx.exec("update accounts set balance = balance - $1 where id = $2", [10, 1]);
   *   await tx.exec("update accounts set balance = balance + $1 where id = $2", [10, 2]);
   * }, { isolation: "serializable", retries: 3 });
   * ```
   */
  runTx<T>(fn: (tx: Tx) => Promise<T>, options?: RunTxOptions): Promise<T> {
    try {
      this.#assertOpen();
    } catch (err) {
      return Promise.reject(err);
    }
    const { baseDelayMs, maxDelayMs } = this.#config.retry;
    const observer = this.#d.observer;
    return runTransaction(
      {
        open: (opts, signal) => this.#open(beginStatement("runTx", opts), signal, signal),
        retried: (tx, attempt, error) => {
          tx.node.attemptRetried();
          observer.log("debug", "dbx: retrying the transaction", {
            attempt,
            node: tx.node.name,
            error: error instanceof Error ? error.message : String(error),
          });
          observer.hook("onRetry", { attempt, node: tx.node.name, delayMs: 0, error });
        },
        backoff: { baseDelayMs, maxDelayMs },
      },
      fn,
      options,
      this.#ambient(),
    );
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
    const tx = this.#ambient();
    if (tx !== undefined) return tx.copyFrom(table, columns, rows, options);
    this.#assertOpen();
    checkCopyArgs("copyFrom", table, columns, rows);
    checkCallOptions("copyFrom", options);
    return await withCall(
      options,
      (signal) =>
        onPinned(
          this.#d,
          copyInfo(table),
          signal,
          ({ client }) => copyIn(client, table, columns, rows, signal),
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
    const tx = this.#ambient();
    if (tx !== undefined) return tx.sendBatch(queries, options as BatchOptions & { atomic?: true });
    this.#assertOpen();
    const atomic = checkBatchOptions(queries, options);
    if (queries.length === 0) return [];
    return await withCall(
      options,
      (signal) =>
        onPinned(
          this.#d,
          batchInfo(queries),
          signal,
          ({ node, client }) =>
            runBatch(client, node, signal, queries, { atomic, inTransaction: false }),
        ),
    );
  }

  /**
   * A read-your-writes token: the primary's current WAL position. Pass it as
   * `consistentWith` to a later read (in this process or another one, e.g.
   * carried in a cookie or a response header) and that read only uses
   * replicas that have replayed at least this far, else the primary. Take it
   * after the write (or `runTx`) has returned.
   *
   * @param options Cancellation and deadline.
   * @returns An opaque token (today the LSN text, e.g. `"0/3000148"`).
   * @throws {DbxError} when the primary cannot be reached.
   *
   * @example Read your own write from a replica
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({
   *   master: "postgres://app@db1:5432/app",
   *   replicas: ["postgres://app@db2:5432/app"],
   * });
   * await cluster.runTx((tx) => tx.exec("update users set name = $1 where id = $2", ["Ada", 1]));
   * const token = await cluster.writeToken();
   * const [user] = await cluster.readQuery("select name from users where id = $1", [1], {
   *   consistentWith: token,
   * });
   * ```
   */
  async writeToken(options?: QueryOptions): Promise<string> {
    const row = await this.queryRow<{ lsn: string }>(
      "select pg_current_wal_lsn()::text as lsn",
      undefined,
      options,
    );
    return row.lsn;
  }

  /**
   * An {@linkcode Executor} pinned to one node, whatever its role or health:
   * for administration, diagnostics or tests (`select pg_is_in_recovery()`
   * on a given replica). Statements are counted and observed like any other,
   * but never routed elsewhere and never retried.
   *
   * @param name The node's name, as in `stats()` (e.g. `"db2:5432"` or its `NodeConfig.name`).
   * @returns An executor for that node.
   * @throws {RangeError} when no node has that name (the message lists them).
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({
   *   master: "postgres://app@db1:5432/app",
   *   replicas: [{ name: "replica-a", url: "postgres://app@db2:5432/app" }],
   * });
   * const { r } = await cluster.node("replica-a").queryRow<{ r: boolean }>(
   *   "select pg_is_in_recovery() as r",
   * );
   * ```
   */
  node(name: string): Executor {
    const node = this.#nodes.find((n) => n.name === name);
    if (node === undefined) {
      throw new RangeError(
        `Cannot get node() as 'name' must be one of ${
          this.#nodes.map((n) => JSON.stringify(n.name)).join(", ")
        }: current value is ${JSON.stringify(name)}`,
      );
    }
    const run = (method: string, sql: string, args?: readonly unknown[], options?: QueryOptions) =>
      this.#once(node, method, sql, args, options);
    return {
      exec: async (sql, args, options) => commandResult(await run("exec", sql, args, options)),
      query: async <T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions) =>
        (await run("query", sql, args, options)).rows as T[],
      queryRow: async <T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions) =>
        firstRow<T>((await run("queryRow", sql, args, options)).rows),
    };
  }

  /**
   * The executor bound to the current async context by the innermost
   * `runTx` / `withExecutor`, else this cluster.
   *
   * @returns The bound transaction or the cluster.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * await cluster.getExecutor().exec("select 1");
   * ```
   */
  getExecutor(): Executor {
    return currentExecutor(this);
  }

  /**
   * Normalises any error into a {@linkcode DbxError} (errors dbx threw are
   * returned as they are).
   *
   * @param err Any thrown value.
   * @returns A DbxError with `code`, `kind` and `cause`.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * try {
   *   await cluster.exec("insert into users(email) values ($1)", ["a@b.c"]);
   * } catch (err) {
   *   if (cluster.handleError(err).kind === "unique_violation") console.log("taken");
   * }
   * ```
   */
  handleError(err: unknown): DbxError {
    return handleError(err);
  }

  /**
   * Runs `select 1` on every node, healthy or not (no retry).
   *
   * @param options Cancellation and deadline.
   * @returns Resolves when every node answered.
   * @throws {AggregateError} naming each failed node, its errors in `errors`.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * await cluster.ping();
   * ```
   */
  async ping(options?: QueryOptions): Promise<void> {
    this.#assertOpen();
    const results = await Promise.allSettled(
      this.#nodes.map((n) => this.#once(n, "ping", "select 1", undefined, options)),
    );
    const failed = results.flatMap((r) => r.status === "rejected" ? [r.reason as DbxError] : []);
    if (failed.length > 0) {
      throw new AggregateError(
        failed,
        `ping failed on ${failed.length} of ${this.#nodes.length} nodes: ${
          failed.map((e) => `${e.node} (${(e.cause as Error | undefined)?.message ?? e.message})`)
            .join(", ")
        }`,
      );
    }
  }

  /**
   * A snapshot of every node's pool and counters.
   *
   * @returns Per-node stats and totals.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * console.log(cluster.stats().totals.queries);
   * ```
   */
  stats(): ClusterStats {
    return buildStats(this.#nodes);
  }

  /**
   * Probes every node now and reports role, health, latency and replica lag,
   * for readiness endpoints.
   *
   * @param options Cancellation and deadline for the probe round.
   * @returns The report.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * const report = await cluster.health();
   * console.log(report.writable, report.nodes.map((n) => `${n.name}:${n.healthy}`));
   * ```
   */
  async health(options?: QueryOptions): Promise<HealthReport> {
    this.#assertOpen();
    checkCallOptions("health", options);
    await withCall(options, (signal) => {
      const round = this.#checker.checkAll();
      if (signal === undefined) return round;
      signal.throwIfAborted();
      return new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
        round.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
      });
    });
    return buildHealth(this.#nodes, this.#checker.topology);
  }

  /**
   * Stops the health checker, lets running statements finish (up to a 5 s
   * grace, then cuts their connections) and ends every pool. Every call
   * returns the same promise; any other method called afterwards throws
   * {@linkcode ClusterClosedError}.
   *
   * @returns Resolves when nothing is left running.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * const cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * await cluster.close();
   * await cluster.close(); // same promise, resolves again
   * ```
   */
  close(): Promise<void> {
    return this.#closing ??= this.#close();
  }

  async #close(): Promise<void> {
    // A start() in progress sees #closing and gives up; wait for it so its
    // probes are not cut mid-flight by a half-closed checker.
    await this.#started?.catch(() => {});
    await this.#checker.stop();
    await Promise.all(this.#nodes.map((n) => n.end(CLOSE_GRACE_MS)));
  }

  /** Same as {@linkcode close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #assertOpen(): void {
    if (this.#closing !== undefined) throw new ClusterClosedError();
  }

  /** The transaction of this cluster bound to the async context, if any is active. */
  #ambient(): Transaction | Savepoint | undefined {
    const bound = boundExecutor();
    if (bound === undefined) return undefined;
    if (!(bound instanceof Transaction || bound instanceof Savepoint)) return undefined;
    return bound.root.owner === this && bound.active ? bound : undefined;
  }

  /** A routed statement: checked, within the call's signal, through the statement path. */
  #statement(
    method: string,
    read: boolean,
    sql: string,
    args: readonly unknown[] | undefined,
    options: ReadOptions | undefined,
  ): Promise<pg.QueryResult> {
    try {
      this.#assertOpen();
      checkStatement(method, sql, args);
      checkCallOptions(method, options);
    } catch (err) {
      return Promise.reject(err);
    }
    return withCall(options, (signal) => routed(this.#d, read, sql, args, options, signal));
  }

  /** One attempt on one node, whatever its role or health: no routing, no retry. */
  #once(
    node: Node,
    method: string,
    sql: string,
    args: readonly unknown[] | undefined,
    options: QueryOptions | undefined,
  ): Promise<pg.QueryResult> {
    try {
      this.#assertOpen();
      checkStatement(method, sql, args);
      checkCallOptions(method, options);
    } catch (err) {
      return Promise.reject(err);
    }
    const info = { sql, argCount: args?.length ?? 0, attempt: 1 };
    return withCall(
      options,
      (signal) => this.#d.runner.run(node, info, signal, () => node.run(sql, args, signal)),
    );
  }
}

/**
 * Creates a {@linkcode Cluster}: validates the config eagerly, creates one
 * pool per node, verifies that a primary answers (with retry) and starts the
 * background health checker.
 *
 * @param config Nodes, pool, retry, health-check and observability settings.
 * @returns A connected cluster; dispose of it with `await using` or `close()`.
 * @throws {ConfigError} naming the invalid field and value.
 * @throws {NoHealthyNodeError} when no node reports primary after every attempt.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app", { name: "db3", url: "postgres://app@db3:5432/app" }],
 *   pool: { max: 20 },
 *   retry: { maxAttempts: 4 },
 * });
 * ```
 */
export async function connect(config: ClusterConfig): Promise<Cluster> {
  const cluster = new Cluster(config);
  try {
    await cluster.start();
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return cluster;
}
