/**
 * Replica selection strategies. A {@linkcode Balancer} picks one node among
 * candidates the cluster already filtered by role, lag and consistency; it
 * skips nodes that are not healthy and returns `undefined` when none is
 * eligible. It only orders the eligible: which nodes those are is routing's
 * business (`route.ts`).
 *
 * @module
 */

/**
 * What a balancer sees of a node.
 *
 * @example
 * ```ts
 * import { roundRobin, type BalancerNode } from "@codelab/dbx";
 *
 * const nodes: BalancerNode[] = [{ name: "a", healthy: false, inFlight: 0 }, { name: "b", healthy: true, inFlight: 2 }];
 * console.log(roundRobin().pick(nodes)?.name); // "b"
 * ```
 */
export interface BalancerNode {
  /** Node name. */
  readonly name: string;
  /** Whether the node is currently considered up. */
  readonly healthy: boolean;
  /** Statements currently running on the node through this cluster. */
  readonly inFlight: number;
  /**
   * Moving average of the node's recent round trips (statements and health
   * probes), in ms; undefined before the first.
   */
  readonly latencyMs?: number | undefined;
  /**
   * When the node last answered a statement (`performance.now()`; probes do
   * not count); undefined before the first.
   */
  readonly latencySampledAt?: number | undefined;
}

/**
 * Chooses one node among candidates. Implementations must skip unhealthy
 * nodes and return `undefined` when no candidate is healthy; they are called
 * on every read, so they should not allocate.
 *
 * @example A balancer that prefers a node by name
 * ```ts
 * import type { Balancer, BalancerNode } from "@codelab/dbx";
 *
 * const preferLocal: Balancer = {
 *   pick<N extends BalancerNode>(nodes: readonly N[]): N | undefined {
 *     return nodes.find((n) => n.healthy && n.name.startsWith("local")) ??
 *       nodes.find((n) => n.healthy);
 *   },
 * };
 * ```
 */
export interface Balancer {
  /**
   * Picks a healthy node.
   *
   * @param nodes Candidates in a stable order.
   * @returns A healthy candidate, or `undefined` when none is healthy.
   */
  pick<N extends BalancerNode>(nodes: readonly N[]): N | undefined;
}

/** Index of the first healthy node scanning from `start`, wrapping around; -1 when none. */
function scanFrom(nodes: readonly BalancerNode[], start: number): number {
  const n = nodes.length;
  for (let i = 0; i < n; i++) {
    const j = (start + i) % n;
    if (nodes[j]!.healthy) return j;
  }
  return -1;
}

/**
 * Index of the healthy node with the lowest `score`, scanning from `start`
 * and wrapping around: the first in turn keeps the pick unless a later one
 * scores lower by more than the share `margin` and by at least `floor`, so
 * equals take turns. -1 when none is healthy.
 */
function lowest<N extends BalancerNode>(
  nodes: readonly N[],
  start: number,
  score: (node: N) => number,
  margin: number,
  floor = 0,
): number {
  const n = nodes.length;
  let best = -1;
  let bestScore = Infinity;
  for (let i = 0; i < n; i++) {
    const j = (start + i) % n;
    const node = nodes[j]!;
    if (!node.healthy) continue;
    const s = score(node);
    if (best < 0 || (s < bestScore * (1 - margin) && bestScore - s >= floor)) {
      best = j;
      bestScore = s;
    }
  }
  return best;
}

const inFlightOf = (node: BalancerNode): number => node.inFlight;

/** Expected wait: statements ahead (and this one) times recent latency; 0 before any sample. */
const expectedWaitOf = (node: BalancerNode): number => (node.inFlight + 1) * (node.latencyMs ?? 0);

/**
 * Round-robin over healthy nodes: successive calls take successive nodes,
 * and an unhealthy node's turn goes to the next healthy one.
 *
 * @returns A new round-robin balancer (each has its own counter).
 *
 * @example
 * ```ts
 * import { roundRobin } from "@codelab/dbx";
 *
 * const b = roundRobin();
 * const nodes = [{ name: "a", healthy: true, inFlight: 0 }, { name: "b", healthy: true, inFlight: 0 }];
 * console.log(b.pick(nodes)?.name, b.pick(nodes)?.name); // "a" "b"
 * ```
 */
export function roundRobin(): Balancer {
  let next = 0;
  return {
    pick<N extends BalancerNode>(nodes: readonly N[]): N | undefined {
      if (nodes.length === 0) return undefined;
      const j = scanFrom(nodes, next % nodes.length);
      if (j < 0) return undefined;
      // Continue after the node picked, so a down node's turn is not handed
      // to its neighbour on top of the neighbour's own turn.
      next = j + 1;
      return nodes[j];
    },
  };
}

/**
 * Uniformly random healthy node.
 *
 * @param rng Source of numbers in [0, 1). @default Math.random
 * @returns A random balancer.
 *
 * @example
 * ```ts
 * import { random } from "@codelab/dbx";
 *
 * const b = random();
 * console.log(b.pick([{ name: "a", healthy: true, inFlight: 0 }])?.name); // "a"
 * ```
 */
