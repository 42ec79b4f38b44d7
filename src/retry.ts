/**
 * Backoff with full jitter and an abortable delay: the timing half of the
 * retry contract. Which failures may be re-sent, and where, is decided by
 * the cluster (see `src/cluster.ts`), because it depends on whether the
 * statement is a read and whether it reached the server.
 *
 * @module
 */

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

/**
 * The caller's signal and a deadline combined into one signal. The deadline
 * is a plain timer cleared by {@linkcode CallSignal.dispose}, so nothing
 * outlives the call. Internal.
 */
export class CallSignal {
  /** Aborts on the caller's signal or at the deadline (reason: a TimeoutError DOMException). */
  readonly signal: AbortSignal;
  readonly #timer: ReturnType<typeof setTimeout> | undefined;

  /**
   * @param options At least one of `signal` and `timeoutMs`.
   */
  constructor(options: { signal?: AbortSignal | undefined; timeoutMs?: number | undefined }) {
    const { signal, timeoutMs } = options;
    if (timeoutMs === undefined) {
      this.signal = signal!;
      return;
    }
    const deadline = new AbortController();
    this.#timer = setTimeout(
      () => deadline.abort(new DOMException(`timed out after ${timeoutMs} ms`, "TimeoutError")),
      timeoutMs,
    );
    this.signal = signal === undefined
      ? deadline.signal
      : AbortSignal.any([signal, deadline.signal]);
  }

  /** Clears the deadline timer. */
  dispose(): void {
    clearTimeout(this.#timer);
  }
}
