/**
 * How long statement texts take on a node, for the pipes' head-of-line rules
 * (`pipeline.ts`): the node's typical statement time, the threshold above
 * which a statement counts as slow, and per text whether it is slow (its
 * recent runs on a pipe all took longer, or it was seen stuck) and so goes to
 * a pooled connection, with a trial on a pipe now and then.
 *
 * @module
 */

/**
 * A pipe with statements in flight and no answer for this long takes no more
 * (head-of-line), and a statement text whose recent runs all took this long is sent
 * on a pooled connection: on a pipe it would hold up every statement behind it. At
 * least this many milliseconds...
 */
const SLOW_MS = 2;

/**
 * ... and at least this many times the node's typical statement: when this process
 * is busy (many callers, large results), every answer is handled late and every
 * statement's own time grows alike; that is no reason to leave the pipes, while a
 * statement slower than its peers by this factor is.
 */
const SLOW_FACTOR = 8;

/** ... but never more than this: a statement this slow always leaves the pipes. */
const SLOW_CAP_MS = 20;

/**
 * A pipe with no answer for twice the longest recent wait between answers
 * of fast texts (halved every {@linkcode PEAK_HALF_LIFE_MS}), and at least
 * {@linkcode SLOW_CAP_MS}, is stuck; never later than this. On a loaded
 * host or server a backend can go unscheduled for tens of ms while the
 * others answer: that is no reason to call its statement's text slow and
 * send every run of it to the pooled connections, which do the same work
 * at several times the cost.
 */
const STUCK_MAX_MS = 200;

/** Half-life of the longest recent wait ({@linkcode STUCK_MAX_MS}). */
const PEAK_HALF_LIFE_MS = 1_000;

/** Statement texts whose durations are remembered (the map is reset when full). */
const DURATIONS_MAX = 4_096;

/** Runs of a text per window of {@linkcode Runs}. */
const WINDOW = 4;

/**
 * A text found slow is tried on a pipe again after this long (its runs on
 * pooled connections can look slow for as long as this process is busy), and
 * after twice as long each time the trial finds it slow still...
 */
const TRIAL_MS = 1_000;

/** ... up to this. */
const TRIAL_MAX_MS = 60_000;

/**
 * The recent runs of one statement text. Its time is the fastest of its last
 * {@linkcode WINDOW} to 2 × {@linkcode WINDOW} runs: a text is slow when every
 * recent run was, not when one answer was handled late because this process
 * was busy (a full event loop delays whichever answer comes first).
 */
class Runs {
  #current: number;
  #previous: number;
  #n = 0;
  /** A whole window of runs is behind it: its time is not a first run's guess. */
  settled = false;
  /** While slow: when it may be tried on a pipe again (`performance.now()`). */
  trialAt = 0;
  /** The wait before the next trial. */
  trialWait = TRIAL_MS;
  /** When a run of it last answered within the slow threshold, on any pipe (`performance.now()`). */
  fastAt = Number.NEGATIVE_INFINITY;

  /**
   * @param ms The first run's time.
   * @param stuck Seen stuck (slow now), else one run: not enough to call it slow (a first
   * run also prepares the statement).
   * @param now When it was seen stuck (`performance.now()`).
   */
  constructor(ms: number, stuck: boolean, now = 0) {
    this.#current = ms;
    this.#previous = stuck ? ms : 0;
    if (stuck) this.stuck(ms, now);
  }

