/**
 * Which node a statement goes to: the primary for writes; for reads a
 * replica the balancer picks among those within `maxLagMs` and past the
 * `consistentWith` position and not yet tried, else the primary (with the
 * reason). Pure functions of a topology snapshot: no I/O, no clock.
 *
 * @module
 */

import type { Balancer, BalancerNode } from "./balancer.ts";
import type { ReplicaFallbackEvent } from "../observe/observe.ts";

/** What routing reads of a node: its balancer view and its last probe. */
export interface RouteNode extends BalancerNode {
  /** The health checker's snapshot. */
  readonly state: {
    readonly probe:
      | { readonly lsn: bigint | undefined; readonly replayAgeMs: number | undefined }
      | undefined;
  };
}

/** The nodes by role, as the last check round saw them. */
export interface RouteTopology<N extends RouteNode> {
  /** The one healthy node reporting primary, when exactly one does. */
  readonly primary: N | undefined;
  /** Nodes reporting recovery (read replicas), in config order. */
  readonly replicas: readonly N[];
}

/** Why a read went to the primary. */
export type FallbackReason = ReplicaFallbackEvent["reason"];

/** A read's demands on replicas. */
export interface ReadDemand {
  /** Skip replicas whose replay lag is larger, in ms. */
  readonly maxLagMs?: number | undefined;
  /** Skip replicas that have not replayed this WAL position. */
  readonly minLsn?: bigint | undefined;
  /** Skip every replica: a session's write no probe has covered yet. */
  readonly primaryOnly?: boolean | undefined;
}

/**
 * Parses a `pg_lsn` text (`16/B374D848`) into a comparable number.
 *
 * @param text The LSN text (a `writeToken()` token).
 * @returns The position, or undefined when `text` is not an LSN.
 */
export function parseLsn(text: string | null | undefined): bigint | undefined {
  if (typeof text !== "string") return undefined;
  const slash = text.indexOf("/");
  // pg_lsn's halves are 32 bits: a wider one is no position any server reports.
  if (
    slash <= 0 || slash === text.length - 1 || !/^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/.test(text)
  ) {
    return undefined;
  }
  return (BigInt(`0x${text.slice(0, slash)}`) << 32n) | BigInt(`0x${text.slice(slash + 1)}`);
}

/**
 * Formats a WAL position as `pg_lsn` text (`16/B374D848`).
 *
 * @param lsn The position.
 * @returns Its text, as PostgreSQL prints it.
 */
export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${
    (lsn & 0xffffffffn).toString(16).toUpperCase()
  }`;
}

/**
 * Replication lag of a replica in ms. Equal or later WAL positions mean 0:
 * on an idle primary the last replayed transaction can be old although the
 * replica has everything, so the replay age counts only when behind.
 *
 * @param node The replica.
 * @param primaryLsn The primary's position from the same round, when known.
 * @returns The lag, or undefined before the first probe or when unknown.
 */
export function lagOf(node: RouteNode, primaryLsn: bigint | undefined): number | undefined {
  const p = node.state.probe;
  if (p === undefined) return undefined;
  if (primaryLsn !== undefined && p.lsn !== undefined && p.lsn >= primaryLsn) return 0;
  return p.replayAgeMs;
}

/**
 * The node for a write: the healthy primary, unless already tried.
 *
 * @param topology The snapshot.
 * @param tried Nodes this call already failed on.
 * @returns The primary, or undefined.
 */
export function pickWriter<N extends RouteNode>(
  topology: RouteTopology<N>,
  tried: readonly N[],
): N | undefined {
  const { primary } = topology;
  return primary !== undefined && primary.healthy && !tried.includes(primary) ? primary : undefined;
}

/**
 * The node for a read: a replica meeting `demand` chosen by `balancer`,
 * else the healthy primary.
 *
 * @param topology The snapshot.
 * @param balancer Chooses among eligible replicas.
 * @param tried Nodes this call already failed on.
 * @param demand Lag and position bounds.
 * @returns The node (undefined when none is eligible) and, when a read goes
 * to the primary although replicas exist, why.
 */
export function pickReader<N extends RouteNode>(
  topology: RouteTopology<N>,
  balancer: Balancer,
  tried: readonly N[],
  demand: ReadDemand,
): { node: N | undefined; fallback?: FallbackReason } {
  const { primary, replicas } = topology;
  const { maxLagMs, minLsn, primaryOnly } = demand;
  let candidates = replicas;
  if (primaryOnly) {
    candidates = [];
  } else if (tried.length > 0 || maxLagMs !== undefined || minLsn !== undefined) {
    const primaryLsn = primary?.state.probe?.lsn;
    candidates = replicas.filter((n) => {
      if (tried.includes(n)) return false;
      if (maxLagMs !== undefined) {
        const lag = lagOf(n, primaryLsn);
        if (lag === undefined || lag > maxLagMs) return false;
      }
      if (minLsn !== undefined) {
        const lsn = n.state.probe?.lsn;
        if (lsn === undefined || lsn < minLsn) return false;
      }
      return true;
    });
  }
  const replica = balancer.pick(candidates) as N | undefined;
  if (replica !== undefined) return { node: replica };
  if (primary === undefined || !primary.healthy || tried.includes(primary)) {
    return { node: undefined };
  }
  if (replicas.length === 0) return { node: primary };
  const fallback: FallbackReason = replicas.every((n) => !n.healthy || tried.includes(n))
    ? "no_healthy_replica"
    : minLsn !== undefined || primaryOnly
    ? "not_caught_up"
    : maxLagMs !== undefined
    ? "lagging"
    : "no_healthy_replica";
  return { node: primary, fallback };
}
