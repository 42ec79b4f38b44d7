/**
 * The `hedge` setting: what a hedged read waits for and how much extra load
 * it may add, with its defaults and eager validation.
 *
 * @module
 */

import { fail, MAX_TIMER_MS, plainObject } from "./check.ts";
import { KNOWN, onlyKnownKeys } from "./keys.ts";

/**
 * Hedged reads: a read not answered after `afterMs` is also sent to the
 * next-best eligible replica; the first answer wins and the other statement
 * is cancelled on its server unless it answers within about twice its
 * replica's recent latency (one that went on a pipelined connection, a
 * statement whose recent runs were fast, is left to finish there instead: a
 * cancel would hit the statements pipelined with it). Only cluster `read*`
 * calls routed to replicas are hedged: never writes, transactions,
 * read-your-writes sessions, `withConnection`, streams, COPY or batches.
 *
 * @example
 * ```ts
 * import { connect, type HedgeConfig } from "@codelab/dbx";
 *
 * const hedge: HedgeConfig = { afterMs: "p95", maxExtraLoad: 0.05 };
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app", "postgres://app@db3:5432/app"],
 *   hedge,
 * });
 * ```
 */
export interface HedgeConfig {
  /**
   * How long a read waits for its node before it is also sent to another:
   * a number of ms, or `"p95"` for the 95th percentile of the chosen node's
   * recent statements (no hedge until the node has a few, nor to a replica
   * whose recent latency is above that p95: it would not answer sooner).
   * @default "p95"
   */
  afterMs?: number | "p95" | undefined;
  /**
   * Most extra statements hedging may send, as a share of hedgeable reads
   * (a token bucket: a short burst of up to 10 is allowed). In (0, 1].
   * @default 0.05
   */
  maxExtraLoad?: number | undefined;
}

/**
 * The `hedge` setting after validation: every field filled in.
 *
 * @example
 * ```ts
 * import { resolveConfig } from "@codelab/dbx";
 *
 * const { hedge } = resolveConfig({ master: "postgres://app@db1:5432/app", hedge: {} });
 * console.log(hedge); // { afterMs: "p95", maxExtraLoad: 0.05 }
 * ```
 */
export interface ResolvedHedge {
  /** ms, or the chosen node's recent p95. */
  readonly afterMs: number | "p95";
  /** Extra statements per hedgeable read, at most. */
  readonly maxExtraLoad: number;
}

/**
 * Validates the `hedge` setting.
 *
 * @param value The config's `hedge`.
 * @returns The resolved setting, or undefined when hedging is off.
 * @throws {ConfigError} naming the field and the value.
 */
export function resolveHedge(value: unknown): ResolvedHedge | undefined {
  if (value === undefined || value === false) return undefined;
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    fail("hedge", 'must be false or an object such as { afterMs: "p95" }', value);
  }
  const h = plainObject("hedge", value);
  onlyKnownKeys("hedge", h, KNOWN.hedge);
  const afterMs = h.afterMs ?? "p95";
  if (
    afterMs !== "p95" &&
    (typeof afterMs !== "number" || !Number.isFinite(afterMs) || afterMs < 0 ||
      afterMs > MAX_TIMER_MS)
  ) {
    fail("hedge.afterMs", `must be "p95" or a number of ms from 0 to ${MAX_TIMER_MS}`, afterMs);
  }
  const share = h.maxExtraLoad ?? 0.05;
  if (typeof share !== "number" || !Number.isFinite(share) || share <= 0 || share > 1) {
    fail("hedge.maxExtraLoad", "must be a number in (0, 1]", share);
  }
  return { afterMs: afterMs as number | "p95", maxExtraLoad: share as number };
}
