/**
 * Hedged reads: one attempt of a read that, when its node has not answered
 * after `afterMs` (or the node's recent p95), is also sent to the next-best
 * eligible replica. The first answer wins; the other statement, unless it
 * answers within about twice its node's recent latency, is aborted through
 * its own signal, which cancels it on the server the way a deadline does
 * (`cancellable` in `pg_internals.ts`). A statement the node's pipes
 * took (a text whose recent runs there were fast: `pipeline.ts`) cannot be
 * cancelled without hitting the statements pipelined with it: it is left
 * to finish and its answer dropped. Both statements run through the attempt
 * runner, so they are counted, observed and classified like any other, and
 * the attempt as a whole fails only when neither answered: the retry
 * contract (`withRetry`) sees one attempt either way.
 *
 * @module
 */

import { type AttemptInfo, SUPERSEDED } from "./attempt.ts";
import { ClusterClosedError } from "../errors.ts";
import type { Dispatcher } from "./dispatch.ts";
import type { ReadOptions } from "../executor.ts";
import type { ResolvedHedge } from "../config/hedge.ts";
import type { Node } from "../node/node.ts";
import { parseLsn, pickReader } from "./route.ts";
import { type RetryOptions, withRetry } from "./retry.ts";

/** Hedges allowed in a burst, on top of `maxExtraLoad` × reads. */
const BURST = 10;

/** Longest a losing statement is given to answer before it is cancelled. */
const MAX_GRACE_MS = 250;

/** One statement of a hedged read. */
interface Leg {
  readonly node: Node;
  /** Aborted with {@linkcode SUPERSEDED} when the statement lost. */
  readonly controller: AbortController;
  done: boolean;
  /** The cancel of a loser, pending. */
  grace?: ReturnType<typeof setTimeout>;
}

/**
 * Cancels a losing statement unless it answers within about twice its
 * node's recent latency (at most {@linkcode MAX_GRACE_MS}): a CancelRequest
 * costs the server a new process and the connection its statement ran on,
 * more than a statement about to answer costs by finishing. One that is
 * still running then (a long query) is cancelled on its server.
 */
function cancelLate(leg: Leg): void {
  const ms = Math.min(MAX_GRACE_MS, Math.max(1, 2 * (leg.node.latencyMs ?? 0)));
  leg.grace = setTimeout(() => leg.controller.abort(SUPERSEDED), ms);
}

/** A routed call's work (`dispatch.ts` `routedWork`), sent on the node each attempt picks. */
export interface RoutedWork<R> {
  /**
   * Runs the work on `node`: cancelled on the server when `signal` aborts,
   * unless `pipeable` (a hedged read without a caller's signal) let it join a
   * pipe. `startedAt`: when its attempt started (`performance.now()`).
   */
  send(
    node: Node,
    signal: AbortSignal | undefined,
    pipeable?: boolean,
    startedAt?: number,
  ): Promise<R>;
}

/** A hedge due at `at` (`performance.now()`), unless its read was answered first. */
interface Due {
  readonly at: number;
  readonly fire: () => void;
  live: boolean;
}

/**
 * The hedges due of a cluster's reads in flight, on one timer: a timer per
 * read would cost more than the reads it hedges. The timer runs only while
 * some read waits for a hedge, so none outlives the reads.
 */
class HedgeTimers {
  #due: Due[] = [];
  #live = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;

  /** Calls `fire` in `ms`, unless {@linkcode remove}d first. */
  add(ms: number, fire: () => void): Due {
    const due: Due = { at: performance.now() + ms, fire, live: true };
    this.#due.push(due);
    this.#live++;
    if (due.at < this.#timerAt) this.#arm(due.at);
    return due;
  }

  /** Its read was answered (or failed): no hedge. */
  remove(due: Due): void {
    if (!due.live) return;
    due.live = false;
    if (--this.#live > 0) {
      // Answered reads go at the next tick; a long afterMs must not pile them up.
      if (this.#due.length > 2 * this.#live + 64) this.#due = this.#due.filter((d) => d.live);
      return;
    }
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Infinity;
    this.#due = [];
  }

  #arm(at: number): void {
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#tick(), Math.max(0, at - performance.now()));
  }

  #tick(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    const now = performance.now();
    const waiting: Due[] = [];
    let next = Infinity;
    for (const due of this.#due) {
      if (!due.live) continue;
      if (due.at > now) {
        waiting.push(due);
        next = Math.min(next, due.at);
        continue;
      }
      due.live = false;
      this.#live--;
      due.fire();
    }
    this.#due = waiting;
    if (next < Infinity) this.#arm(next);
  }
}

