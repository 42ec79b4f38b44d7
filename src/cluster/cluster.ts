/**
 * {@linkcode Cluster}, the public face of a cluster: every method is a short
 * delegation to its private core (`core.ts`) or to the module that
 * implements it (`call/`, `tx/`, `listen/`, `compat/`).
 *
 * @module
 */

import { type ConnectionOptions, withConnection } from "../call/connection.ts";
import { runSession, type Session, type SessionOptions } from "../call/session.ts";
import { createPgPool, type PgPool, type PgPoolOptions } from "../compat/pg_pool.ts";
import type { ClusterConfig } from "../config/config.ts";
import { type DbxError, handleError } from "../errors.ts";
import type { CommandResult, Executor, QueryOptions, ReadOptions, Row, Tx } from "../executor.ts";
import { rowOf, rowsOf, toCommandResult } from "../executor.ts";
import type { ListenOptions, NotificationHandler, Subscription } from "../listen/listen.ts";
import { listen, notify } from "../listen/listen.ts";
import * as changes from "../listen/subscribe.ts";
import type { BatchOptions, BatchQuery, BatchResult } from "../tx/batch.ts";
import type { CopyOptions, CopyRows } from "../tx/copy.ts";
import type { RunTxOptions, TxOptions } from "../tx/run_tx.ts";
import { type ReadStreamOptions, stream, type StreamOptions } from "../tx/stream.ts";
import type { Component } from "./component.ts";
import { currentExecutor } from "./context.ts";
import { ClusterCore } from "./core.ts";
import type { ClusterStats, HealthReport } from "./stats.ts";

/** Reads a cluster's core; set once by `Cluster`'s static block. */
let coreOf: (cluster: Cluster) => ClusterCore;

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
export class Cluster implements Executor, Component, AsyncDisposable {
  readonly #core: ClusterCore;

  static {
    coreOf = (cluster) => cluster.#core;
  }

  /**
   * Builds the cluster without connecting; {@linkcode connect} also verifies
   * the primary and starts the health checker.
   *
   * @param config A config, or a (multi-host) connection string; validated here.
   * @throws {ConfigError} when a setting is invalid.
   */
  constructor(config: ClusterConfig | string) {
    this.#core = new ClusterCore(this, config);
  }

  /**
   * Verifies that a primary answers (probing every node, with retry and
   * backoff) and starts the health checker; `connect()` calls it, again is the same promise.
   *
   * @returns Resolves when a primary (or, by config, a replica or any node) answered.
   * @throws {NoHealthyNodeError} when no node qualified after every attempt, naming each and why.
   * @throws {DbxError} (not retryable) at once when every node refused for a reason no retry fixes.
   */
  start(): Promise<void> {
    return this.#core.start();
  }

  /** Same as {@linkcode close} (the `Component` contract). */
  stop(): Promise<void> {
    return this.#core.close("stop()");
  }

  /**
   * Stops the checker, lets running statements finish (5 s grace, then cuts
   * them) and ends every pool. Every call returns the same promise; other
   * methods then throw {@linkcode ClusterClosedError}.
   *
   * @returns Resolves when nothing is left running.
   */
  close(): Promise<void> {
    return this.#core.close("close()");
  }

  /** Same as {@linkcode close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.#core.close("await using");
  }

  /**
   * Runs a statement on the primary for its effect (in the ambient `runTx`
   * when there is one); re-sent only when it provably never reached a server.
   *
   * @param sql Statement text with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options Cancellation and deadline.
   * @returns The command tag and row count.
   * @throws {DbxError} on failure (see `kind`); {@linkcode RetryExhaustedError} when retries ran out.
   */
  exec(sql: string, args?: readonly unknown[], options?: QueryOptions): Promise<CommandResult> {
    return this.#core.statement("exec", false, sql, args, options, toCommandResult);
  }

