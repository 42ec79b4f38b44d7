/**
 * The counters of a node that the attempt runner moves (statements, errors,
 * retries, in flight) and its recent latency (`latency.ts`): the moving average
 * the balancer weighs, the p95 a hedge waits for, and the window behind the
 * percentiles of `stats()`.
 *
 * @module
 */

import { Latency } from "./latency.ts";

export { LATENCY_WINDOW } from "./latency.ts";

/** A node's attempt counters; moved only by the attempt runner and retry reporting. */
export class AttemptCounters {
  /** Recent round trips: what the balancer weighs and a hedge waits for. */
  readonly latency: Latency;
  #queries = 0;
  #errors = 0;
  #retries = 0;
  #inFlight = 0;

  /**
   * @param p95 Keep the histogram behind the latency's p95 (hedged reads on `"p95"`).
   */
  constructor(p95: boolean) {
    this.latency = new Latency(p95);
  }

  /** Statements running on this node now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Moving average of recent round trips (statements and probes), in ms. */
  get latencyMs(): number | undefined {
    return this.latency.recentMs;
  }

  /** When the newest statement round trip ended (`performance.now()`). */
  get latencySampledAt(): number | undefined {
    return this.latency.statementAt;
  }

  /** Counters since the cluster started. */
  get counters(): { queries: number; errors: number; retries: number; inFlight: number } {
    return {
      queries: this.#queries,
      errors: this.#errors,
      retries: this.#retries,
      inFlight: this.#inFlight,
    };
  }

  /** Counts an attempt that starts now (attempt runner only). */
  attemptStarted(): void {
    this.#queries++;
    this.#inFlight++;
  }

  /**
   * Counts an attempt that ended (attempt runner only).
   *
   * @param ms Its duration.
   * @param failed Whether it failed (a read that lost a hedge race did not).
   * @param at When it ended, if its duration was a round trip of this node
   * (it reached the server and was not cut short): what the balancer learns from.
   */
  attemptEnded(ms: number, failed: boolean, at?: number): void {
    this.#inFlight--;
    if (failed) this.#errors++;
    this.latency.attempt(ms);
    if (at !== undefined) this.latency.statement(ms, at);
  }

  /** Counts a failed attempt that is tried again (retry reporting only). */
  attemptRetried(): void {
    this.#retries++;
  }
}
