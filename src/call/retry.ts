/**
 * Retrying: backoff with full jitter, an abortable delay, and the one
 * generic {@linkcode withRetry} loop every routed call uses. What may be
 * re-sent and where is the caller's `resendable` and `pick`: the loop only
 * moves to the next eligible node first, then backs off, within the caller's
 * signal.
 *
 * @module
 */

import { abortedError, failureOf } from "./attempt.ts";
import { DbxError, NoHealthyNodeError, RetryExhaustedError } from "../errors.ts";
import { type Failure, markInDoubt } from "../failure.ts";

/**
 * Settings of {@linkcode backoffDelay}.
 *
 * @example
 * ```ts
 * import { backoffDelay } from "@codelab/dbx";
 *
 * const ms = backoffDelay(2, { baseDelayMs: 100, maxDelayMs: 2_000 }); // in [0, 200)
 * ```
 */
export interface BackoffOptions {
  /** Cap of the first delay before jitter. @default 50 */
  baseDelayMs?: number;
  /** Upper bound of any delay. @default 1_000 */
  maxDelayMs?: number;
  /** Source of numbers in [0, 1). @default Math.random */
  random?: () => number;
}

function nonNegative(field: string, value: number): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new RangeError(
      `Cannot compute backoff as '${field}' must be a non-negative finite number: current value is ${value}`,
    );
  }
  return value;
}

/** Longest delay a timer can express; longer ones fire at once in JavaScript. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The delay before retry number `retry` (1 = after the first failure), with
 * "full jitter": uniform in `[0, min(maxDelayMs, baseDelayMs * 2 ** (retry - 1)))`.
 * Full jitter spreads the retries of many callers that failed together, so
 * a recovering server is not hit by a synchronised wave.
 *
 * @param retry Which retry this is, starting at 1.
 * @param options Base, cap and random source.
 * @returns Milliseconds to wait.
 * @throws {RangeError} if `retry` is not a positive integer, or a delay option is negative or not finite.
 *
 * @example
 * ```ts
 * import { backoffDelay } from "@codelab/dbx";
 *
 * // Without jitter (random = 1 - epsilon) the caps double: ~50, ~100, ~200 ... up to 1000.
 * console.log(Math.round(backoffDelay(3, { random: () => 0.999999 }))); // 200
 * ```
 */
export function backoffDelay(retry: number, options: BackoffOptions = {}): number {
  if (!Number.isInteger(retry) || retry < 1) {
    throw new RangeError(
      `Cannot compute backoff as 'retry' must be a positive integer: current value is ${retry}`,
    );
  }
  const base = nonNegative("baseDelayMs", options.baseDelayMs ?? 50);
  const max = nonNegative("maxDelayMs", options.maxDelayMs ?? 1_000);
  // The exponent is bounded so 2 ** e stays finite: 0 * Infinity would be NaN.
  const cap = Math.min(max, base * 2 ** Math.min(retry - 1, 1_000));
  return cap * (options.random ?? Math.random)();
}

/**
 * Resolves after `ms` milliseconds, or rejects with the signal's reason as
 * soon as `signal` aborts. The timer is cleared on abort, so nothing
 * outlives the call.
 *
 * @param ms Milliseconds to wait.
 * @param signal Aborts the wait.
 * @returns A promise that settles when the time is up or the signal aborts;
 * it rejects with a RangeError when `ms` is negative or NaN.
 *
 * @example
 * ```ts
 * import { delay } from "@codelab/dbx";
 *
 * await delay(10);
 * ```
 */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  if (typeof ms !== "number" || Number.isNaN(ms) || ms < 0) {
    return Promise.reject(
      new RangeError(`Cannot delay as 'ms' must be a non-negative number: current value is ${ms}`),
    );
  }
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.min(ms, MAX_TIMER_MS));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The empty tried list every call starts with (never written to). */
export const NONE: readonly never[] = Object.freeze([] as never[]);

/** A failed attempt that {@linkcode withRetry} is about to retry. */
export interface RetryStep<N> {
  /** The attempt that failed (1-based). */
  readonly attempt: number;
  /** The node it failed on; `undefined` when no node could be picked. */
  readonly node: N | undefined;
  /** What it threw. */
  readonly error: unknown;
  /** What that means; `undefined` when no node could be picked. */
  readonly failure: Failure | undefined;
}

/** How {@linkcode withRetry} chooses, decides and waits. Internal. */
export interface RetryOptions<N> {
  /** The next node to try, not in `tried`; `undefined` when none is left. */
  pick(tried: readonly N[]): N | undefined;
  /** Whether a failed attempt may be sent again (the retry contract). */
  resendable(failure: Failure, error: unknown): boolean;
  /** Attempts in all, and the backoff between rounds over every eligible node. */
  readonly backoff: {
    readonly maxAttempts: number;
    readonly baseDelayMs: number;
    readonly maxDelayMs: number;
  };
  /** Ends the waiting (the attempt itself cancels on it too). */
  readonly signal?: AbortSignal | undefined;
  /** The error when no node can be picked at all. */
  unavailable(): DbxError;
  /** Told of each retry before it happens; may wait (a re-probe). */
  onRetry?(step: RetryStep<N>): void | Promise<void>;
  /**
   * When no node can be picked at all, wait (up to `ms` per call, within
   * `signal`) for one to become eligible before counting an attempt.
   */
  readonly waitForNode?: {
    readonly ms: number;
    until(deadline: number, signal: AbortSignal | undefined): Promise<void>;
  };
}