  /**
   * Like {@linkcode exec}, returning the rows.
   *
   * @returns Every row, in order.
   */
  query<T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions): Promise<T[]> {
    return this.#core.statement("query", false, sql, args, options, rowsOf<T>);
  }

  /**
   * Like {@linkcode exec}, returning the first row.
   *
   * @returns The first row.
   * @throws {NoRowsError} when there is none.
   */
  queryRow<T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions): Promise<T> {
    return this.#core.statement("queryRow", false, sql, args, options, rowOf<T>);
  }

  /**
   * Runs a read on a healthy replica (by the balancer, within `maxLagMs`
   * and `consistentWith`), else the primary; retried on another node after
   * a connection failure.
   *
   * @param sql Statement text.
   * @param args Values for the placeholders.
   * @param options Cancellation, deadline, lag bound and read-your-writes token.
   * @returns Every row, in order.
   */
  readQuery<T = Row>(sql: string, args?: readonly unknown[], options?: ReadOptions): Promise<T[]> {
    return this.#core.statement("readQuery", true, sql, args, options, rowsOf<T>);
  }

  /**
   * Like {@linkcode readQuery}, returning the first row.
   *
   * @returns The first row.
   * @throws {NoRowsError} when there is none.
   */
  readQueryRow<T = Row>(sql: string, args?: readonly unknown[], options?: ReadOptions): Promise<T> {
    return this.#core.statement("readQueryRow", true, sql, args, options, rowOf<T>);
  }

  /**
   * Streams rows into a table with `COPY … FROM STDIN` on the primary, with
   * back-pressure; a bad row or an abort keeps nothing. Never re-sent.
   *
   * @param table Table name, optionally schema-qualified.
   * @param columns Column names, in the order of each row's values.
   * @param rows Arrays of values, from a sync or async iterable.
   * @param options Cancellation and deadline.
   * @returns Number of rows copied.
   */
  copyFrom(
    table: string,
    columns: readonly string[],
    rows: CopyRows,
    options?: CopyOptions,
  ): Promise<number> {
    return this.#core.copyFrom(table, columns, rows, options);
  }

  /**
   * Sends statements pipelined on one primary connection, in one
   * transaction: a failure rolls all back and rejects with `batchIndex`.
   *
   * @param queries The statements, in order.
   * @param options `atomic` (default `true`), `signal`, `timeoutMs`.
   * @returns One result per statement.
   * @throws {BatchError} when a statement fails.
   */
  sendBatch(
    queries: readonly BatchQuery[],
    options?: BatchOptions & { atomic?: true | undefined },
  ): Promise<BatchResult[]>;
  /** Like the above with `{ atomic: false }`: each statement on its own, one settled result each. */
  sendBatch(
    queries: readonly BatchQuery[],
    options: BatchOptions & { atomic: false },
  ): Promise<PromiseSettledResult<BatchResult>[]>;
  sendBatch(
    queries: readonly BatchQuery[],
    options?: BatchOptions,
  ): Promise<BatchResult[] | PromiseSettledResult<BatchResult>[]> {
    return this.#core.sendBatch(queries, options);
  }

  /**
   * Opens a transaction on a primary connection of its own (opening it is
   * retried; its statements never are). Dispose of it to roll back.
   *
   * @param options Isolation, read-only, deferrable; `signal` / `timeoutMs` bound opening it.
   * @returns The open transaction.
   */
  begin(options?: TxOptions): Promise<Tx> {
    return this.#core.begin(options);
  }

  /**
   * Runs `fn` in a transaction on the primary, bound to the async context
   * (the cluster's methods below `fn` join it; a nested `runTx` is a
   * savepoint): commits when it returns, rolls back and re-throws when it
   * throws. `retries` re-runs the whole callback on 40001 / 40P01.
   *
   * @param fn The transaction body.
   * @param options Isolation, read-only, deferrable, retries, `signal`, `timeoutMs`.
   * @returns What `fn` returned.
   * @throws Whatever `fn` threw, or the commit's error.
   */
  runTx<T>(fn: (tx: Tx) => Promise<T>, options?: RunTxOptions): Promise<T> {
    return this.#core.runTx(fn, options);
  }

  /**
   * Runs `fn` on one connection of its own, for work that needs a session
   * (advisory locks, temporary tables, `SET`), which shared paths refuse.
   * Afterwards the connection is reset (`DISCARD ALL`), or destroyed if
   * anything is left running or open. Taking it is retried; statements are not.
   *
   * @param fn The work; `conn` runs its statements on the one connection.
   * @param options `route` (`"primary"` or `"replica"`), `signal`, `timeoutMs` for the whole call.
   * @returns What `fn` returned.
   * @throws {RangeError} for an unknown route.
   *
   * @example A session advisory lock around a job
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * await cluster.withConnection(async (conn) => {
   *   await conn.queryRow("select pg_advisory_lock($1)", [42]);
   *   await conn.exec("refresh materialized view daily_totals");
   * });
   * ```
   */
  withConnection<T>(fn: (conn: Executor) => Promise<T>, options?: ConnectionOptions): Promise<T> {
    return withConnection(this.#core.d, fn, options);
  }

  /**
   * Runs `fn` in a read-your-writes session: after a write in it, its
   * `read*` calls use only replicas known to have replayed that write, else
   * the primary (as `withSession()` does). Sessions hold no connection.
   *
   * @param fn The code to run (a request handler, a job).
   * @param options A token (`writeToken()`, `session.token()`) to start from.
   * @returns What `fn` returned.
   */
  session<T>(fn: (session: Session) => T, options?: SessionOptions): T {
    return runSession(this.#core.d.sessions, fn, options);
  }

  /**
   * A read-your-writes token: the primary's current WAL position, for a
   * later read's `consistentWith` (here or in another process).
   *
   * @param options Cancellation and deadline.
   * @returns The token, e.g. `"0/3000148"`.
   */
  async writeToken(options?: QueryOptions): Promise<string> {
    const sql = "select pg_current_wal_lsn()::text as lsn";
    return (await this.queryRow<{ lsn: string }>(sql, undefined, options)).lsn;
  }

  /**
   * Streams a query's rows through a cursor on the primary (in the ambient
   * transaction, or one of its own), `batchSize` rows per round trip.
   *
   * @param options `batchSize`, `signal`, `timeoutMs`.
   * @returns The rows, one at a time; leaving the loop early closes the cursor.
   */
  stream<T = Row>(
    sql: string,
    args?: readonly unknown[],
    options?: StreamOptions,
  ): AsyncIterable<T> {
    return stream<T>(this.#core, false, sql, args, options);
  }

  /** Like {@linkcode stream}, on a replica chosen as for `readQuery`: rows one at a time. */
  readStream<T = Row>(
    sql: string,
    args?: readonly unknown[],
    options?: ReadStreamOptions,
  ): AsyncIterable<T> {
    return stream<T>(this.#core, true, sql, args, options);
  }

  /**
   * Listens on `channel` on a dedicated primary connection that follows
   * failovers (re-issuing LISTEN and reporting the gap to `onReconnect`).
   *
   * @param channel The channel (quoted).
   * @param handler Called with each payload; a throw is logged.
   * @param options `onReconnect`, `signal` (ends it), `timeoutMs` (the first LISTEN).
   * @returns The subscription; end it with `await using` or `unlisten()`.
   */
  listen(
    channel: string,
    handler: NotificationHandler,
    options?: ListenOptions,
  ): Promise<Subscription> {
    return listen(this.#core, channel, handler, options);
  }

  /**
   * Streams `publication`'s changes (PostgreSQL 17+) to `handler` in commit order, at least
   * once, across failovers; checks the servers first (see {@linkcode changes.ChangeSubscription}).
   */
  subscribe(
    publication: string,
    handler: changes.ChangeHandler,
    options: changes.SubscribeOptions,
  ): Promise<changes.ChangeSubscription> {
    return changes.subscribe(this.#core, publication, handler, options);
  }

  /** `pg_notify(channel, payload)` on the primary, or in the ambient transaction. */
  notify(channel: string, payload: string, options?: QueryOptions): Promise<void> {
    return notify(this.#core, channel, payload, options);
  }

  /**
   * A `pg.Pool` (`instanceof pg.Pool`) over this cluster for Drizzle,
   * Prisma's `PrismaPg` and Kysely: `query()` routed by `route` and
   * retried, `connect()` leases a connection; both join the ambient `runTx`.
   * A `query()` that changes session state (`SET`, ...) pins that facade to
   * one connection of its own until its `end()`, like a single `pg.Client`.
   *
   * @param options `route`: `"primary"` (the default) or `"replica"`.
   * @returns The pool facade; its `end()` leaves the cluster open.
   */
  pgPool(options?: PgPoolOptions): PgPool {
    return createPgPool(this.#core, options);
  }

  /** The executor of the async context: the ambient transaction, else this cluster. */
  getExecutor(): Executor {
    return currentExecutor(this);
  }

  /**
   * An {@linkcode Executor} on one node whatever its role or health, never
   * routed elsewhere nor retried (administration, diagnostics, tests).
   *
   * @param name The node's name, as in `stats()`.
   * @throws {RangeError} when no node has that name (the message lists them).
   */
  node(name: string): Executor {
    return this.#core.node(name);
  }

  /**
   * Runs `select 1` on every node, healthy or not (no retry).
   *
   * @param options Cancellation and deadline.
   * @throws {AggregateError} naming each failed node.
   */
  ping(options?: QueryOptions): Promise<void> {
    return this.#core.ping(options);
  }

  /** Probes every node now (`options`: signal, deadline): role, health, latency and lag. */
  health(options?: QueryOptions): Promise<HealthReport> {
    return this.#core.health(options);
  }

  /** A snapshot of every node's pool and counters: per-node stats and totals. */
  stats(): ClusterStats {
    return this.#core.stats();
  }

  /** Any thrown value as a {@linkcode DbxError} (`code`, `kind`, `cause`); dbx's own as is. */
  handleError(err: unknown): DbxError {
    return handleError(err);
  }
}

/**
 * The core of a cluster, for the one adapter built from a `Cluster` rather
 * than by it (the Kysely dialect: `dbxDialect(cluster)`). Internal.
 */
export function clusterCore(cluster: Cluster): ClusterCore {
  if (!(cluster instanceof Cluster)) {
    throw new TypeError("Cannot use the cluster as it is not a Cluster from connect()");
  }
  return coreOf(cluster);
}
