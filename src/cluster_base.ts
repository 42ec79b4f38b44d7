/**
 * What every {@linkcode Cluster} is made of, below its statement methods:
 * the nodes and their health checker, the lifecycle (start, close), the
 * transaction entry points (`begin`, `runTx`, the ambient transaction), and
 * the views on the nodes (`stats`, `health`, `ping`, `node(name)`). The
 * statement methods live in `cluster.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";

import { abortedError, AttemptRunner } from "./attempt.ts";
import { type ClusterConfig, resolveConfig, type ResolvedConfig } from "./config.ts";
import { boundExecutor } from "./context.ts";
import { createDispatcher, type Dispatcher, nodeExecutor, once, pin } from "./dispatch.ts";
import { ClusterClosedError, type DbxError, handleError } from "./errors.ts";
import type { Executor, QueryOptions, Tx } from "./executor.ts";
import { isConnectionError } from "./failure.ts";
import { HealthChecker } from "./health.ts";
import { Node } from "./node.ts";
import { Observer } from "./observe.ts";
import { StatementCache } from "./statement_cache.ts";
import { reportRetry } from "./retry_contract.ts";
import { currentSession } from "./session.ts";
import { beginStatement, runTransaction, type RunTxOptions, type TxOptions } from "./run_tx.ts";
import { withCall } from "./signal.ts";
import { buildHealth, buildStats, type ClusterStats, type HealthReport } from "./stats.ts";
import { waitForStartup } from "./startup.ts";
import { Savepoint, Transaction } from "./tx.ts";
import { checkCallOptions } from "./validate.ts";

/** Grace given to running statements by close() before their connections are cut. */
const CLOSE_GRACE_MS = 5_000;

/** What the statement methods of `Cluster` need from its base. Internal. */
export interface ClusterInternals {
  /** The statement path. */
  readonly d: Dispatcher;
  /** The active transaction of this cluster bound to the async context. */
  ambient(): Transaction | Savepoint | undefined;
  /** Long-lived resources (subscriptions) that close() disposes of before the pools end. */
  readonly resources: Set<AsyncDisposable>;
}

const internals = new WeakMap<object, ClusterInternals>();

/**
 * The internals of a cluster, for `cluster.ts`.
 *
 * @param cluster A cluster.
 * @returns Its internals.
 */
export function internalsOf(cluster: object): ClusterInternals {
  return internals.get(cluster)!;
}

/**
 * The nodes, checker and lifecycle of a {@linkcode Cluster}; use `Cluster`
 * (through `connect()`), which adds the statement methods.
 *
 * @example
 * ```ts
 * import { type ClusterBase, connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const base: ClusterBase = cluster;
 * console.log(base.stats().totals.queries);
 * ```
 */
