/**
 * The statement path of a routed call, in one place: choose a node
 * (`route.ts`), run one attempt on it (`attempt.ts`), and retry by the
 * retry contract (`retry_contract.ts`, with `withRetry` in `retry.ts`). The
 * cluster's `exec`, `query`, `queryRow` and `read*` come here; `begin`,
 * `copyFrom` and `sendBatch` take a connection through `pinned.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import type { AttemptInfo, AttemptRunner } from "./attempt.ts";
import type { ResolvedConfig } from "../config/config.ts";
import {
  type Executor,
  firstRow,
  type QueryOptions,
  type ReadOptions,
  type Row,
  toCommandResult,
} from "../executor.ts";
import type { HealthChecker } from "../node/health.ts";
import type { Node } from "../node/node.ts";
import type { Observer } from "../observe/observe.ts";
import { hedgedRead, Hedger, type RoutedWork } from "./hedge.ts";
import { NONE, retrying, type RetryOptions } from "./retry.ts";
import { retryOptions } from "./retry_contract.ts";
import { currentSession, type SessionHost, type SessionState } from "./session.ts";
import { withCall } from "./signal.ts";
import { statementConfig } from "../node/statement_cache.ts";
import { checkCallOptions, checkShared, checkStatement } from "./validate.ts";

/** What the statement path needs from the cluster. */
export interface Dispatcher {
  readonly config: ResolvedConfig;
  readonly nodes: readonly Node[];
  readonly checker: HealthChecker;
  readonly runner: AttemptRunner;
  readonly observer: Observer;
  /** Throws ClusterClosedError once the cluster is closing, naming `method` (else "a statement"). */
  assertOpen(method?: string): void;
  /** Retry options of calls without a signal or read bounds, made once (the hot path). */
  readonly plain: Readonly<Record<CallKind, RetryOptions<Node>>>;
  /** What read-your-writes sessions of this cluster ask of it. */
  readonly sessions: SessionHost;
  /** Reads of a session sent to the primary because no replica was known to have its writes. */
  sessionReadsOnPrimary: number;
  /** Hedged reads' budget and counts; undefined without `hedge`. */
  readonly hedges: Hedger | undefined;
}

/** How a call is routed and what of it may be re-sent. */
export type CallKind = "read" | "write" | "pin";

/**
 * Builds the statement path of a cluster.
 *
 * @param parts The cluster's config, nodes, checker, runner and observer.
 * @returns The dispatcher.
 */
export function createDispatcher(
  parts: Omit<Dispatcher, "plain" | "sessions" | "sessionReadsOnPrimary" | "hedges">,
): Dispatcher {
  const plain = {} as Record<CallKind, RetryOptions<Node>>;
  const sessions: SessionHost = {
    get probeSeq() {
      return parts.checker.probeSeq;
    },
    primaryLsn: (options) =>
      // Not through `statement()`: asking is not a write of the session.
      withCall(options, (signal) =>
        routed(
          d,
          false,
          "select pg_current_wal_lsn()::text as lsn",
          undefined,
          undefined,
          signal,
          undefined,
          (r) => (r.rows[0] as { lsn: string }).lsn,
        )),
  };
  const hedge = parts.config.hedge;
  const hedges = hedge === undefined ? undefined : new Hedger(hedge);
  const d: Dispatcher = { ...parts, plain, sessions, sessionReadsOnPrimary: 0, hedges };
  for (const kind of ["read", "write", "pin"] as const) {
    plain[kind] = retryOptions(d, kind, undefined, undefined, undefined);
  }
  return d;
}

/**
 * Runs one statement where its method routes it, with retries
 * ({@linkcode routedWork}); a read outside a session is hedged when the
 * cluster hedges.
 *
 * @param d The cluster.
 * @param read A `read*` method.
 * @param sql Statement text.
 * @param args Bind parameters.
 * @param options The call's read options.
 * @param signal The call's signal (deadline included).
 * @param session The read-your-writes session the call is in, if any.
 * @param project What the caller gets of the driver's result (its rows, its first row, ...).
 * @returns What `project` made of the driver's result.
 */
export function routed<R>(
  d: Dispatcher,
  read: boolean,
  sql: string,
  args: readonly unknown[] | undefined,
  options: ReadOptions | undefined,
  signal: AbortSignal | undefined,
  session: SessionState | undefined,
  project: (result: pg.QueryResult) => R,
): Promise<R> {
  const work = new StatementWork(sql, args);
  return routedWork(d, read, work, signal, work, options, session, true, project);
}

