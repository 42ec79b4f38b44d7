/**
 * The one attempt runner. Every statement dbx sends, whoever sends it (a
 * cluster method, a per-node handle, `ping`, a transaction, a batch, COPY),
 * runs here exactly once per attempt: counted on its node, observed (hooks,
 * tracer, slow-query log), its failure classified once, the node handed to the
 * health checker when the failure says the connection was lost (marked down if
 * it does not answer a probe either), and the error wrapped with the node's name. Retrying is not done here: see `withRetry` in `retry.ts`.
 *
 * @module
 */

import { DbxError } from "../errors.ts";
import { classify, type Failure, pgErrorCode } from "../failure.ts";
import type { Node } from "../node/node.ts";
import type { Observation, Observer } from "../observe/observe.ts";

/** The classification of each error the runner threw, read by `withRetry` and transactions. */
const failures = new WeakMap<object, Failure>();

/**
 * The classification of an error thrown by {@linkcode AttemptRunner.run},
 * or a fresh one for any other error.
 *
 * @param err A thrown value.
 * @returns What the failure means.
 */
export function failureOf(err: unknown): Failure {
  return (typeof err === "object" && err !== null && failures.get(err)) || classify(err);
}

/**
 * The error for a call ended by its caller's signal or deadline.
 *
 * @param reason The signal's reason (a `TimeoutError` DOMException for a deadline).
 * @param cause What the attempt threw, if one was running.
 * @param node Where it ran.
 * @returns A DbxError of kind `timeout` or `canceled`.
 */
export function abortedError(reason: unknown, cause?: unknown, node?: string): DbxError {
  const timeout = reason instanceof DOMException && reason.name === "TimeoutError";
  const what = timeout ? (reason as DOMException).message : "canceled by the caller's signal";
  return new DbxError(`statement ${what}${node === undefined ? "" : ` (node ${node})`}`, {
    kind: timeout ? "timeout" : "canceled",
    code: pgErrorCode(cause),
    node,
    cause: cause ?? reason,
  });
}

/**
 * The abort reason of an attempt whose call another attempt answered first
 * (the loser of a hedged read): cancelled on the server like any aborted
 * statement, but no failure of its node.
 */
export const SUPERSEDED: DOMException = new DOMException(
  "statement answered by another node first",
  "AbortError",
);

/** One attempt, as hooks and tracers see it. */
export interface AttemptInfo {
  /** Statement text (for COPY and batches: a summary of the work). */
  readonly sql: string;
  /** Number of bound arguments. */
  readonly argCount: number;
  /** 1 for the first try of a call, 2 for its first retry, ... */
  readonly attempt: number;
}

/** Runs single attempts on nodes. One per cluster. */
export class AttemptRunner {
  readonly #observer: Observer;
  readonly #lost: (node: Node, err: DbxError) => void;

  /**
   * @param observer Hooks, tracer and slow-query log.
   * @param lost Called when an attempt lost its connection: the checker probes the node
   *   and marks it down unless it answers.
   */
  constructor(observer: Observer, lost: (node: Node, err: DbxError) => void) {
    this.#observer = observer;
    this.#lost = lost;
  }

  /**
   * Runs `work` once on `node`.
   *
   * Errors: a call ended by `signal` rejects with a `DbxError` of kind
   * `canceled` / `timeout`; errors from the server or the connection are
   * wrapped with the node's name; anything else (the caller's own error, e.g.
   * a row source that threw or a value pg cannot serialise) passes through as
   * it is. In every case {@linkcode failureOf} tells what the failure means.
   *
   * @param node Where the work runs.
   * @param info What it is, for hooks and tracers; `undefined` for work that
   * sends no statement (taking a connection): classified, not counted.
   * @param signal The caller's signal; the work itself cancels on it.
   * @param work The attempt, given when it starts (`performance.now()`): a
   * statement's own clock can start there without reading the clock again.
   * @returns What `work` returned.
   */
  async run<R>(
    node: Node,
    info: AttemptInfo | undefined,
    signal: AbortSignal | undefined,
    work: (startedAt: number) => Promise<R>,
  ): Promise<R> {
    if (info === undefined) {
      try {
        return await work(performance.now());
      } catch (raw) {
        throw this.failedUncounted(node, raw, signal);
      }
    }
    const observation = this.begin(node, info.sql, info.argCount, info.attempt);
    const start = performance.now();
    let result: R;
    try {
      result = await work(start);
    } catch (raw) {
      throw this.failed(node, observation, start, raw, signal);
    }
    this.succeeded(node, observation, start, result);
    return result;
  }