/** The hedging state of a cluster: the budget of extra statements and the counts for `stats()`. */
export class Hedger {
  /** When the reads in flight are due a hedge. */
  readonly timers: HedgeTimers = new HedgeTimers();
  /** Extra statements sent because a read was not answered in time. */
  sent = 0;
  /** Of those, the ones that answered first. */
  won = 0;
  readonly #afterMs: number | "p95";
  readonly #share: number;
  /** Extra statements that may be sent now: `share` per hedgeable read, up to BURST. */
  #tokens = 1;

  /**
   * @param config The resolved `hedge` setting.
   */
  constructor(config: ResolvedHedge) {
    this.#afterMs = config.afterMs;
    this.#share = config.maxExtraLoad;
  }

  /**
   * Counts a hedgeable read attempt on `node` and says how long it waits before a hedge.
   *
   * @param node Where the read goes first.
   * @param replicas Every replica (config order).
   * @returns ms, or undefined when it is not hedged: the budget is spent, or
   * (`"p95"`) the node has no recent p95 yet, or no other healthy replica
   * usually answers within it (a hedge would not be answered sooner).
   */
  admit(node: Node, replicas: readonly Node[]): number | undefined {
    const tokens = this.#tokens = Math.min(BURST, this.#tokens + this.#share);
    // Not hedged, it costs no timer and may share a pipelined connection.
    if (tokens < 1) return undefined;
    if (this.#afterMs !== "p95") return this.#afterMs;
    const wait = node.latency.p95();
    if (wait === undefined) return undefined;
    for (const other of replicas) {
      if (other !== node && other.healthy && (other.latencyMs ?? 0) <= wait) return wait;
    }
    return undefined;
  }

  /**
   * Takes one extra statement from the budget, for a hedge to `target`
   * after `waitedMs`; false when the budget is spent, or (`"p95"`) when
   * `target` usually takes longer than that p95: it would not answer sooner.
   */
  take(target: Node, waitedMs: number): boolean {
    if (this.#tokens < 1) return false;
    if (this.#afterMs === "p95" && (target.latencyMs ?? 0) > waitedMs) return false;
    this.#tokens -= 1;
    this.sent++;
    return true;
  }
}

/**
 * The replica a hedge of a read on `first` goes to: the balancer's pick among
 * the replicas the read may use, `first` excepted. Never the primary: a
 * hedge adds load, and the primary is for writes.
 */
function hedgeTarget(
  d: Dispatcher,
  first: Node,
  options: ReadOptions | undefined,
): Node | undefined {
  const topology = d.checker.topology;
  const token = options?.consistentWith;
  try {
    // Closing: the pools take no new statement.
    d.assertOpen();
    const { node, fallback } = pickReader(topology, d.config.balancer, [first], {
      maxLagMs: options?.maxLagMs ?? d.config.maxLagMs,
      minLsn: token === undefined ? undefined : parseLsn(token),
    });
    return fallback === undefined && node !== topology.primary ? node : undefined;
  } catch (error) {
    // This runs on a timer: a custom balancer that throws must not crash the process.
    if (!(error instanceof ClusterClosedError)) {
      d.observer.log("error", "dbx: choosing a replica to hedge a read threw", { error });
    }
    return undefined;
  }
}

/**
 * A read outside a session, hedged at each attempt ({@linkcode hedgedAttempt}),
 * with retries by `retry`.
 *
 * @param d The cluster.
 * @param hedger The cluster's hedging state.
 * @param info The statement, for hooks and tracers.
 * @param signal The caller's signal.
 * @param options The read's lag and position bounds.
 * @param work The statement.
 * @param retry The read's retry options.
 * @returns The first answer of the attempt that succeeded.
 */
export function hedgedRead<R>(
  d: Dispatcher,
  hedger: Hedger,
  info: Omit<AttemptInfo, "attempt">,
  signal: AbortSignal | undefined,
  options: ReadOptions | undefined,
  work: RoutedWork<R>,
  retry: RetryOptions<Node>,
): Promise<R> {
  return withRetry((node, attempt) => {
    const attemptInfo = { sql: info.sql, argCount: info.argCount, attempt };
    return hedgedAttempt(d, hedger, node, attemptInfo, signal, options, work);
  }, retry);
}

/**
 * One attempt of a read on `node`, hedged: after the wait, the same work on
 * another replica too, within the hedge budget. Resolves with the first
 * answer and, unless it answers in time, aborts the other statement
 * ({@linkcode SUPERSEDED}: cancelled on its server, or dropped when it was
 * pipelined); rejects
 * with the first node's error once every statement sent failed, or at once
 * when the caller's signal aborted. No timer outlives its statements.
 *
 * @param d The cluster.
 * @param hedger The cluster's hedging state.
 * @param node The node the read was routed to.
 * @param info The attempt, for hooks and tracers.
 * @param signal The caller's signal.
 * @param options The read's lag and position bounds (the hedge target meets them too).
 * @param work The statement.
 * @returns The first answer.
 */
export function hedgedAttempt<R>(
  d: Dispatcher,
  hedger: Hedger,
  node: Node,
  info: AttemptInfo,
  signal: AbortSignal | undefined,
  options: ReadOptions | undefined,
  work: RoutedWork<R>,
): Promise<R> {
  // A read on the primary had no replica to go to: nothing to hedge it with.
  const afterMs = node.role === "replica"
    ? hedger.admit(node, d.checker.topology.replicas)
    : undefined;
  if (afterMs === undefined) {
    return d.runner.run(node, info, signal, (at) => work.send(node, signal, undefined, at));
  }
  // Without a caller's signal either statement may be pipelined (and then only dropped if it loses).
  const pipeable = signal === undefined;
  return new Promise<R>((resolve, reject) => {
    const legs: Leg[] = [];
    let running = 0;
    let settled = false;
    let firstError: { error: unknown } | undefined;
    let hedgeError: { error: unknown } | undefined;
    const settle = (winner: Leg | undefined) => {
      settled = true;
      hedger.timers.remove(wait);
      for (const leg of legs) if (leg !== winner && !leg.done) cancelLate(leg);
    };
    const send = (target: Node, hedge: boolean) => {
      const leg: Leg = { node: target, controller: new AbortController(), done: false };
      legs.push(leg);
      const own = leg.controller.signal;
      const s = signal === undefined ? own : AbortSignal.any([signal, own]);
      running++;
      const ended = () => {
        running--;
        leg.done = true;
        clearTimeout(leg.grace);
      };
      d.runner.run(target, info, s, (at) => work.send(target, s, pipeable, at)).then(
        (result) => {
          ended();
          if (settled) return;
          if (hedge) hedger.won++;
          settle(leg);
          resolve(result);
        },
        (error: unknown) => {
          ended();
          if (hedge) hedgeError = { error };
          else firstError = { error };
          if (settled) return;
          // The other statement may still answer, unless the caller gave up.
          if (running > 0 && !signal?.aborted) return;
          settle(undefined);
          reject((firstError ?? hedgeError)!.error);
        },
      );
    };
    const wait: Due = hedger.timers.add(afterMs, () => {
      if (settled) return;
      const target = hedgeTarget(d, node, options);
      if (target !== undefined && hedger.take(target, afterMs)) send(target, true);
    });
    send(node, false);
  });
}