/**
 * One statement as routed work, and what hooks and tracers see of it (one
 * object: this is made for every statement): a statement method's text and
 * arguments, whose config is made for each attempt (the statement cache
 * names it in place), or a query config of the `pgPool` facade, sent as it is.
 */
export class StatementWork implements RoutedWork<pg.QueryResult> {
  readonly sql: string;
  readonly argCount: number;
  readonly #args: readonly unknown[] | undefined;
  readonly #config: pg.QueryConfig | undefined;

  /**
   * @param sql Statement text.
   * @param args Bind parameters.
   * @param config The query config to send, when it is not made from `sql` and `args`.
   */
  constructor(sql: string, args: readonly unknown[] | undefined, config?: pg.QueryConfig) {
    this.sql = sql;
    this.argCount = args?.length ?? 0;
    this.#args = args;
    this.#config = config;
  }

  /** Sends it on `node` ({@linkcode RoutedWork.send}). */
  send(
    node: Node,
    signal: AbortSignal | undefined,
    pipeable?: boolean,
    startedAt?: number,
  ): Promise<pg.QueryResult> {
    const config = this.#config ?? statementConfig(this.sql, this.#args);
    return node.send(config, signal, pipeable, startedAt);
  }
}

/**
 * The identity: what {@linkcode routedWork}'s callers pass as `project` when
 * they take the work's result as it is.
 *
 * @param result The work's result.
 * @returns It.
 */
export function asIs<R>(result: R): R {
  return result;
}

/** `withRetry`'s attempts of `work`: each once through the attempt runner. */
function attempts<R>(
  d: Dispatcher,
  info: Omit<AttemptInfo, "attempt"> | undefined,
  signal: AbortSignal | undefined,
  work: RoutedWork<R>,
): (node: Node, attempt: number) => Promise<R> {
  return (node, attempt) =>
    d.runner.run(
      node,
      info && { sql: info.sql, argCount: info.argCount, attempt },
      signal,
      (at) => work.send(node, signal, undefined, at),
    );
}

/** The checks every statement call makes before anything is sent. */
function precheck(
  d: Dispatcher,
  method: string,
  sql: string,
  args: readonly unknown[] | undefined,
  options: ReadOptions | undefined,
): void {
  d.assertOpen(method);
  checkStatement(method, sql, args);
  checkShared(method, sql);
  checkCallOptions(method, options);
}

/**
 * A statement method's call: checked, within the call's signal, routed.
 *
 * @param d The cluster.
 * @param method Method name for argument errors.
 * @param read A `read*` method.
 * @param sql Statement text.
 * @param args Bind parameters.
 * @param options The call's options.
 * @param project What the caller gets of the driver's result.
 * @returns What `project` made of the driver's result.
 */
export function statement<R>(
  d: Dispatcher,
  method: string,
  read: boolean,
  sql: string,
  args: readonly unknown[] | undefined,
  options: ReadOptions | undefined,
  project: (result: pg.QueryResult) => R,
): Promise<R> {
  try {
    precheck(d, method, sql, args, options);
  } catch (err) {
    return Promise.reject(err);
  }
  const session = currentSession(d.sessions);
  // No deadline (most calls): routed at once, without a closure for `withCall`.
  if (options?.timeoutMs === undefined) {
    return routed(d, read, sql, args, options, options?.signal, session, project);
  }
  return withCall(
    options,
    (signal) => routed(d, read, sql, args, options, signal, session, project),
  );
}

/**
 * One attempt on one node, whatever its role or health: no routing, no
 * retry (per-node handles and `ping`).
 *
 * @param d The cluster.
 * @param node The node.
 * @param method Method name for argument errors.
 * @param sql Statement text.
 * @param args Bind parameters.
 * @param options The call's signal and deadline.
 * @returns The driver's result.
 */
export function once(
  d: Dispatcher,
  node: Node,
  method: string,
  sql: string,
  args: readonly unknown[] | undefined,
  options: QueryOptions | undefined,
): Promise<pg.QueryResult> {
  try {
    precheck(d, method, sql, args, options);
  } catch (err) {
    return Promise.reject(err);
  }
  const info = { sql, argCount: args?.length ?? 0, attempt: 1 };
  return withCall(
    options,
    (signal) =>
      d.runner.run(node, info, signal, () => node.send(statementConfig(sql, args), signal)),
  );
}

