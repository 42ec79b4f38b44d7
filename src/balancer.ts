/**
 * Replica selection strategies. A {@linkcode Balancer} picks one node among
 * candidates the cluster already filtered by role, lag and consistency; it
 * skips nodes that are not healthy and returns `undefined` when none is
 * eligible.
 *
 * @module
 */

/** What a balancer sees of a node. */
export interface BalancerNode {
  /** Node name. */
  readonly name: string;
  /** Whether the node is currently considered up. */
  readonly healthy: boolean;
  /** Statements currently running on the node through this cluster. */
  readonly inFlight: number;
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

/** First healthy node scanning from `start`, wrapping around. */
function scanFrom<N extends BalancerNode>(nodes: readonly N[], start: number): N | undefined {
  const n = nodes.length;
  for (let i = 0; i < n; i++) {
    const node = nodes[(start + i) % n]!;
    if (node.healthy) return node;
  }
  return undefined;
}

/**
 * Round-robin over healthy nodes: successive calls take successive nodes,
 * and an unhealthy node's turn goes to the next healthy one. The default.
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
      const start = next % nodes.length;
      next = (start + 1) % nodes.length;
      return scanFrom(nodes, start);
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
      const n = nodes.length;
      if (n === 0) return undefined;
      const start = next % n;
      next = (start + 1) % n;
      let best: N | undefined;
      for (let i = 0; i < n; i++) {
        const node = nodes[(start + i) % n]!;
        if (node.healthy && (best === undefined || node.inFlight < best.inFlight)) best = node;
      }
      return best;
    },
  };
}
