/**
 * The caller's `signal` and `timeoutMs` as one signal for the whole call
 * (retries, waits and the server-side cancel of a running statement all
 * listen to it). Set up in one place: {@linkcode withCall}.
 *
 * @module
 */

/** What every call accepts: the caller's signal and a deadline. */
export interface CallOptions {
  /** Cancels the call. */
  readonly signal?: AbortSignal | undefined;
  /** Deadline for the whole call, in ms. */
  readonly timeoutMs?: number | undefined;
}

/**
 * Runs `fn` with one signal that aborts on the caller's `signal` or at the
 * `timeoutMs` deadline (reason: a `TimeoutError` DOMException). The deadline
 * is a plain timer cleared when `fn` settles, so nothing outlives the call;
 * without either option `fn` gets `undefined` and nothing is set up.
 *
 * @param options The caller's options (already validated).
 * @param fn The call.
 * @returns What `fn` returned.
 */
export function withCall<R>(
  options: CallOptions | undefined,
  fn: (signal: AbortSignal | undefined) => Promise<R>,
): Promise<R> {
  const timeoutMs = options?.timeoutMs;
  if (timeoutMs === undefined) return fn(options?.signal);
  const deadline = new AbortController();
  const timer = setTimeout(
    () => deadline.abort(new DOMException(`timed out after ${timeoutMs} ms`, "TimeoutError")),
    timeoutMs,
  );
  const signal = options?.signal;
  return fn(signal === undefined ? deadline.signal : AbortSignal.any([signal, deadline.signal]))
    .finally(() => clearTimeout(timer));
}
