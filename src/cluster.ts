/**
 * The {@linkcode Cluster}: one object in front of a primary and its read
 * replicas. This file is where every public method is routed, retried and
 * observed.
 *
 * Routing is by method, never by parsing SQL: `exec`, `query` and
 * `queryRow` go to the node that currently *is* primary; `readQuery` and
 * `readQueryRow` go to a healthy replica chosen by the balancer and fall
 * back to the primary.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { boundExecutor, currentExecutor } from "./context.ts";
import { type ClusterConfig, resolveConfig, type ResolvedConfig } from "./config.ts";
import {
  ClusterClosedError,
  DbxError,
  handleError,
  isConnectionError,
  NoHealthyNodeError,
  NoRowsError,
  pgErrorCode,
  RetryExhaustedError,
} from "./errors.ts";
import type { Component } from "./component.ts";
import {
  checkStatement,
  type CommandResult,
  type Executor,
  type QueryOptions,
  type ReadOptions,
  type Row,
} from "./executor.ts";
import { HealthChecker, parseLsn, type Topology } from "./health.ts";
import {
  type BatchOptions,
  type BatchQuery,
  type BatchResult,
  checkBatch,
  runBatch,
} from "./batch.ts";
import { checkCopyArgs, copyIn, type CopyRows } from "./copy.ts";
import { Node, wasNotSent } from "./node.ts";
import { callHook, type NodeRole, type QueryEvent } from "./observe.ts";
import { backoffDelay, CallSignal, delay } from "./retry.ts";
import {
  beginStatement,
  runTransaction,
  type RunTxOptions,
  Savepoint,
  Transaction,
  type Tx,
  type TxOptions,
  type TxRunner,
} from "./tx.ts";

/**
 * Counters and pool numbers of one node. A plain snapshot.
 *
 * @example
 * ```ts
 * import { connect, type NodeStats } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const saturated = (n: NodeStats) => n.waitingClients > 0 && n.idleConns === 0;
 * console.log(cluster.stats().nodes.filter(saturated).map((n) => n.name));
 * ```
 */
export interface NodeStats {
  /** Node name (never contains a password). */
  readonly name: string;
  /** Role as last reported by the server. */
  readonly role: NodeRole;
  /** Whether queries are routed to it. */
  readonly healthy: boolean;
  /** Open connections in its pool. */
  readonly totalConns: number;
  /** Open connections not in use. */
  readonly idleConns: number;
  /** Callers waiting for a connection. */
  readonly waitingClients: number;
  /** Pool size limit. */
  readonly maxConns: number;
  /** Attempts started on this node. */
  readonly queries: number;
  /** Attempts that failed on this node. */
  readonly errors: number;
  /** Failed attempts on this node that were retried (here or elsewhere). */
  readonly retries: number;
  /** Statements running on this node now. */
  readonly inFlight: number;
  /** Median attempt duration over the last 1024 attempts, in ms (absent before any). */
  readonly latencyP50Ms?: number;
  /** 99th percentile attempt duration over the last 1024 attempts, in ms. */
  readonly latencyP99Ms?: number;
}

/**
 * {@linkcode Cluster.stats} result: one entry per node plus sums.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const { nodes, totals } = cluster.stats();
 * console.log(totals.inFlight, nodes.map((n) => `${n.name} ${n.role} p99=${n.latencyP99Ms}`));
 * ```
 */
export interface ClusterStats {
  /** Per node, config order (master first). */
  readonly nodes: readonly NodeStats[];
  /** Sums over every node. */
  readonly totals: {
    readonly totalConns: number;
    readonly idleConns: number;
    readonly waitingClients: number;
    readonly maxConns: number;
    readonly queries: number;
    readonly errors: number;
    readonly retries: number;
    readonly inFlight: number;
  };
}

/**
 * One node in a {@linkcode HealthReport}.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * for (const n of (await cluster.health()).nodes) console.log(n.name, n.healthy, n.lagMs ?? "-");
 * ```
 */
