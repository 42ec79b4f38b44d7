/**
 * Backoff with full jitter and an abortable delay: the timing half of the
 * retry contract. Which failures may be re-sent, and where, is decided by
 * the cluster (see `src/cluster.ts`), because it depends on whether the
 * statement is a read and whether it reached the server.
 *
 * @module
 */

/** Settings of {@linkcode backoffDelay}. */
export interface BackoffOptions {
  /** Cap of the first delay before jitter. @default 50 */
  baseDelayMs?: number;
  /** Upper bound of any delay. @default 1_000 */
  maxDelayMs?: number;
  /** Source of numbers in [0, 1). @default Math.random */
  random?: () => number;
}

/**
 * The delay before retry number `retry` (1 = after the first failure), with
 * "full jitter": uniform in `[0, min(maxDelayMs, baseDelayMs * 2 ** (retry - 1)))`.
 * Full jitter spreads the retries of many callers that failed together, so
 * a recovering server is not hit by a synchronised wave.
 *
 * @param retry Which retry this is, starting at 1.
 * @param options Base, cap and random source.
 * @returns Milliseconds to wait.
 * @throws {RangeError} if `retry` is not a positive integer.
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
  const base = options.baseDelayMs ?? 50;
  const max = options.maxDelayMs ?? 1_000;
  // 2 ** 1024 is Infinity, which min() then caps: no overflow to worry about.
  const cap = Math.min(max, base * 2 ** (retry - 1));
  return cap * (options.random ?? Math.random)();
}

/**
 * Resolves after `ms` milliseconds, or rejects with the signal's reason as
 * soon as `signal` aborts. The timer is cleared on abort, so nothing
 * outlives the call.
 *
 * @param ms Milliseconds to wait.
 * @param signal Aborts the wait.
 * @returns A promise that settles when the time is up or the signal aborts.
 *
 * @example
 * ```ts
 * import { delay } from "@codelab/dbx";
 *
 * await delay(10);
 * ```
 */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
