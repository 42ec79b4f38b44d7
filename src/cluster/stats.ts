/**
 * `stats()` and `health()`: the report types (plain snapshots) and their
 * builders from the nodes and the topology.
 *
 * @module
 */

import type { Node } from "../node/node.ts";
import type { NodeRole } from "../observe/observe.ts";
import { lagOf, type RouteTopology } from "../call/route.ts";

/**
 * Counters and pool numbers of one node. A plain snapshot.
 *
 * @example
 * ```ts
 * import { connect, type NodeStats } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const saturated = (n: NodeStats) => n.waitingClients > 0 && n.idleConns === 0;
 * console.log(cluster.stats().nodes.filter(saturated).map((n) => n.name));
 * ```
 */
export interface NodeStats {
  /** Node name (never contains a password). */
  readonly name: string;
  /** Role as last reported by the server. */
  readonly role: NodeRole;
  /** Whether queries are routed to it. */
  readonly healthy: boolean;
  /** Open connections in its pool. */
  readonly totalConns: number;
  /** Open connections not in use. */
  readonly idleConns: number;
  /** Callers waiting for a connection. */
  readonly waitingClients: number;
  /** Pool size limit. */
  readonly maxConns: number;
  /** Attempts started on this node. */
  readonly queries: number;
  /** Attempts that failed on this node. */
  readonly errors: number;
  /** Failed attempts on this node that were retried (here or elsewhere). */
  readonly retries: number;
  /** Statements running on this node now. */
  readonly inFlight: number;
  /** Median attempt duration over the last 1024 attempts, in ms (absent before any). */
  readonly latencyP50Ms?: number;
  /** 99th percentile attempt duration over the last 1024 attempts, in ms. */
  readonly latencyP99Ms?: number;
  /**
   * Moving average of the node's recent round trips (statements that reached
   * the server, and health probes), in ms: what `latencyAware()` weighs.
   */
  readonly recentLatencyMs?: number;
}

/** The counters of {@linkcode NodeStats} that {@linkcode ClusterStats} sums. */
export type SummedStat =
  | "totalConns"
  | "idleConns"
  | "waitingClients"
  | "maxConns"
  | "queries"
  | "errors"
  | "retries"
  | "inFlight";

/**
 * {@linkcode Cluster.stats} result: one entry per node plus sums.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const { nodes, totals } = cluster.stats();
 * console.log(totals.inFlight, nodes.map((n) => `${n.name} ${n.role} p99=${n.latencyP99Ms}`));
 * ```
 */
export interface ClusterStats {
  /** Per node, config order (master first). */
  readonly nodes: readonly NodeStats[];
  /**
   * Sums over every node of {@linkcode NodeStats}' counters, and
   * `sessionReadsOnPrimary`: reads of read-your-writes sessions sent to the
   * primary because no replica was known to have replayed their writes yet.
   */
  readonly totals: Readonly<Pick<NodeStats, SummedStat>> & {
    readonly sessionReadsOnPrimary: number;
  };
  /**
   * Hedged reads (the `hedge` setting): `sent` extra statements sent because
   * a read was not answered in time, `won` of them answered first. Zero
   * without `hedge`.
   */
  readonly hedges: { readonly sent: number; readonly won: number };
}

/**
 * One node in a {@linkcode HealthReport}.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * for (const n of (await cluster.health()).nodes) console.log(n.name, n.healthy, n.lagMs ?? "-");
 * ```
 */
export interface NodeHealth {
  /** Node name. */
  readonly name: string;
  /** Role the server reported. */
  readonly role: NodeRole;
  /** Whether queries are routed to it. */
  readonly healthy: boolean;
  /** Round trip of the last probe, in ms. */
  readonly latencyMs?: number;
  /** Replica: how far replay is behind, in ms (0 when caught up). */
  readonly lagMs?: number;
  /** Replica: WAL bytes between the primary's position and the replica's replay position. */
  readonly lagBytes?: number;
  /** Why the node is down. */
  readonly error?: string;
}

/**
 * {@linkcode Cluster.health} result, for readiness endpoints.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const report = await cluster.health();
 * const status = report.writable ? 200 : 503;
 * ```
 */
export interface HealthReport {
  /** `true` when a single healthy primary accepts writes. */
  readonly writable: boolean;
  /** Per node, config order. */
  readonly nodes: readonly NodeHealth[];
}

const round2 = (ms: number) => Math.round(ms * 100) / 100;

type Summed = Exclude<keyof ClusterStats["totals"], "sessionReadsOnPrimary">;
const SUMMED: readonly Summed[] = [
  "totalConns",
  "idleConns",
  "waitingClients",
  "maxConns",
  "queries",
  "errors",
  "retries",
  "inFlight",
];

/**
 * Builds {@linkcode ClusterStats} from the nodes.
 *
 * @param nodes Every node, config order.
 * @param cluster The cluster's own counters: session reads on the primary, hedges.
 * @returns The snapshot.
 */
export function buildStats(
  nodes: readonly Node[],
  cluster: {
    readonly sessionReadsOnPrimary: number;
    readonly hedges?: { readonly sent: number; readonly won: number } | undefined;
  },
): ClusterStats {
  const list = nodes.map((n): NodeStats => {
    const pool = n.poolCounts();
    const p = n.latency.percentiles();
    const recent = n.latency.recentMs;
    return {
      name: n.name,
      role: n.role,
      healthy: n.healthy,
      totalConns: pool.total,
      idleConns: pool.idle,
      waitingClients: pool.waiting,
      maxConns: n.maxConns,
      ...n.counters,
      ...(p === undefined ? {} : { latencyP50Ms: round2(p.p50), latencyP99Ms: round2(p.p99) }),
      ...(recent === undefined ? {} : { recentLatencyMs: round2(recent) }),
    };
  });
  const totals = {} as Record<Summed, number>;
  for (const k of SUMMED) totals[k] = list.reduce((acc, n) => acc + n[k], 0);
  const hedges = cluster.hedges;
  return {
    nodes: list,
    totals: { ...totals, sessionReadsOnPrimary: cluster.sessionReadsOnPrimary },
    hedges: { sent: hedges?.sent ?? 0, won: hedges?.won ?? 0 },
  };
}

/**
 * Builds a {@linkcode HealthReport} from the nodes after a check round.
 *
 * @param nodes Every node, config order.
 * @param topology The round's snapshot.
 * @returns The report.
 */
export function buildHealth(nodes: readonly Node[], topology: RouteTopology<Node>): HealthReport {
  const primaryLsn = topology.primary?.state.probe?.lsn;
  const list = nodes.map((n): NodeHealth => {
    const { role, healthy, probe, error } = n.state;
    const entry: { -readonly [K in keyof NodeHealth]: NodeHealth[K] } = {
      name: n.name,
      role,
      healthy,
    };
    if (probe !== undefined && healthy) {
      entry.latencyMs = round2(probe.latencyMs);
      if (role === "replica") {
        const lag = lagOf(n, primaryLsn);
        if (lag !== undefined) entry.lagMs = Math.round(lag);
        if (primaryLsn !== undefined && probe.lsn !== undefined) {
          entry.lagBytes = Number(primaryLsn > probe.lsn ? primaryLsn - probe.lsn : 0n);
        }
      }
    }
    if (!healthy && error !== undefined) {
      entry.error = error instanceof Error ? error.message : String(error);
    }
    return entry;
  });
  return { writable: topology.primary !== undefined && topology.primary.healthy, nodes: list };
}
