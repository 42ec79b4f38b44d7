/**
 * What a subscription's dedicated connection (LISTEN, a change stream) does
 * to follow the primary: open on the primary with the statement path's
 * retries and its wait for a primary during a failover, reconnect with
 * backoff until it runs again or is closed, end on the caller's signal, and
 * keep track of its background work so closing leaves nothing running.
 *
 * @module
 */

import type { Dispatcher } from "../call/dispatch.ts";
import { backoffDelay, delay, withRetry } from "../call/retry.ts";
import { retryOptions } from "../call/retry_contract.ts";
import type { Node } from "../node/node.ts";

/** Floor of the wait between two rounds of reconnect attempts, in ms: never a busy loop. */
const MIN_RECONNECT_DELAY_MS = 100;

/** Cap of the wait between two rounds of reconnect attempts, in ms. */
export const MAX_RECONNECT_DELAY_MS = 5_000;

/**
 * Runs `attach` on the primary, through the attempt runner (counted, observed,
 * classified) and `withRetry` on the `pin` route.
 *
 * @param d The cluster's statement path.
 * @param sql What the attempt is, for hooks and tracers.
 * @param signal Ends the attempts; `attach` gets it too.
 * @param attach One attempt on a node.
 * @returns Resolves once an attempt succeeded.
 */
export function openOnPrimary(
  d: Dispatcher,
  sql: string,
  signal: AbortSignal,
  attach: (node: Node, signal: AbortSignal) => Promise<void>,
): Promise<void> {
  return withRetry(
    (node, attempt) =>
      d.runner.run(node, { sql, argCount: 0, attempt }, signal, () => attach(node, signal)),
    retryOptions(d, "pin", undefined, signal, undefined),
  );
}

/**
 * The wait before reconnect round `round`: at least 100 ms, backing off up to 5 s.
 *
 * @param d The cluster (its retry base delay).
 * @param round The round that failed (1-based).
 * @param closed Ends the wait by rejecting.
 * @returns Resolves when it is time to try again.
 */
export function reconnectPause(d: Dispatcher, round: number, closed: AbortSignal): Promise<void> {
  const { baseDelayMs } = d.config.retry;
  return delay(
    MIN_RECONNECT_DELAY_MS +
      backoffDelay(round, { baseDelayMs, maxDelayMs: MAX_RECONNECT_DELAY_MS }),
    closed,
  );
}

/**
 * Calls `open` until it succeeds, logging each failed round and backing off.
 *
 * @param d The cluster.
 * @param what The log message of a failed round, e.g. `"dbx: listen could not reconnect yet"`.
 * @param fields Fields of that log line.
 * @param closed Stops trying.
 * @param open One round (itself retried across nodes).
 * @returns `true` once `open` succeeded, `false` when `closed` aborted first.
 */
export async function reconnect(
  d: Dispatcher,
  what: string,
  fields: Record<string, unknown>,
  closed: AbortSignal,
  open: () => Promise<void>,
): Promise<boolean> {
  for (let round = 1;; round++) {
    try {
      await open();
      return true;
    } catch (error) {
      if (closed.aborted) return false;
      d.observer.log("warn", what, {
        ...fields,
        error: error instanceof Error ? error.message : String(error),
      });
    }
    try {
      await reconnectPause(d, round, closed);
    } catch {
      return false;
    }
  }
}

/**
 * Calls `end` when `signal` aborts (at once when it already has).
 *
 * @param signal The caller's signal.
 * @param end Ends the subscription.
 * @returns Removes the listener (call it when the subscription ends otherwise).
 */
export function endOnAbort(signal: AbortSignal, end: () => void): () => void {
  if (signal.aborted) {
    end();
    return () => {};
  }
  signal.addEventListener("abort", end, { once: true });
  return () => signal.removeEventListener("abort", end);
}

/**
 * Waits until `current()` is `undefined` or settled for good (it may be replaced while
 * waited for, e.g. a queue drained again), or `ms` have passed, whichever comes first.
 *
 * @param current The promise to wait for now; `undefined` when there is none.
 * @param ms The most to wait.
 * @param once Wait for the first promise only.
 * @returns Resolves when done waiting; never rejects.
 */
export async function settled(
  current: () => Promise<unknown> | undefined,
  ms: number,
  once = false,
): Promise<void> {
  const timer = new AbortController();
  const late = delay(ms, timer.signal).then(() => true, () => false);
  try {
    for (let p = current(); p !== undefined; p = once ? undefined : current()) {
      if (await Promise.race([p.then(() => false, () => false), late])) return;
    }
  } finally {
    timer.abort();
  }
}

/** Background work of a subscription (reconnects, checks, connections ending), awaited on close. */
export class Tasks {
  readonly #running = new Set<Promise<void>>();

  /**
   * Tracks `task` until it settles.
   *
   * @param task The work; it must not reject.
   */
  track(task: Promise<void>): void {
    const tracked = task.finally(() => this.#running.delete(tracked));
    this.#running.add(tracked);
  }

  /**
   * Waits until no tracked work is left, including work started meanwhile.
   *
   * @returns Resolves when nothing runs.
   */
  async idle(): Promise<void> {
    while (this.#running.size > 0) await Promise.all([...this.#running]);
  }
}
