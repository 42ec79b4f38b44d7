/**
 * The counters of a node that the attempt runner moves (statements, errors,
 * retries, in flight) and the window of recent latencies behind the
 * percentiles of `stats()`.
 *
 * @module
 */

/** How many recent attempts the latency percentiles of `stats()` cover. */
export const LATENCY_WINDOW = 1024;

/** A node's attempt counters; moved only by the attempt runner and retry reporting. */
export class AttemptCounters {
  readonly #latencies = new Float64Array(LATENCY_WINDOW);
  #latencyCount = 0;
  #queries = 0;
  #errors = 0;
  #retries = 0;
  #inFlight = 0;

  /** Statements running on this node now. */
  get inFlight(): number {
    return this.#inFlight;
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
   * @param failed Whether it failed.
   */
  attemptEnded(ms: number, failed: boolean): void {
    this.#inFlight--;
    if (failed) this.#errors++;
    this.#latencies[this.#latencyCount++ % LATENCY_WINDOW] = ms;
  }

  /** Counts a failed attempt that is tried again (retry reporting only). */
  attemptRetried(): void {
    this.#retries++;
  }

  /**
   * Latency percentiles over the recorded window.
   *
   * @returns p50 and p99 in ms, or undefined before any attempt.
   */
  latencyPercentiles(): { p50: number; p99: number } | undefined {
    const n = Math.min(this.#latencyCount, LATENCY_WINDOW);
    if (n === 0) return undefined;
    const sorted = this.#latencies.slice(0, n).sort();
    const at = (q: number) => sorted[Math.min(n - 1, Math.ceil(q * n) - 1)]!;
    return { p50: at(0.5), p99: at(0.99) };
  }
}
