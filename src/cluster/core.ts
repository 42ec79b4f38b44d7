/**
 * The private core of a {@linkcode Cluster}: its nodes and health checker,
 * the statement path (`call/dispatch.ts`), the lifecycle (start, close), the
 * ambient transaction and the entry points every public method delegates
 * to. `Cluster` owns exactly one; adapters built by the cluster (the
 * `pgPool` facade, LISTEN, streams) are handed it, never look it up.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { abortedError, AttemptRunner } from "../call/attempt.ts";
import {
  createDispatcher,
  type Dispatcher,
  nodeExecutor,
  once,
  statement,
} from "../call/dispatch.ts";
import { pin } from "../call/pinned.ts";
import { reportRetry } from "../call/retry_contract.ts";
import { currentSession } from "../call/session.ts";
import { withCall } from "../call/signal.ts";
import { checkCallOptions } from "../call/validate.ts";
import type { ClusterConfig, ResolvedConfig } from "../config/config.ts";
import { resolveConfig } from "../config/resolve.ts";
import { ClusterClosedError, type DbxError } from "../errors.ts";
import type { Executor, QueryOptions, ReadOptions, Tx } from "../executor.ts";
import { isConnectionError } from "../failure.ts";
import { HealthChecker } from "../node/health.ts";
import { Node } from "../node/node.ts";
import { StatementCache } from "../node/statement_cache.ts";
import { Observer } from "../observe/observe.ts";
import { beginStatement, runTransaction, type RunTxOptions, type TxOptions } from "../tx/run_tx.ts";
import type { BatchOptions, BatchQuery, BatchResult } from "../tx/batch.ts";
import type { CopyOptions, CopyRows } from "../tx/copy.ts";
import { batchCall, copyCall, onPrimary } from "../tx/lease_calls.ts";
import { Savepoint, Transaction } from "../tx/tx.ts";
import { boundExecutor } from "./context.ts";
import { buildHealth, buildStats, type ClusterStats, type HealthReport } from "./stats.ts";
import { waitForStartup } from "./startup.ts";

/** Grace given to running statements by close() before their connections are cut. */
const CLOSE_GRACE_MS = 5_000;

/** What closed a cluster: a method of it, or the end of an `await using` block. */
export type ClosedBy = "close()" | "stop()" | "await using";

/** dbx's own source: its frames are never where a user closed a cluster. */
const OWN_SOURCE = new URL("../", import.meta.url);

/** The first frame of the current stack outside dbx and the runtime (`file:///app/main.ts:8:3`). */
function callerFrame(): string | undefined {
  for (const line of (new Error().stack ?? "").split("\n").slice(1)) {
    const at = /^\s*at (?:async )?(?:.*? \()?(.+?:\d+:\d+)\)?$/.exec(line)?.[1];
    if (at === undefined || /^(ext|node|native):/.test(at)) continue;
    if (!at.startsWith(OWN_SOURCE.href) && !at.startsWith(OWN_SOURCE.pathname)) return at;
  }
  return undefined;
}

/** How a closed cluster's errors say it was closed, and where. */
function closedHow(by: ClosedBy, at: string | undefined): string {
  const keep = "keep it open for as long as a server uses it";
  if (by !== "await using") return `by ${by}${at === undefined ? "" : ` at ${at}`}; ${keep}`;
  return `at the end of its 'await using' block${at === undefined ? "" : ` (${at})`}; ${keep}: ` +
    "at the top level of a module, that block ends with the module body while Deno.serve() " +
    "still takes requests";
}

/** The state and entry points behind one `Cluster`. Internal. */
export class ClusterCore {
  /** The statement path. */
  readonly d: Dispatcher;
  /** Long-lived resources (subscriptions) that close() disposes of before the pools end. */
  readonly resources: Set<AsyncDisposable> = new Set();
  /**
   * Told of every pooled connection that died idle (or after its holder
   * released it): the `pgPool` facades with an "error" listener.
   */
  readonly idleErrors: Set<(err: Error) => void> = new Set();
  /** The `Cluster` this core belongs to: transactions bound to the async context name it. */
  readonly owner: object;
  readonly #config: ResolvedConfig;
  readonly #nodes: readonly Node[];
  readonly #checker: HealthChecker;
  #started: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  /** What closed the cluster and where, for the errors of later calls. */
  #closedHow = "";

