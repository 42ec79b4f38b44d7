/**
 * How long a node takes to answer, from the round trips it made: a moving
 * average the latency-aware balancer weighs, a decaying histogram for the
 * recent p95 a hedged read waits for, and the last attempts for the p50 and
 * p99 of `stats()`. Fed by the attempt runner (statements that reached the
 * server and were not cut short) and by health probes (the average only).
 *
 * @module
 */

/** How many recent attempts the latency percentiles of `stats()` cover. */
export const LATENCY_WINDOW = 1024;

/**
 * Half-life of the moving average, in ms: a round trip after a gap this long
 * weighs half, after a few such gaps nearly all, so a node read again after
 * a while (a probe, an exploring read) is judged by what it does now.
 */
const HALF_LIFE_MS = 100;

/** Least weight of a sample: on a busy node the average spans ~32 statements. */
const MIN_WEIGHT = 1 / 32;

/** Histogram buckets: bucket i holds samples in [FLOOR_MS * RATIO^i, FLOOR_MS * RATIO^(i+1)). */
const BUCKETS = 48;
const FLOOR_MS = 0.05;
const RATIO = 1.3;
const LOG_RATIO = Math.log(RATIO);

/** Counts are halved when they reach this: the histogram forgets at this pace. */
const HISTOGRAM_SPAN = 512;

/** Fewer samples than this give no p95: no hedge on a guess. */
const MIN_P95_SAMPLES = 16;

/** The p95 is worked out again after this many samples (not on every read). */
const P95_REFRESH = 16;

/** The recent round trips of one node. */
export class Latency {
  #ewma = 0;
  #sampledAt: number | undefined;
  #statementAt: number | undefined;
  readonly #window = new Float64Array(LATENCY_WINDOW);
  #windowCount = 0;
  /** Decaying counts per bucket; undefined when nobody asks for a p95. */
  readonly #buckets: Float64Array | undefined;
  #bucketTotal = 0;
  #p95: number | undefined;
  #sinceP95 = 0;

  /**
   * @param histogram Keep the histogram behind {@linkcode p95} (hedged reads on `"p95"`).
   */
  constructor(histogram: boolean) {
    this.#buckets = histogram ? new Float64Array(BUCKETS) : undefined;
  }

  /** Moving average of recent round trips, in ms; undefined before the first. */
  get recentMs(): number | undefined {
    return this.#sampledAt === undefined ? undefined : this.#ewma;
  }

  /**
   * When the newest statement round trip ended (`performance.now()`);
   * undefined before the first. Probes do not count: a node only probed has
   * had no reads for a while, and a read tells how it serves reads.
   */
  get statementAt(): number | undefined {
    return this.#statementAt;
  }

  /**
   * Counts the duration of an attempt for `stats()`, whatever its outcome.
   *
   * @param ms Its duration.
   */
  attempt(ms: number): void {
    this.#window[this.#windowCount++ % LATENCY_WINDOW] = ms;
  }

  /**
   * A statement's round trip: it reached the server and was answered.
   *
   * @param ms How long it took.
   * @param at When it ended (`performance.now()`).
   */
  statement(ms: number, at: number): void {
    this.#average(ms, at);
    this.#statementAt = at;
    const buckets = this.#buckets;
    if (buckets === undefined) return;
    const i = ms <= FLOOR_MS
      ? 0
      : Math.min(BUCKETS - 1, Math.floor(Math.log(ms / FLOOR_MS) / LOG_RATIO));
    buckets[i]!++;
    if (++this.#bucketTotal >= HISTOGRAM_SPAN) {
      for (let b = 0; b < BUCKETS; b++) buckets[b]! /= 2;
      this.#bucketTotal /= 2;
    }
    if (++this.#sinceP95 >= P95_REFRESH) this.#p95 = undefined;
  }

  /**
   * A health probe's round trip: it moves the average, not the histogram (a
   * probe runs alone on an idle connection, unlike the statements a hedge waits for).
   *
   * @param ms How long the probe's query took.
   * @param at When it ended (`performance.now()`).
   */
  probe(ms: number, at: number): void {
    this.#average(ms, at);
  }

  #average(ms: number, at: number): void {
    const last = this.#sampledAt;
    if (last === undefined) {
      this.#ewma = ms;
    } else {
      const w = Math.max(MIN_WEIGHT, 1 - 2 ** (-Math.max(0, at - last) / HALF_LIFE_MS));
      this.#ewma += (ms - this.#ewma) * w;
    }
    this.#sampledAt = at;
  }

  /**
   * The 95th percentile of recent statement round trips (the upper bound of
   * its histogram bucket, so a hedge waits slightly longer rather than shorter).
   *
   * @returns The p95 in ms, or undefined with too few samples or no histogram.
   */
  p95(): number | undefined {
    const buckets = this.#buckets;
    if (buckets === undefined || this.#bucketTotal < MIN_P95_SAMPLES) return undefined;
    if (this.#p95 !== undefined) return this.#p95;
    const above = this.#bucketTotal * 0.05;
    let seen = 0;
    let b = BUCKETS - 1;
    for (; b > 0; b--) {
      seen += buckets[b]!;
      if (seen > above) break;
    }
    this.#sinceP95 = 0;
    return this.#p95 = FLOOR_MS * RATIO ** (b + 1);
  }

  /**
   * Percentiles over the last {@linkcode LATENCY_WINDOW} attempts.
   *
   * @returns p50 and p99 in ms, or undefined before any attempt.
   */
  percentiles(): { p50: number; p99: number } | undefined {
    const n = Math.min(this.#windowCount, LATENCY_WINDOW);
    if (n === 0) return undefined;
    const sorted = this.#window.slice(0, n).sort();
    const at = (q: number) => sorted[Math.min(n - 1, Math.ceil(q * n) - 1)]!;
    return { p50: at(0.5), p99: at(0.99) };
  }
}