export interface NodeHealth {
  /** Node name. */
  readonly name: string;
  /** Role the server reported. */
  readonly role: NodeRole;
  /** Whether queries are routed to it. */
  readonly healthy: boolean;
  /** Round trip of the last probe, in ms. */
  readonly latencyMs?: number;
  /** Replica: how far replay is behind, in ms (0 when caught up). */
  readonly lagMs?: number;
  /** Replica: WAL bytes between the primary's position and the replica's replay position. */
  readonly lagBytes?: number;
  /** Why the node is down. */
  readonly error?: string;
}

/**
 * {@linkcode Cluster.health} result, for readiness endpoints.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const report = await cluster.health();
 * const status = report.writable ? 200 : 503;
 * ```
 */
export interface HealthReport {
  /** `true` when a single healthy primary accepts writes. */
  readonly writable: boolean;
  /** Per node, config order. */
  readonly nodes: readonly NodeHealth[];
}

/** What a call does, for routing and for the retry contract. */
const enum Route {
  /** A `read*` method: any healthy replica, then the primary; may be re-sent. */
  Read,
  /** A write method: the primary; re-sent only when it provably never arrived. */
  Write,
  /** `begin()`: the primary; BEGIN alone changes nothing, so it may be re-sent. */
  Begin,
  /** A pinned connection to the primary with nothing sent yet (COPY, batches). */
  Acquire,
}

/** A connection taken for `begin()`, `copyFrom()` or `sendBatch()`. */
interface Pinned {
  readonly node: Node;
  readonly client: pg.PoolClient;
}

/** Grace given to running statements by close() before their connections are cut. */
const CLOSE_GRACE_MS = 5_000;

/** Longest SQL text put in a log entry. */
const LOG_SQL_MAX = 1_000;

function checkOptions(method: string, options: ReadOptions): void {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`Cannot run ${method}() as 'options' must be an object`);
  }
  const { signal, timeoutMs, maxLagMs, consistentWith } = options;
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError(`Cannot run ${method}() as 'options.signal' must be an AbortSignal`);
  }
  for (const [field, value] of [["timeoutMs", timeoutMs], ["maxLagMs", maxLagMs]] as const) {
    if (
      value !== undefined &&
      (typeof value !== "number" || !Number.isFinite(value) || value < 0 ||
        (field === "timeoutMs" && value === 0))
    ) {
      throw new RangeError(
        `Cannot run ${method}() as 'options.${field}' must be a ${
          field === "timeoutMs" ? "positive" : "non-negative"
        } finite number: current value is ${String(value)}`,
      );
    }
  }
  if (consistentWith !== undefined && parseLsn(consistentWith) === undefined) {
    throw new RangeError(
      `Cannot run ${method}() as 'options.consistentWith' must be a token from writeToken(): current value is ${
        JSON.stringify(consistentWith)
      }`,
    );
  }
}

const round2 = (ms: number) => Math.round(ms * 100) / 100;

function latencyOf(node: Node): { latencyP50Ms?: number; latencyP99Ms?: number } {
  const p = node.latencyPercentiles();
  return p === undefined ? {} : { latencyP50Ms: round2(p.p50), latencyP99Ms: round2(p.p99) };
}