/**
 * An {@linkcode Executor} over a function that runs one statement.
 *
 * @param run Runs one statement.
 * @returns The executor.
 */
export function nodeExecutor(
  run: (
    method: string,
    sql: string,
    args: readonly unknown[] | undefined,
    options: QueryOptions | undefined,
  ) => Promise<pg.QueryResult>,
): Executor {
  return {
    exec: async (sql, args, options) => toCommandResult(await run("exec", sql, args, options)),
    query: async <T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions) =>
      (await run("query", sql, args, options)).rows as T[],
    queryRow: async <T = Row>(sql: string, args?: readonly unknown[], options?: QueryOptions) =>
      firstRow<T>((await run("queryRow", sql, args, options)).rows),
  };
}

/**
 * Runs work routed like a statement (`read`: read rules, else write rules),
 * with retries, each attempt through the attempt runner: every statement
 * method (through {@linkcode routed}), the `pgPool` facade's query configs
 * (`rowMode`, `types`, `name`) and its connections. A write in a
 * read-your-writes session is noted when it ends; a read in one goes only
 * where the session's writes are.
 *
 * The first attempt is made here, through the attempt runner's own steps
 * (`begin`, `succeeded`, `failed`), and only a failure enters `withRetry`'s
 * loop: a call that succeeds at once (most of them) costs its driver promise
 * and one `then` on it (not an async function: its frame and its await cost
 * more), nothing made for the retries it did not need.
 *
 * @param d The cluster.
 * @param read Read rules (a replica, falling back to the primary).
 * @param info What it is, for hooks and tracers; `undefined` for work that sends nothing.
 * @param signal The call's signal.
 * @param work One attempt on the picked node, cancelled on the server when
 * its signal (the call's, or a hedge's own) aborts.
 * @param options The call's read options (lag, token).
 * @param session The read-your-writes session the call is in, if any.
 * @param hedge The work is one statement that a read outside a session may hedge.
 * @param project What the caller gets of the work's result.
 * @returns What `project` made of the work's result.
 */
export function routedWork<R, P>(
  d: Dispatcher,
  read: boolean,
  info: Omit<AttemptInfo, "attempt"> | undefined,
  signal: AbortSignal | undefined,
  work: RoutedWork<R>,
  options: ReadOptions | undefined,
  session: SessionState | undefined,
  hedge: boolean,
  project: (result: R) => P,
): Promise<P> {
  // Succeeded or not (it may have been applied), a write of a session is noted
  // when it ends: the session's reads must see it.
  const note = read ? undefined : session;
  let retry: RetryOptions<Node>;
  let node: Node | undefined;
  try {
    retry = retryOptions(d, read ? "read" : "write", options, signal, read ? session : undefined);
    const hedges = read && hedge && session === undefined ? d.hedges : undefined;
    if (hedges !== undefined && info !== undefined) {
      return settled(hedgedRead(d, hedges, info, signal, options, work, retry), note, project);
    }
    node = retry.pick(NONE);
  } catch (err) {
    note?.noteWrite();
    return Promise.reject(err);
  }
  if (node === undefined) {
    return settled(
      retrying(attempts(d, info, signal, work), retry, node, undefined),
      note,
      project,
    );
  }
  const runner = d.runner;
  const observation = info && runner.begin(node, info.sql, info.argCount, 1);
  const start = performance.now();
  let sent: Promise<R>;
  try {
    sent = work.send(node, signal, undefined, start);
  } catch (raw) {
    sent = Promise.reject(raw);
  }
  return sent.then(
    (result) => {
      if (info !== undefined) runner.succeeded(node, observation, start, result);
      note?.noteWrite();
      return project(result);
    },
    (raw) => {
      let error;
      try {
        error = info === undefined
          ? runner.failedUncounted(node, raw, signal)
          : runner.failed(node, observation, start, raw, signal);
      } catch (err) {
        note?.noteWrite();
        throw err;
      }
      const retried = retrying(attempts(d, info, signal, work), retry, node, { error });
      return settled(retried, note, project);
    },
  );
}

/** What `project` makes of `result`, once it settled and a session's write (`note`) was noted. */
async function settled<R, P>(
  result: Promise<R>,
  note: SessionState | undefined,
  project: (result: R) => P,
): Promise<P> {
  try {
    return project(await result);
  } finally {
    note?.noteWrite();
  }
}