export function random(rng: () => number = Math.random): Balancer {
  return {
    pick<N extends BalancerNode>(nodes: readonly N[]): N | undefined {
      if (nodes.length === 0) return undefined;
      // Count healthy nodes first so every healthy node has the same chance,
      // instead of favouring the one after a run of unhealthy ones.
      let healthy = 0;
      for (const node of nodes) if (node.healthy) healthy++;
      if (healthy === 0) return undefined;
      let k = Math.min(healthy - 1, Math.floor(rng() * healthy));
      for (const node of nodes) {
        if (node.healthy && k-- === 0) return node;
      }
      return undefined;
    },
  };
}

/**
 * The healthy node with the fewest statements in flight; ties are broken
 * round-robin so equal nodes share the load.
 *
 * @returns A least-in-flight balancer.
 *
 * @example
 * ```ts
 * import { leastInFlight } from "@codelab/dbx";
 *
 * const b = leastInFlight();
 * const nodes = [{ name: "a", healthy: true, inFlight: 4 }, { name: "b", healthy: true, inFlight: 1 }];
 * console.log(b.pick(nodes)?.name); // "b"
 * ```
 */
export function leastInFlight(): Balancer {
  let next = 0;
  return {
    pick<N extends BalancerNode>(nodes: readonly N[]): N | undefined {
      if (nodes.length === 0) return undefined;
      const best = lowest(nodes, next % nodes.length, inFlightOf, 0);
      if (best < 0) return undefined;
      next = best + 1;
      return nodes[best];
    },
  };
}

/**
 * Options of {@linkcode latencyAware}.
 *
 * @example
 * ```ts
 * import { latencyAware, type LatencyAwareOptions } from "@codelab/dbx";
 *
 * const options: LatencyAwareOptions = { exploreShare: 0.01, staleMs: 1_000 };
 * const balancer = latencyAware(options);
 * ```
 */
export interface LatencyAwareOptions {
  /**
   * Share of picks that may go to a node whose latency is stale instead of
   * the best one, so a node that was slow is tried again and wins back its
   * share once it recovers. `0` never explores (a slow node then comes back
   * through health probes only).
   * @default 0.02
   */
  exploreShare?: number | undefined;
  /**
   * A node with nothing in flight that answered no statement for this long
   * is stale: it may be explored.
   * @default 500
   */
  staleMs?: number | undefined;
}

/**
 * Nodes whose scores are this close (relative, or within TIE_MS) are equals:
 * they take turns. Sub-millisecond differences are noise on a busy host, and
 * not worth sending every read of a quiet client to one replica.
 */
const TIE = 0.2;
const TIE_MS = 0.5;

function option(field: string, value: unknown, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || value > max) {
    throw new RangeError(
      `Cannot create latencyAware() as '${field}' must be a number from 0 to ${max}: ` +
        `current value is ${String(value)}`,
    );
  }
  return value;
}

/**
 * The healthy node expected to answer first: each node's statements in
 * flight plus one, times its recent latency (a moving average of its
 * statements' and health probes' round trips); the lowest wins, and nodes
 * within 20 % or 0.5 ms of each other take turns. A small share of picks
 * (`exploreShare`) goes to a node that has answered no statement for
 * `staleMs` and has nothing in flight, so a node that was slow (a GC pause,
 * a cold disk, a far zone) is tried again and wins back its share within a
 * few seconds of recovering. A node with no round trip yet counts as fast. It never widens
 * or narrows the candidates: health, lag limits, sessions and routes still
 * decide those. The default balancer.
 *
 * @param options Exploration share and staleness.
 * @returns A latency-aware balancer (each has its own state).
 * @throws {RangeError} when `exploreShare` is not in [0, 1] or `staleMs` not
 * a non-negative finite number.
 *
 * @example
 * ```ts
 * import { latencyAware } from "@codelab/dbx";
 *
 * const b = latencyAware();
 * const nodes = [
 *   { name: "near", healthy: true, inFlight: 2, latencyMs: 0.5 },
 *   { name: "far", healthy: true, inFlight: 0, latencyMs: 30 },
 * ];
 * console.log(b.pick(nodes)?.name); // "near": 3 × 0.5 ms beats 1 × 30 ms
 * ```
 */
export function latencyAware(options: LatencyAwareOptions = {}): Balancer {
  const share = option("exploreShare", options.exploreShare, 0.02, 1);
  const staleMs = option("staleMs", options.staleMs, 500, Number.MAX_VALUE);
  let next = 0;
  let credit = 0;
  return {
    pick<N extends BalancerNode>(nodes: readonly N[]): N | undefined {
      if (nodes.length === 0) return undefined;
      let best = lowest(nodes, next % nodes.length, expectedWaitOf, TIE, TIE_MS);
      if (best < 0) return undefined;
      credit += share;
      if (credit >= 1) {
        // Look for a stale node once per 1 / share picks, not on every pick.
        credit -= 1;
        const stale = stalest(nodes, best, performance.now() - staleMs);
        if (stale >= 0) best = stale;
      }
      next = best + 1;
      return nodes[best];
    },
  };
}

/** The healthy node other than `best` with nothing in flight sampled longest before `before`; -1 when none. */
function stalest(nodes: readonly BalancerNode[], best: number, before: number): number {
  let found = -1;
  let oldest = before;
  for (let j = 0; j < nodes.length; j++) {
    const node = nodes[j]!;
    if (j === best || !node.healthy || node.inFlight > 0) continue;
    const at = node.latencySampledAt ?? -Infinity;
    if (at < oldest) {
      found = j;
      oldest = at;
    }
  }
  return found;
}
