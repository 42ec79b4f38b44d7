/**
 * The retry contract of each kind of routed call, as {@linkcode RetryOptions}
 * for `withRetry`: where it may go (`route.ts`), what of it may be re-sent,
 * how a write waits for a primary during a failover, and how a retry is
 * reported.
 *
 * @module
 */

import { abortedError } from "./attempt.ts";
import type { CallKind, Dispatcher } from "./dispatch.ts";
import { NoHealthyNodeError } from "../errors.ts";
import type { ReadOptions } from "../executor.ts";
import type { Failure } from "../failure.ts";
import type { Topology } from "../node/health.ts";
import type { Node } from "../node/node.ts";
import { delay, type RetryOptions, type RetryStep } from "./retry.ts";
import { parseLsn, pickReader, pickWriter, type ReadDemand } from "./route.ts";
import type { SessionState } from "./session.ts";

/**
 * The error for writes when no single healthy primary is known.
 *
 * @param d The cluster.
 * @param topology The snapshot.
 * @returns Why writes cannot run.
 */
export function noPrimary(d: Dispatcher, topology: Topology): NoHealthyNodeError {
  if (topology.primaries.length > 1) {
    return new NoHealthyNodeError(
      `refusing writes: ${topology.primaries.length} nodes report primary (${
        topology.primaries.map((n) => n.name).join(", ")
      })`,
    );
  }
  const down = d.nodes.find((n) => n.role === "primary" && !n.healthy);
  const cause = down?.state.error;
  return new NoHealthyNodeError(
    down === undefined
      ? "no node reports primary"
      : `no healthy primary: ${down.name} is down${
        cause instanceof Error ? ` (${cause.message})` : ""
      }`,
    { cause },
  );
}

/** How often a write waiting for a primary asks every node again. */
const PRIMARY_POLL_MS = 100;

/**
 * Waits until a single healthy primary is known, re-probing every node every
 * ~100 ms (concurrent waiters share the probe rounds), or until `deadline`.
 *
 * @throws a canceled / timeout DbxError when `signal` aborts.
 */
async function waitForPrimary(
  d: Dispatcher,
  deadline: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const started = performance.now();
  d.observer.log("debug", "dbx: waiting for a primary", {
    waitMs: Math.round(deadline - started),
  });
  while (pickWriter(d.checker.topology, []) === undefined) {
    const left = deadline - performance.now();
    if (left <= 0) return;
    try {
      await delay(Math.min(PRIMARY_POLL_MS, left), signal);
    } catch (reason) {
      throw abortedError(reason);
    }
    d.assertOpen();
    await d.checker.checkAll(true);
  }
  d.observer.log("debug", "dbx: a primary is known again", {
    waitedMs: Math.round(performance.now() - started),
  });
}

/**
 * Reports a failed attempt that is tried again (a statement, or a whole
 * `runTx` callback): the node's counter, a debug log, the `onRetry` hook.
 *
 * @param d The cluster.
 * @param node Where the attempt failed, when a node was picked.
 * @param attempt The attempt that failed (1-based).
 * @param error What it threw.
 */
export function reportRetry(
  d: Dispatcher,
  node: Node | undefined,
  attempt: number,
  error: unknown,
): void {
  node?.attemptRetried();
  d.observer.log("debug", "dbx: retrying", {
    attempt,
    node: node?.name,
    error: error instanceof Error ? error.message : String(error),
  });
  d.observer.hook("onRetry", { attempt, node: node?.name, delayMs: 0, error });
}

/** Reports a retry of a routed call; re-probes first after 25006. */
async function retried(d: Dispatcher, step: RetryStep<Node>): Promise<void> {
  const { attempt, node, error, failure } = step;
  reportRetry(d, node, attempt, error);
  // The server says it is not the primary: learn the new topology before
  // the retry instead of waiting for the next round.
  if (failure?.readOnly) await d.checker.checkAll();
}

/**
 * The retry options of a call: where it may go and what may be re-sent.
 *
 * - read: any eligible replica, then the primary; re-sent unless the server
 *   refused it as read-only (it writes, and must not drift to the primary);
 * - write: the primary; re-sent only when it never reached a server, or the
 *   server refused it for being read-only (nothing was applied);
 * - pin: the primary, nothing sent yet but maybe BEGIN (which changes nothing).
 *
 * @param d The cluster.
 * @param kind How the call is routed.
 * @param options The call's read options.
 * @param signal The call's signal.
 * @returns Options for `withRetry`.
 */
export function retryOptions(
  d: Dispatcher,
  kind: CallKind,
  options: ReadOptions | undefined,
  signal: AbortSignal | undefined,
  session: SessionState | undefined,
): RetryOptions<Node> {
  if (
    signal === undefined && session === undefined && d.plain?.[kind] !== undefined &&
    options?.maxLagMs === undefined && options?.consistentWith === undefined
  ) {
    return d.plain[kind];
  }
  const { retry, balancer } = d.config;
  const retryable = retry.retryable;
  let pick: (tried: readonly Node[]) => Node | undefined;
  let resendable: (f: Failure, err: unknown) => boolean;
  if (kind === "read") {
    const token = options?.consistentWith;
    const maxLagMs = options?.maxLagMs ?? d.config.maxLagMs;
    const tokenLsn = token === undefined ? undefined : parseLsn(token);
    const fixed: ReadDemand = { maxLagMs, minLsn: tokenLsn };
    pick = (tried) => {
      // A retry after close() began fails as closed, not on an ended pool.
      d.assertOpen();
      const topology = d.checker.topology;
      let demand = fixed;
      if (session !== undefined) {
        // Asked at every attempt: a probe may have covered the write meanwhile.
        const wants = session.demand(topology.primary);
        demand = wants === "primary"
          ? { maxLagMs, minLsn: tokenLsn, primaryOnly: true }
          : wants === undefined || (tokenLsn !== undefined && tokenLsn >= wants)
          ? fixed
          : { maxLagMs, minLsn: wants };
      }
      const { node, fallback } = pickReader(topology, balancer, tried, demand);
      if (session !== undefined && fallback === "not_caught_up") d.sessionReadsOnPrimary++;
      if (fallback !== undefined) {
        d.observer.log("debug", "dbx: read falls back to the primary", { reason: fallback });
        d.observer.hook("onReplicaFallback", { reason: fallback });
      }
      return node;
    };
    resendable = (f, err) => !f.readOnly && retryable(err);
  } else {
    pick = (tried) => (d.assertOpen(), pickWriter(d.checker.topology, tried));
    resendable = kind === "write"
      ? (f, err) => (!f.sent || f.readOnly) && retryable(err)
      : (_f, err) => retryable(err);
  }
  return {
    pick,
    resendable,
    backoff: retry,
    signal,
    ...(kind === "read" ? {} : {
      waitForNode: {
        ms: retry.waitForPrimaryMs,
        until: (deadline: number, s: AbortSignal | undefined) => waitForPrimary(d, deadline, s),
      },
    }),
    unavailable: () =>
      kind === "read"
        ? new NoHealthyNodeError(
          "no healthy node for reads: every replica and the primary are down",
        )
        : noPrimary(d, d.checker.topology),
    onRetry: (step) => retried(d, step),
  };
}
