/**
 * Replica selection strategies. A {@linkcode Balancer} picks one node among
 * candidates the cluster already filtered by role, lag and consistency; it
 * skips nodes that are not healthy and returns `undefined` when none is
 * eligible.
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
      const n = nodes.length;
      if (n === 0) return undefined;
      const start = next % n;
      let best = -1;
      for (let i = 0; i < n; i++) {
        const j = (start + i) % n;
        const node = nodes[j]!;
        if (node.healthy && (best < 0 || node.inFlight < nodes[best]!.inFlight)) best = j;
      }
      if (best < 0) return undefined;
      next = best + 1;
      return nodes[best];
    },
  };
}