  /**
   * @param owner The cluster.
   * @param config A config; validated here.
   */
  constructor(owner: object, config: ClusterConfig | string) {
    this.owner = owner;
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
        for (const listener of this.idleErrors) listener(err);
      }, {
        pipeline: resolved.pipeline,
        statements,
        types: resolved.types as pg.CustomTypesConfig | undefined,
        p95: resolved.hedge?.afterMs === "p95",
      })
    );
    const checker = this.#checker = new HealthChecker(nodes, resolved.healthCheck, observer);
    const runner = new AttemptRunner(observer, (node, err) => checker.lost(node, err));
    this.d = createDispatcher({
      config: resolved,
      nodes,
      checker,
      runner,
      observer,
      assertOpen: (method) => this.assertOpen(method),
    });
  }

  /**
   * Throws ClusterClosedError once the cluster is closing.
   *
   * @param method The method called, named by the error (else "a statement").
   */
  assertOpen(method?: string): void {
    if (this.#closing !== undefined) throw this.#closedError(method);
  }

  #closedError(method: string | undefined): ClusterClosedError {
    const what = method === undefined ? "a statement" : `${method}()`;
    return new ClusterClosedError(
      `Cannot run ${what} as the cluster was closed ${this.#closedHow}`,
    );
  }

  /** Verifies a primary answers and starts the checker; once. */
  start(): Promise<void> {
    if (this.#closing !== undefined) return Promise.reject(this.#closedError("start"));
    return this.#started ??= (async () => {
      await waitForStartup(
        this.#checker,
        this.#nodes,
        this.#config,
        () => this.assertOpen("start"),
      );
      this.#checker.start();
    })();
  }

  /**
   * Closes everything; the same promise to every caller.
   *
   * @param by What closed it, for the errors of later calls (with where, from the stack).
   */
  close(by: ClosedBy): Promise<void> {
    if (this.#closing === undefined) this.#closedHow = closedHow(by, callerFrame());
    return this.#closing ??= (async () => {
      // A start() in progress sees #closing and gives up; wait for it so its
      // probes are not cut mid-flight by a half-closed checker.
      await this.#started?.catch(() => {});
      await Promise.all([...this.resources].map((r) => r[Symbol.asyncDispose]()));
      await this.#checker.stop();
      await Promise.all(this.#nodes.map((n) => n.end(CLOSE_GRACE_MS)));
    })();
  }

  /**
   * The transaction of this cluster bound to the async context, if any,
   * ended or not: a statement sent from a callback of a transaction that
   * already ended is refused by it, never run outside it.
   */
  ambient(): Transaction | Savepoint | undefined {
    const bound = boundExecutor();
    if (!(bound instanceof Transaction || bound instanceof Savepoint)) return undefined;
    return bound.root.owner === this.owner ? bound : undefined;
  }

  /**
   * One statement method's call: in the ambient transaction when there is
   * one, else routed (`read`: the read rules) with retries.
   */
  statement<R>(
    method: string,
    read: boolean,
    sql: string,
    args: readonly unknown[] | undefined,
    options: ReadOptions | undefined,
    project: (result: pg.QueryResult) => R,
  ): Promise<R> {
    const tx = this.ambient();
    return tx !== undefined
      ? tx.statement(method, sql, args, options).then(project)
      : statement(this.d, method, read, sql, args, options, project);
  }

  /** `cluster.copyFrom()`: in the ambient transaction, else on a leased primary connection. */
  copyFrom(
    table: string,
    columns: readonly string[],
    rows: CopyRows,
    options: CopyOptions | undefined,
  ): Promise<number> {
    const tx = this.ambient();
    if (tx !== undefined) return tx.copyFrom(table, columns, rows, options);
    try {
      this.assertOpen("copyFrom");
      return onPrimary(this.d, copyCall(table, columns, rows, options), options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** `cluster.sendBatch()`: in the ambient transaction, else on a leased primary connection. */
  sendBatch(
    queries: readonly BatchQuery[],
    options: BatchOptions | undefined,
  ): Promise<BatchResult[] | PromiseSettledResult<BatchResult>[]> {
    const tx = this.ambient();
    if (tx !== undefined) {
      return tx.sendBatch(queries, options as BatchOptions & { atomic?: true | undefined });
    }
    try {
      this.assertOpen("sendBatch");
      const call = batchCall(queries, options, false);
      return queries.length === 0 ? Promise.resolve([]) : onPrimary(this.d, call, options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Opens a transaction on a leased primary connection; `txSignal` (runTx's) cancels its statements. */
  async open(
    sql: string,
    txSignal: AbortSignal | undefined,
    signal: AbortSignal | undefined,
  ): Promise<Transaction> {
    const session = currentSession(this.d.sessions);
    const lease = await pin(this.d, sql, signal);
    return new Transaction(this.owner, lease, this.d.runner, { signal: txSignal, session });
  }

  /** `cluster.begin()`. */
  async begin(options: TxOptions | undefined): Promise<Tx> {
    this.assertOpen("begin");
    const sql = beginStatement("begin", options);
    return await withCall(options, (signal) => this.open(sql, undefined, signal));
  }

  /** `cluster.runTx()`: a transaction, or a savepoint inside the ambient one. */
  runTx<T>(fn: (tx: Tx) => Promise<T>, options: RunTxOptions | undefined): Promise<T> {
    try {
      this.assertOpen("runTx");
    } catch (err) {
      return Promise.reject(err);
    }
    const { baseDelayMs, maxDelayMs } = this.#config.retry;
    return runTransaction(
      {
        open: (opts, signal) => this.open(beginStatement("runTx", opts), signal, signal),
        retried: (tx, attempt, error) => reportRetry(this.d, tx.node, attempt, error),
        backoff: { baseDelayMs, maxDelayMs },
      },
      fn,
      options,
      this.ambient(),
    );
  }

  /** `cluster.node(name)`. */
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
      once(this.d, node, method, sql, args, options)
    );
  }

  /** `cluster.ping()`: `select 1` on every node, no retry. */
  async ping(options: QueryOptions | undefined): Promise<void> {
    this.assertOpen("ping");
    checkCallOptions("ping", options);
    await withCall(options, async (signal) => {
      if (signal?.aborted) throw abortedError(signal.reason);
      const results = await Promise.allSettled(
        this.#nodes.map((n) =>
          once(this.d, n, "ping", "select 1", undefined, signal && { signal })
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

  /** `cluster.health()`: a probe round now, then the report. */
  async health(options: QueryOptions | undefined): Promise<HealthReport> {
    this.assertOpen("health");
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
    return this.lastHealth();
  }

  /** The report of the last check round, without probing (what metrics read on collection). */
  lastHealth(): HealthReport {
    return buildHealth(this.#nodes, this.#checker.topology);
  }

  /** `cluster.stats()`. */
  stats(): ClusterStats {
    return buildStats(this.#nodes, this.d);
  }
}