/**
 * Runs `attemptOn` on picked nodes until one succeeds: after a failure that
 * may be re-sent, the next eligible node right away; when every eligible
 * node failed (or none is up), a backoff, then all nodes are eligible again.
 * Gives up after `maxAttempts`, on a failure that must not be re-sent, or
 * when `signal` aborts.
 *
 * @param attemptOn One attempt on a node (through the attempt runner).
 * @param options Picking, the retry contract and the backoff.
 * @returns The first successful attempt's result.
 * @throws The attempt's own error when it was the only one; a
 * {@linkcode RetryExhaustedError} with every attempt's error otherwise; a
 * {@linkcode NoHealthyNodeError} when no node could ever be picked.
 */
export function withRetry<N, R>(
  attemptOn: (node: N, attempt: number) => Promise<R>,
  options: RetryOptions<N>,
): Promise<R> {
  // Most calls succeed at once: the first attempt starts here, and only a
  // failure (or no node to pick) enters the retry loop.
  let node: N | undefined;
  let first: Promise<R>;
  try {
    node = options.pick(NONE);
    if (node === undefined) return retrying(attemptOn, options, undefined, undefined);
    first = attemptOn(node, 1);
  } catch (err) {
    if (node === undefined) return Promise.reject(err);
    first = Promise.reject(err);
  }
  const picked = node;
  return first.catch((error: unknown) => retrying(attemptOn, options, picked, { error }));
}

/**
 * {@linkcode withRetry}'s loop, from its first attempt: on `firstNode`
 * (undefined: none could be picked), failed with `firstFailure` if given
 * (the statement path makes its first attempt itself, `dispatch.ts`).
 *
 * @param attemptOn One attempt on a node (through the attempt runner).
 * @param options Picking, the retry contract and the backoff.
 * @param firstNode Where the first attempt ran; undefined when none could be picked.
 * @param firstFailure What the first attempt threw, when it was made.
 * @returns The first successful attempt's result.
 */
export async function retrying<N, R>(
  attemptOn: (node: N, attempt: number) => Promise<R>,
  options: RetryOptions<N>,
  firstNode: N | undefined,
  firstFailure: { readonly error: unknown } | undefined,
): Promise<R> {
  const { pick, signal } = options;
  const { maxAttempts, baseDelayMs, maxDelayMs } = options.backoff;
  // Allocated on the first failure only: most calls succeed at once.
  let tried: readonly N[] = NONE;
  let errors: unknown[] | undefined;
  let backoffs = 0;
  let waitDeadline: number | undefined;
  for (let attempt = 1;; attempt++) {
    let node = attempt === 1 ? firstNode : pick(tried);
    if (node === undefined && attempt > 1) {
      try {
        await delay(backoffDelay(++backoffs, { baseDelayMs, maxDelayMs }), signal);
      } catch (reason) {
        throw abortedError(reason, errors?.at(-1));
      }
      tried = NONE;
      node = pick(tried);
    }
    const wait = options.waitForNode;
    if (node === undefined && wait !== undefined && wait.ms > 0) {
      waitDeadline ??= performance.now() + wait.ms;
      if (performance.now() < waitDeadline) {
        await wait.until(waitDeadline, signal);
        node = pick(tried);
      }
    }
    if (node === undefined) {
      const err = options.unavailable();
      (errors ??= []).push(err);
      if (attempt >= maxAttempts) {
        // Never reaching any node is plain unavailability, not a failed retry.
        throw errors.every((e) => e instanceof NoHealthyNodeError)
          ? err
          : new RetryExhaustedError(errors);
      }
      await options.onRetry?.({ attempt, node, error: err, failure: undefined });
      continue;
    }
    try {
      return await (attempt === 1 && firstFailure !== undefined
        ? Promise.reject(firstFailure.error)
        : attemptOn(node, attempt));
    } catch (err) {
      if (signal?.aborted) throw err;
      const failure = failureOf(err);
      if (!options.resendable(failure, err)) {
        // Also after earlier re-sent attempts (a failover: refused, then lost on the new
        // primary), the caller must learn that this last one may have been applied.
        const lostSent = failure.connectionLost && failure.sent && err instanceof DbxError;
        const last = lostSent
          ? `${err.message}; the statement may have been applied, so it was not re-sent`
          : undefined;
        if (errors !== undefined) {
          const exhausted = new RetryExhaustedError(
            [...errors, err],
            last === undefined
              ? undefined
              : `all ${errors.length + 1} attempts failed; last error: ${last}`,
          );
          throw lostSent ? markInDoubt(exhausted) : exhausted;
        }
        if (lostSent) throw markInDoubt(new DbxError(last!, { cause: err, node: err.node }));
        throw err;
      }
      (errors ??= []).push(err);
      if (attempt >= maxAttempts) throw errors.length === 1 ? err : new RetryExhaustedError(errors);
      tried = [...tried, node];
      await options.onRetry?.({ attempt, node, error: err, failure });
    }
  }
}