  /** The text's time (ms). */
  get ms(): number {
    return Math.min(this.#current, this.#previous);
  }

  /** One more run. */
  add(ms: number): void {
    if (this.#n === WINDOW) {
      this.settled = true;
      this.#previous = this.#current;
      this.#current = ms;
      this.#n = 1;
    } else {
      if (ms < this.#current) this.#current = ms;
      this.#n++;
    }
  }

  /** Seen stuck for `ms` at `now`: slow now; its next run alone decides again. */
  stuck(ms: number, now: number): void {
    this.#current = this.#previous = ms;
    this.#n = WINDOW;
    this.trialAt = now + this.trialWait;
  }
}

/** The statement texts of one node and how long they take. */
export class SlowTexts {
  /** Recent runs per statement text. */
  readonly #durations = new Map<string, Runs>();
  /** Recent duration (ms, moving average) of every statement, whatever its text. */
  #typical = 0;
  /** The longest recent wait for a fast text's answer on a pipe (ms), and when it was seen. */
  #peak = 0;
  #peakAt = 0;

  /**
   * How long a pipe may wait for an answer before it counts as stuck (ms):
   * {@linkcode STUCK_MAX_MS}.
   *
   * @param now `performance.now()`.
   */
  stuckMs(now: number): number {
    return Math.min(STUCK_MAX_MS, Math.max(SLOW_CAP_MS, 2 * this.#recentPeak(now)));
  }

  /** {@linkcode #peak}, halved every {@linkcode PEAK_HALF_LIFE_MS} since it was seen. */
  #recentPeak(now: number): number {
    return this.#peak * 0.5 ** (Math.max(0, now - this.#peakAt) / PEAK_HALF_LIFE_MS);
  }

  /** How long a statement may take before it counts as slow, now (ms). */
  slowMs(): number {
    return Math.min(SLOW_CAP_MS, Math.max(SLOW_MS, SLOW_FACTOR * this.#typical));
  }

  /**
   * Where a statement of `text` goes now: `"pool"` when it is slow and its
   * next trial on a pipe is not due (a due trial is taken by this call, and
   * is `"unproven"`); `"fast"` when its recent runs on a pipe were fast;
   * `"unproven"` when it has none yet.
   *
   * @param text The statement text.
   * @param slow {@linkcode slowMs}, now.
   * @param now `performance.now()`.
   * @returns The verdict.
   */
  verdict(text: string, slow: number, now: number): "pool" | "fast" | "unproven" {
    const runs = this.#durations.get(text);
    if (runs === undefined) return "unproven";
    if (runs.ms <= slow) return "fast";
    // Slow: the pool, but now and then one goes to a pipe, so that a text slow only
    // while this process was busy comes back (its answer on the pipe decides).
    if (now < runs.trialAt) return "pool";
    runs.trialAt = now + runs.trialWait;
    runs.trialWait = Math.min(TRIAL_MAX_MS, runs.trialWait * 2);
    return "unproven";
  }

  /**
   * Whether `text`'s recent runs on a pipe were fast (no trial taken).
   *
   * @param text The statement text.
   * @param slow {@linkcode slowMs}, now.
   * @returns False for a text slow or not seen yet.
   */
  isFast(text: string, slow: number): boolean {
    const ms = this.#durations.get(text)?.ms;
    return ms !== undefined && ms <= slow;
  }

  /**
   * Whether `text` is slow (no trial taken).
   *
   * @param text The statement text.
   * @param slow {@linkcode slowMs}, now.
   * @returns True when its recent runs took longer than `slow`.
   */
  isSlow(text: string, slow: number): boolean {
    return (this.#durations.get(text)?.ms ?? 0) > slow;
  }

  /**
   * A statement of `text` has waited `waited` ms on a stalled pipe: stuck for
   * longer than {@linkcode stuckMs}, its text is slow from now on -- unless a
   * run of the same text answered fast on another pipe meanwhile: then its
   * backend is late (unscheduled on a loaded server), not the text, and the
   * pipe only takes no more statements until it answers.
   *
   * @param text The stalled statement's text.
   * @param waited How long it has waited.
   * @param now `performance.now()`.
   * @returns Whether the text was marked slow by this call.
   */
  stuck(text: string, waited: number, now: number): boolean {
    if (waited <= this.stuckMs(now)) return false;
    const runs = this.#durations.get(text);
    if (runs !== undefined && (runs.ms >= waited || now - runs.fastAt < waited)) return false;
    if (runs === undefined) this.#remember(text, new Runs(waited, true, now));
    else runs.stuck(waited, now);
    return true;
  }

  /**
   * Remembers how long a statement of `text` took on a pipe: a text found
   * slow comes back to the pipes when a run is fast again.
   *
   * @param text The statement text.
   * @param ms Its own time.
   * @param typical Whether it counts toward the node's typical time: not when it was
   * read together with the answer before it.
   * @param now `performance.now()`.
   */
  took(text: string, ms: number, typical = true, now = performance.now()): void {
    const slow = this.slowMs();
    let runs = this.#durations.get(text);
    if (runs === undefined) this.#remember(text, runs = new Runs(ms, false));
    else {
      runs.add(ms);
      if (runs.ms <= slow) {
        runs.trialWait = TRIAL_MS;
        // A wait for a text fast over a window of runs: how late a pipe answers
        // now (`stuckMs`). (A text's first runs read as fast: one is no proof.)
        if (runs.settled && ms > this.#recentPeak(now)) {
          this.#peak = ms;
          this.#peakAt = now;
        }
      }
    }
    if (ms <= slow) runs.fastAt = now;
    if (typical) this.#typical = this.#typical * 0.95 + ms * 0.05;
  }

  /**
   * Remembers how long a statement sent on a pooled connection took (because
   * its text was slow, or every pipe was full): it keeps a slow text slow or
   * brings it back to the pipes, but never makes one slow. Its time includes
   * however late this process handled the answer, which under load is most of
   * it; only a pipe's view (a stall, every run slow there) tells a slow
   * statement from a busy process. It counts toward the node's typical time.
   *
   * @param text The statement text.
   * @param ms Its time.
   */
  tookPooled(text: string, ms: number): void {
    const runs = this.#durations.get(text);
    if (runs !== undefined && runs.ms > this.slowMs()) runs.add(ms);
    // The node's typical time follows what runs on the pool too: with every
    // statement of a kind there, no pipe would tell it otherwise.
    this.#typical = this.#typical * 0.95 + ms * 0.05;
  }

  #remember(text: string, runs: Runs): void {
    if (this.#durations.size >= DURATIONS_MAX) this.#durations.clear();
    this.#durations.set(text, runs);
  }
}
