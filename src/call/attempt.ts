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
import type { Observer } from "../observe/observe.ts";

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
        throw this.#failed(node, raw, signal, classify(raw));
      }
    }
    const observer = this.#observer;
    const observation = observer.observes(node)
      ? observer.start(node, info.sql, info.argCount, info.attempt)
      : undefined;
    node.attemptStarted();
    const start = performance.now();
    let result: R;
    try {
      result = await work(start);
    } catch (raw) {
      const end = performance.now();
      const ms = end - start;
      const failure = classify(raw);
      // A statement cut short by its signal, or whose connection failed, says
      // nothing of how fast the node answers; a server error does.
      const cut = signal?.aborted === true;
      const measured = !cut && failure.sent && !failure.connectionLost;
      node.attemptEnded(ms, !cut || signal.reason !== SUPERSEDED, measured ? end : undefined);
      // Observers get the driver's own error (its code, its class).
      if (observation !== undefined) observer.end(observation, ms, { error: raw });
      throw this.#failed(node, raw, signal, failure);
    }
    const end = performance.now();
    const ms = end - start;
    node.attemptEnded(ms, false, end);
    if (observation !== undefined) {
      const rowCount = (result as { rowCount?: unknown } | undefined)?.rowCount;
      observer.end(observation, ms, { rowCount: typeof rowCount === "number" ? rowCount : 0 });
    }
    return result;
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