  /**
   * The start of one attempt that sends a statement ({@linkcode run}, and
   * the statement path's first attempt, `dispatch.ts`): counted on its node,
   * observed. The attempt's clock starts right after; it ends in
   * {@linkcode succeeded} or {@linkcode failed}.
   *
   * @param node Where it runs.
   * @param sql Statement text.
   * @param argCount Number of bound arguments.
   * @param attempt 1 for the first try of a call, 2 for its first retry, ...
   * @returns The observation, when hooks or a tracer observe the node.
   */
  begin(node: Node, sql: string, argCount: number, attempt: number): Observation | undefined {
    const observer = this.#observer;
    const observation = observer.observes(node)
      ? observer.start(node, sql, argCount, attempt)
      : undefined;
    node.attemptStarted();
    return observation;
  }

  /**
   * An attempt {@linkcode begin} started has its result.
   *
   * @param node Where it ran.
   * @param observation What {@linkcode begin} returned.
   * @param start When it started (`performance.now()`).
   * @param result What it returned (a driver result's `rowCount` is observed).
   */
  succeeded(
    node: Node,
    observation: Observation | undefined,
    start: number,
    result: unknown,
  ): void {
    const end = performance.now();
    const ms = end - start;
    node.attemptEnded(ms, false, end);
    if (observation !== undefined) {
      const rowCount = (result as { rowCount?: unknown } | undefined)?.rowCount;
      this.#observer.end(observation, ms, {
        rowCount: typeof rowCount === "number" ? rowCount : 0,
      });
    }
  }

  /**
   * An attempt {@linkcode begin} started failed: counted, observed,
   * classified once, a lost connection reported, wrapped (see {@linkcode run}).
   *
   * @param node Where it ran.
   * @param observation What {@linkcode begin} returned.
   * @param start When it started (`performance.now()`).
   * @param raw What it threw.
   * @param signal The caller's signal.
   * @returns The error to throw ({@linkcode failureOf} tells what it means).
   */
  failed(
    node: Node,
    observation: Observation | undefined,
    start: number,
    raw: unknown,
    signal: AbortSignal | undefined,
  ): unknown {
    const end = performance.now();
    const ms = end - start;
    const failure = classify(raw);
    // A statement cut short by its signal, or whose connection failed, says
    // nothing of how fast the node answers; a server error does.
    const cut = signal?.aborted === true;
    const measured = !cut && failure.sent && !failure.connectionLost;
    node.attemptEnded(ms, !cut || signal.reason !== SUPERSEDED, measured ? end : undefined);
    // Observers get the driver's own error (its code, its class).
    if (observation !== undefined) this.#observer.end(observation, ms, { error: raw });
    return this.#failed(node, raw, signal, failure);
  }

  /**
   * Work that sends no statement (taking a connection) failed: classified
   * once, a lost connection reported, wrapped, but not counted or observed.
   *
   * @param node Where it ran.
   * @param raw What it threw.
   * @param signal The caller's signal.
   * @returns The error to throw ({@linkcode failureOf} tells what it means).
   */
  failedUncounted(node: Node, raw: unknown, signal: AbortSignal | undefined): unknown {
    return this.#failed(node, raw, signal, classify(raw));
  }

  /** Classifies once, reports a lost connection to the checker, wraps. */
  #failed(node: Node, raw: unknown, signal: AbortSignal | undefined, failure: Failure): unknown {
    let err: unknown;
    if (signal?.aborted) {
      err = abortedError(signal.reason, raw === signal.reason ? undefined : raw, node.name);
    } else if (failure.connectionLost || failure.code !== undefined || raw instanceof DbxError) {
      err = node.wrap(raw);
    } else {
      err = raw;
    }
    if (typeof err === "object" && err !== null) failures.set(err, failure);
    // A cancel of our own making may kill the connection too; the node is
    // only marked down for a loss nobody asked for.
    if (failure.connectionLost && !signal?.aborted) this.#lost(node, err as DbxError);
    return err;
  }
}