function commandResult(r: pg.QueryResult): CommandResult {
  return { command: r.command, rowCount: r.rowCount ?? 0 };
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
  /** Whether any attempt hook, tracer or slow-query log is configured. */
  readonly #observed: boolean;
  #started: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  /** Runs a transaction's statements: counted, observed, errors wrapped. Made once. */
  readonly #txRunner: TxRunner = (node, client, sql, args, signal) =>
    this.#txStatement(node, client, sql, args, signal);

  /**
   * Builds the cluster without connecting. Use {@linkcode connect}, which
   * also verifies the primary and starts the health checker.
   *
   * @param config A config; validated here.
   * @throws {ConfigError} when a setting is invalid.
   */
  constructor(config: ClusterConfig) {
    this.#config = resolveConfig(config);
    const { logger, metrics } = this.#config;
    this.#nodes = this.#config.nodes.map((n) =>
      new Node(n, (node, err) => {
        // An idle connection died: the pool already dropped it. Take the node
        // out of rotation only if the server itself is gone; the probe decides.
        logger.debug("dbx: idle connection lost", { node: node.name, error: err.message });
        if (isConnectionError(err)) this.#checker.recheck(node);
      })
    );
    this.#checker = new HealthChecker(this.#nodes, {
      healthCheck: this.#config.healthCheck,
      logger,
      metrics,
    });
    this.#observed = this.#config.slowQueryThresholdMs !== undefined ||
      this.#nodes.some((n) => n.tracer !== undefined) ||
      metrics?.onQueryStart !== undefined || metrics?.onQueryEnd !== undefined;
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
      if (topology.primary?.lastProbe !== undefined) break;
      if (attempt >= maxAttempts) throw this.#noPrimary(topology);
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
    return commandResult(await this.#execute("exec", Route.Write, sql, args, options));
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
    return (await this.#execute("query", Route.Write, sql, args, options)).rows as T[];
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
    const { rows } = await this.#execute("queryRow", Route.Write, sql, args, options);
    if (rows.length === 0) throw new NoRowsError();
    return rows[0] as T;
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
    return (await this.#execute("readQuery", Route.Read, sql, args, options)).rows as T[];
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
    const { rows } = await this.#execute("readQueryRow", Route.Read, sql, args, options);
    if (rows.length === 0) throw new NoRowsError();
    return rows[0] as T;
  }

  /**
   * Opens a transaction on one pinned primary connection. Acquiring the
   * connection and sending BEGIN are retried like a read (BEGIN alone
   * changes nothing); statements inside the transaction are never retried.
   *
   * @param options Isolation level, read-only, deferrable.
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
    const pinned = await this.#withRetry(
      Route.Begin,
      sql,
      undefined,
      undefined,
      undefined,
    ) as Pinned;
    return new Transaction(this, pinned.node, pinned.client, this.#txRunner);
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
   * @param options Isolation level, read-only, deferrable, retries.
   * @returns What `fn` returned.
   * @throws Whatever `fn` threw, or the commit's error.
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
    const bound = boundExecutor();
    const root = bound instanceof Transaction || bound instanceof Savepoint
      ? bound.root
      : undefined;
    const parent = root !== undefined && root.owner === this && root.active ? root : undefined;
    const { baseDelayMs, maxDelayMs } = this.#config.retry;
    return runTransaction(this, fn, options, parent, { baseDelayMs, maxDelayMs });
  }

  async #txStatement(
    node: Node,
    client: pg.PoolClient,
    sql: string,
    args: readonly unknown[] | undefined,
    signal: AbortSignal | undefined,
  ): Promise<pg.QueryResult> {
    try {
      return await this.#attempt(node, client, sql, args, signal, 1);
    } catch (raw) {
      if (signal?.aborted) throw this.#aborted(signal.reason, undefined, raw, node);
      if (isConnectionError(raw)) this.#checker.markDown(node, raw);
      throw node.wrap(raw);
    }
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
  async copyFrom(table: string, columns: readonly string[], rows: CopyRows): Promise<number> {
    this.#assertOpen();
    checkCopyArgs("copyFrom", table, columns, rows);
    const { node, client } = await this.#withRetry(
      Route.Acquire,
      "",
      undefined,
      undefined,
      undefined,
    ) as Pinned;
    return await this.#onPinned(node, client, () => copyIn(client, table, columns, rows));
  }

  /**
   * Sends statements pipelined on one primary connection (one round trip).
   * Atomic by default: the batch runs in one transaction, and a failure
   * rolls everything back and rejects with that statement's `DbxError`,
   * its position in `batchIndex`. With `{ atomic: false }` each statement
   * runs on its own and the result is one settled result per statement.
   *
   * @param queries The statements, in order.
   * @param options `atomic` (default `true`).
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
    this.#assertOpen();
    checkBatch(queries);
    const atomic = options?.atomic ?? true;
    if (typeof atomic !== "boolean") {
      throw new TypeError(
        `Cannot run sendBatch() as 'options.atomic' must be a boolean: current value is ${atomic}`,
      );
    }
    if (queries.length === 0) return [];
    const { node, client } = await this.#withRetry(
      Route.Acquire,
      "",
      undefined,
      undefined,
      undefined,
    ) as Pinned;
    return await this.#onPinned(node, client, () => runBatch(client, queries, atomic, node.name));
  }

  /** Runs `work` on a pinned connection: counted, errors wrapped, connection handed back. */
  async #onPinned<R>(node: Node, client: pg.PoolClient, work: () => Promise<R>): Promise<R> {
    node.queries++;
    node.inFlight++;
    try {
      return await work();
    } catch (err) {
      node.errors++;
      if (isConnectionError(err)) this.#checker.markDown(node, err);
      // Server and connection errors get the node's name; the caller's own
      // errors (a throwing row source, a malformed row) pass through as they are.
      throw isConnectionError(err) || pgErrorCode(err) !== undefined ? node.wrap(err) : err;
    } finally {
      node.inFlight--;
      node.release(client);
    }
  }

  /**
   * A read-your-writes token: the primary's current WAL position. Pass it as
   * `consistentWith` to a later read (in this process or another one, e.g.
   * carried in a cookie or a response header) and that read only uses
   * replicas that have replayed at least this far, else the primary. Take it
   * after the write (or `runTx`) has returned.
   *
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
  async writeToken(): Promise<string> {
    const row = await this.queryRow<{ lsn: string }>("select pg_current_wal_lsn()::text as lsn");
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
    const run = async (
      method: string,
      sql: string,
      args: readonly unknown[] | undefined,
      options: QueryOptions | undefined,
    ): Promise<pg.QueryResult> => {
      this.#assertOpen();
      checkStatement(method, sql, args);
      const call = options?.signal !== undefined || options?.timeoutMs !== undefined
        ? (checkOptions(method, options), new CallSignal(options))
        : undefined;
      try {
        return await this.#attempt(node, undefined, sql, args, call?.signal, 1);
      } catch (raw) {
        if (call?.signal.aborted) throw this.#aborted(call.signal.reason, undefined, raw, node);
        if (isConnectionError(raw)) this.#checker.markDown(node, raw);
        throw node.wrap(raw);
      } finally {
        call?.dispose();
      }
    };
    return {
      exec: async (sql, args, options) => commandResult(await run("exec", sql, args, options)),
      query: async <T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions) =>
        (await run("query", sql, args, options)).rows as T[],
      queryRow: async <T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions) => {
        const { rows } = await run("queryRow", sql, args, options);
        if (rows.length === 0) throw new NoRowsError();
        return rows[0] as T;
      },
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
  async ping(): Promise<void> {
    this.#assertOpen();
    const results = await Promise.allSettled(this.#nodes.map((n) => n.run("select 1", undefined)));
    const failed: DbxError[] = [];
    results.forEach((r, i) => {
      if (r.status === "rejected") failed.push(this.#nodes[i]!.wrap(r.reason));
    });
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
    const nodes = this.#nodes.map((n): NodeStats => {
      const pool = n.poolCounts();
      return {
        name: n.name,
        role: n.role,
        healthy: n.healthy,
        totalConns: pool.total,
        idleConns: pool.idle,
        waitingClients: pool.waiting,
        maxConns: n.maxConns,
        queries: n.queries,
        errors: n.errors,
        retries: n.retries,
        inFlight: n.inFlight,
        ...latencyOf(n),
      };
    });
    type Summed =
      | "totalConns"
      | "idleConns"
      | "waitingClients"
      | "maxConns"
      | "queries"
      | "errors"
      | "retries"
      | "inFlight";
    const sum = (k: Summed) => nodes.reduce((acc, n) => acc + n[k], 0);
    return {
      nodes,
      totals: {
        totalConns: sum("totalConns"),
        idleConns: sum("idleConns"),
        waitingClients: sum("waitingClients"),
        maxConns: sum("maxConns"),
        queries: sum("queries"),
        errors: sum("errors"),
        retries: sum("retries"),
        inFlight: sum("inFlight"),
      },
    };
  }

  /**
   * Probes every node now and reports role, health, latency and replica lag,
   * for readiness endpoints.
   *
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
  async health(): Promise<HealthReport> {
    this.#assertOpen();
    await this.#checker.checkAll();
    const topology = this.#checker.topology;
    const primaryLsn = topology.primary?.lastProbe?.lsn;
    const nodes = this.#nodes.map((n): NodeHealth => {
      const p = n.lastProbe;
      const entry: { -readonly [K in keyof NodeHealth]: NodeHealth[K] } = {
        name: n.name,
        role: n.role,
        healthy: n.healthy,
      };
      if (p !== undefined && n.healthy) entry.latencyMs = Math.round(p.latencyMs * 100) / 100;
      if (n.role === "replica" && p !== undefined && n.healthy) {
        const lag = this.#lagOf(n, primaryLsn);
        if (lag !== undefined) entry.lagMs = Math.round(lag);
        if (primaryLsn !== undefined && p.lsn !== undefined) {
          entry.lagBytes = Number(primaryLsn > p.lsn ? primaryLsn - p.lsn : 0n);
        }
      }
      if (!n.healthy && n.lastError !== undefined) {
        entry.error = n.lastError instanceof Error ? n.lastError.message : String(n.lastError);
      }
      return entry;
    });
    return { writable: topology.primary !== undefined && topology.primary.healthy, nodes };
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

  #noPrimary(topology: Topology): NoHealthyNodeError {
    if (topology.primaries.length > 1) {
      return new NoHealthyNodeError(
        `refusing writes: ${topology.primaries.length} nodes report primary (${
          topology.primaries.map((n) => n.name).join(", ")
        })`,
      );
    }
    const down = this.#nodes.find((n) => n.role === "primary" && !n.healthy);
    return new NoHealthyNodeError(
      down === undefined
        ? "no node reports primary"
        : `no healthy primary: ${down.name} is down${
          down.lastError instanceof Error ? ` (${down.lastError.message})` : ""
        }`,
      { cause: down?.lastError },
    );
  }

  /** Replication lag of a replica in ms, trusting equal LSNs over an old replay timestamp. */
  #lagOf(node: Node, primaryLsn: bigint | undefined): number | undefined {
    const p = node.lastProbe;
    if (p === undefined) return undefined;
    // On an idle primary the last replayed transaction can be old although
    // the replica has everything: positions first, the timestamp only when behind.
    if (primaryLsn !== undefined && p.lsn !== undefined && p.lsn >= primaryLsn) return 0;
    return p.replayAgeMs;
  }

  /** Chooses the node for an attempt, or undefined when none is eligible. */
  #pick(
    read: boolean,
    tried: Node[] | undefined,
    options: ReadOptions | undefined,
  ): Node | undefined {
    const topology = this.#checker.topology;
    const primary = topology.primary;
    if (!read) {
      return primary !== undefined && primary.healthy && !tried?.includes(primary)
        ? primary
        : undefined;
    }
    let candidates = topology.replicas;
    const maxLagMs = options?.maxLagMs ?? this.#config.maxLagMs;
    const token = options?.consistentWith;
    if (tried !== undefined || maxLagMs !== undefined || token !== undefined) {
      const primaryLsn = primary?.lastProbe?.lsn;
      const minLsn = token === undefined ? undefined : parseLsn(token);
      candidates = candidates.filter((n) => {
        if (tried?.includes(n)) return false;
        if (maxLagMs !== undefined) {
          const lag = this.#lagOf(n, primaryLsn);
          if (lag === undefined || lag > maxLagMs) return false;
        }
        if (minLsn !== undefined) {
          const lsn = n.lastProbe?.lsn;
          if (lsn === undefined || lsn < minLsn) return false;
        }
        return true;
      });
    }
    const replica = this.#config.balancer.pick(candidates);
    if (replica !== undefined) return replica;
    if (primary === undefined || !primary.healthy || tried?.includes(primary)) return undefined;
    if (topology.replicas.length > 0) {
      const reason = topology.replicas.every((n) => !n.healthy)
        ? "no_healthy_replica"
        : token !== undefined
        ? "not_caught_up"
        : maxLagMs !== undefined
        ? "lagging"
        : "no_healthy_replica";
      this.#config.logger.debug("dbx: read falls back to the primary", { reason });
      callHook(this.#config.logger, this.#config.metrics, "onReplicaFallback", { reason });
    }
    return primary;
  }

  async #execute(
    method: string,
    route: Route,
    sql: string,
    args: readonly unknown[] | undefined,
    options: ReadOptions | undefined,
  ): Promise<pg.QueryResult> {
    this.#assertOpen();
    checkStatement(method, sql, args);
    if (
      options === undefined || (options.signal === undefined && options.timeoutMs === undefined)
    ) {
      if (options !== undefined) checkOptions(method, options);
      return this.#withRetry(route, sql, args, options, undefined) as Promise<pg.QueryResult>;
    }
    checkOptions(method, options);
    const call = new CallSignal(options);
    try {
      return await this.#withRetry(route, sql, args, options, call.signal) as pg.QueryResult;
    } finally {
      call.dispose();
    }
  }

  /**
   * The retry contract: move to the next eligible node first, then back off
   * (exponential, full jitter, capped) and start over, within the caller's
   * signal and deadline. A write is re-sent only when it provably never
   * reached a server, or the server refused it as read-only (25006).
   */
  async #withRetry(
    route: Route,
    sql: string,
    args: readonly unknown[] | undefined,
    options: ReadOptions | undefined,
    signal: AbortSignal | undefined,
  ): Promise<pg.QueryResult | Pinned> {
    const read = route === Route.Read;
    const { maxAttempts, baseDelayMs, maxDelayMs, retryable } = this.#config.retry;
    const { logger, metrics } = this.#config;
    let tried: Node[] | undefined;
    let errors: unknown[] | undefined;
    let backoffs = 0;
    for (let attempt = 1;; attempt++) {
      let node = this.#pick(read, tried, options);
      if (node === undefined && attempt > 1) {
        // Every eligible node failed once (or none is up): back off, then
        // start over with all nodes eligible again.
        const ms = backoffDelay(++backoffs, { baseDelayMs, maxDelayMs });
        try {
          await delay(ms, signal);
        } catch (reason) {
          throw this.#aborted(reason, errors);
        }
        tried = undefined;
        node = this.#pick(read, undefined, options);
      }
      if (node === undefined) {
        const err = read
          ? new NoHealthyNodeError(
            "no healthy node for reads: every replica and the primary are down",
          )
          : this.#noPrimary(this.#checker.topology);
        (errors ??= []).push(err);
        if (attempt >= maxAttempts) {
          // Never reaching any node is plain unavailability, not a failed retry.
          const unavailable = errors.every((e) => e instanceof NoHealthyNodeError);
          throw unavailable ? err : new RetryExhaustedError(errors);
        }
        callHook(logger, metrics, "onRetry", { attempt, node: undefined, delayMs: 0, error: err });
        continue;
      }
      try {
        if (route === Route.Read || route === Route.Write) {
          return await this.#attempt(node, undefined, sql, args, signal, attempt);
        }
        return await this.#pin(node, route === Route.Begin ? sql : undefined, signal, attempt);
      } catch (raw) {
        if (signal?.aborted) throw this.#aborted(signal.reason, errors, raw, node);
        const err = node.wrap(raw);
        const connectionLost = isConnectionError(raw);
        if (connectionLost) this.#checker.markDown(node, err);
        const readOnly = pgErrorCode(raw) === "25006";
        // A read may be re-sent anywhere, except when the server refused it
        // as read-only: then it writes, and must not drift to the primary.
        // A write is re-sent only when it never reached a server, or the
        // server refused it for being a replica (nothing was applied).
        const safe = read ? !readOnly : route !== Route.Write || wasNotSent(raw) || readOnly;
        if (!safe || !retryable(raw)) {
          if (connectionLost && !read && errors === undefined) {
            throw new DbxError(
              `${err.message}; the statement may have been applied, so it was not re-sent`,
              { cause: raw, node: node.name },
            );
          }
          if (errors === undefined) throw err;
          errors.push(err);
          throw new RetryExhaustedError(errors);
        }
        (errors ??= []).push(err);
        if (attempt >= maxAttempts) {
          throw errors.length === 1 ? err : new RetryExhaustedError(errors);
        }
        node.retries++;
        (tried ??= []).push(node);
        logger.debug("dbx: retrying", { attempt, node: node.name, error: err.message });
        callHook(logger, metrics, "onRetry", { attempt, node: node.name, delayMs: 0, error: err });
        // The server says it is not the primary: learn the new topology
        // before the retry instead of waiting for the next round.
        if (readOnly) await this.#checker.checkAll();
      }
    }
  }

  /** The error for a call ended by its signal or deadline. */
  #aborted(reason: unknown, errors: unknown[] | undefined, raw?: unknown, node?: Node): DbxError {
    const timeout = reason instanceof DOMException && reason.name === "TimeoutError";
    const what = timeout ? (reason as DOMException).message : "canceled by the caller's signal";
    const attempts = errors === undefined
      ? ""
      : ` after ${errors.length + (raw === undefined ? 0 : 1)} attempts`;
    return new DbxError(`statement ${what}${attempts}${node ? ` (node ${node.name})` : ""}`, {
      kind: timeout ? "timeout" : "canceled",
      code: pgErrorCode(raw),
      node: node?.name,
      cause: raw ?? errors?.at(-1) ?? reason,
    });
  }

  /** Takes a connection and, given a BEGIN statement, opens a transaction on it. */
  async #pin(
    node: Node,
    sql: string | undefined,
    signal: AbortSignal | undefined,
    attempt: number,
  ): Promise<Pinned> {
    const client = await node.acquire(signal);
    if (sql === undefined) return { node, client };
    try {
      await this.#attempt(node, client, sql, undefined, signal, attempt);
    } catch (err) {
      node.release(client, true);
      throw err;
    }
    return { node, client };
  }

  /**
   * One attempt of one statement: on a pooled connection, or on `client`
   * when given (a transaction's). Counts it, and observes it when hooks, a
   * tracer or the slow-query log are configured.
   */
  async #attempt(
    node: Node,
    client: pg.PoolClient | undefined,
    sql: string,
    args: readonly unknown[] | undefined,
    signal: AbortSignal | undefined,
    attempt: number,
  ): Promise<pg.QueryResult> {
    if (this.#observed) return this.#observedAttempt(node, client, sql, args, signal, attempt);
    node.queries++;
    node.inFlight++;
    const start = performance.now();
    try {
      return await (client === undefined
        ? node.run(sql, args, signal)
        : node.runOn(client, sql, args, signal));
    } catch (err) {
      node.errors++;
      throw err;
    } finally {
      node.inFlight--;
      node.recordLatency(performance.now() - start);
    }
  }

  /** The attempt with hooks, tracer and slow-query logging (kept off the plain path). */
  async #observedAttempt(
    node: Node,
    client: pg.PoolClient | undefined,
    sql: string,
    args: readonly unknown[] | undefined,
    signal: AbortSignal | undefined,
    attempt: number,
  ): Promise<pg.QueryResult> {
    const { logger, metrics, slowQueryThresholdMs } = this.#config;
    const event: QueryEvent = {
      node: node.name,
      role: node.role,
      sql,
      argCount: args?.length ?? 0,
      attempt,
    };
    callHook(logger, metrics, "onQueryStart", event);
    const tracer = node.tracer;
    let handle: unknown;
    if (tracer !== undefined) {
      try {
        handle = tracer.queryStart({ ...event, host: node.host, port: node.port });
      } catch (error) {
        logger.error("dbx: tracer threw", { error });
      }
    }
    const start = performance.now();
    node.queries++;
    node.inFlight++;
    let result: pg.QueryResult | undefined;
    let error: unknown;
    try {
      result = await (client === undefined
        ? node.run(sql, args, signal)
        : node.runOn(client, sql, args, signal));
      return result;
    } catch (err) {
      node.errors++;
      error = err;
      throw err;
    } finally {
      node.inFlight--;
      const durationMs = performance.now() - start;
      node.recordLatency(durationMs);
      callHook(
        logger,
        metrics,
        "onQueryEnd",
        error === undefined ? { ...event, durationMs } : {
          ...event,
          durationMs,
          error,
        },
      );
      if (tracer !== undefined) {
        try {
          tracer.queryEnd(
            handle,
            error === undefined ? { rowCount: result?.rowCount ?? 0 } : { error },
          );
        } catch (err) {
          logger.error("dbx: tracer threw", { error: err });
        }
      }
      if (slowQueryThresholdMs !== undefined && durationMs >= slowQueryThresholdMs) {
        logger.warn("dbx: slow query", {
          node: node.name,
          role: node.role,
          durationMs: Math.round(durationMs),
          sql: sql.length > LOG_SQL_MAX ? `${sql.slice(0, LOG_SQL_MAX)}…` : sql,
          argCount: event.argCount,
        });
      }
    }
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