export class ClusterBase implements AsyncDisposable {
  readonly #config: ResolvedConfig;
  readonly #nodes: readonly Node[];
  readonly #checker: HealthChecker;
  readonly #d: Dispatcher;
  readonly #resources = new Set<AsyncDisposable>();
  #started: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  /**
   * Builds the cluster without connecting. Use `connect()`, which
   * also verifies the primary and starts the health checker.
   *
   * @param config A config; validated here.
   * @throws {ConfigError} when a setting is invalid.
   */
  constructor(config: ClusterConfig | string) {
    const resolved = this.#config = resolveConfig(config);
    const statements = resolved.statementCache > 0
      ? new StatementCache(resolved.statementCache)
      : undefined;
    const observer = new Observer(resolved.logger, resolved.metrics, resolved.slowQueryThresholdMs);
    const nodes = this.#nodes = resolved.nodes.map((n) =>
      new Node(n, (node, err) => {
        // An idle connection died: the pool already dropped it. Take the node
        // out of rotation only if the server itself is gone; the probe decides.
        observer.log("debug", "dbx: idle connection lost", { node: node.name, error: err.message });
        if (isConnectionError(err)) checker.recheck(node);
      }, {
        pipeline: resolved.pipeline,
        statements,
        types: resolved.types as pg.CustomTypesConfig | undefined,
      })
    );
    const checker = this.#checker = new HealthChecker(nodes, resolved.healthCheck, observer);
    const runner = new AttemptRunner(observer, (node, err) => checker.markDown(node, err));
    this.#d = createDispatcher({
      config: resolved,
      nodes,
      checker,
      runner,
      observer,
      assertOpen: () => this.#assertOpen(),
    });
    internals.set(this, {
      d: this.#d,
      ambient: () => this.#ambient(),
      resources: this.#resources,
    });
  }

  /**
   * Verifies that a primary answers (probing every node, with retry and
   * backoff) and starts the background health checker. `connect()` calls it;
   * calling it again returns the same promise.
   *
   * @returns Resolves when a primary has answered (a replica, with
   * `target_session_attrs=standby`; any node, with `requirePrimary: false`).
   * @throws {NoHealthyNodeError} when no node reported primary after every
   * attempt; the message names each node that is down and why.
   * @throws {DbxError} (kind `other`, not retryable) at once when every node
   * that did not answer refused for a reason no retry fixes: a certificate
   * that does not verify, a refused login (SQLSTATE class 28), no such database.
   */
  start(): Promise<void> {
    if (this.#closing !== undefined) return Promise.reject(new ClusterClosedError());
    return this.#started ??= this.#start();
  }

  async #start(): Promise<void> {
    await waitForStartup(this.#checker, this.#nodes, this.#config, () => {
      if (this.#closing !== undefined) throw new ClusterClosedError();
    });
    this.#checker.start();
  }

  /**
   * Stops the cluster: the same as `close()` (the `Component` contract).
   *
   * @returns Resolves when everything is closed.
   */
  stop(): Promise<void> {
    return this.close();
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
    return nodeExecutor((method, sql, args, options) =>
      once(this.#d, node, method, sql, args, options)
    );
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
   * @throws {DbxError} kind `canceled` when `signal` aborted, `timeout` when
   * `timeoutMs` passed, before every node answered (like every other method).
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
    checkCallOptions("ping", options);
    await withCall(options, async (signal) => {
      if (signal?.aborted) throw abortedError(signal.reason);
      const results = await Promise.allSettled(
        this.#nodes.map((n) =>
          once(this.#d, n, "ping", "select 1", undefined, signal && { signal })
        ),
      );
      // Nodes cut short by the caller's signal or deadline did not fail.
      if (signal?.aborted) throw abortedError(signal.reason);
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
    });
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
    return buildStats(this.#nodes, this.#d);
  }

  /**
   * Probes every node now and reports role, health, latency and replica lag,
   * for readiness endpoints.
   *
   * @param options Cancellation and deadline for the probe round.
   * @returns The report.
   * @throws {DbxError} kind `canceled` when `signal` aborted, `timeout` when
   * `timeoutMs` passed, before the probe round ended.
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
      if (signal?.aborted) return Promise.reject(abortedError(signal.reason));
      const round = this.#checker.checkAll();
      if (signal === undefined) return round;
      return new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(abortedError(signal.reason));
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
    await Promise.all([...this.#resources].map((r) => r[Symbol.asyncDispose]()));
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
    const session = currentSession(this.#d.sessions);
    const { node, client } = await pin(this.#d, sql, signal);
    return new Transaction(this, node, client, this.#d.runner, { signal: txSignal, session });
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
    return runTransaction(
      {
        open: (opts, signal) => this.#open(beginStatement("runTx", opts), signal, signal),
        retried: (tx, attempt, error) => reportRetry(this.#d, tx.node, attempt, error),
        backoff: { baseDelayMs, maxDelayMs },
      },
      fn,
      options,
      this.#ambient(),
    );
  }

  /** The transaction of this cluster bound to the async context, if any is active. */
  #ambient(): Transaction | Savepoint | undefined {
    const bound = boundExecutor();
    if (bound === undefined) return undefined;
    if (!(bound instanceof Transaction || bound instanceof Savepoint)) return undefined;
    return bound.root.owner === this && bound.active ? bound : undefined;
  }
}
