/**
 * Typo-proof config: the settings each level of a `ClusterConfig` accepts,
 * and the check that names an unknown key with the closest known one.
 *
 * @module
 */

import type {
  ClusterConfig,
  HealthCheckConfig,
  NodeConfig,
  PoolConfig,
  RetryConfig,
} from "./config.ts";
import type { HedgeConfig } from "./hedge.ts";
import { ConfigError } from "../errors.ts";

/** The keys of a config type, as a list the compiler checks is complete and exact. */
function keysOf<T>(keys: Record<keyof T, true>): readonly string[] {
  return Object.keys(keys);
}

/**
 * The settings each level accepts. A setting added to a config interface fails
 * type-checking here until it is listed.
 */
export const KNOWN = {
  cluster: keysOf<ClusterConfig>({
    master: true,
    replicas: true,
    nodes: true,
    pool: true,
    retry: true,
    healthCheck: true,
    balancer: true,
    hedge: true,
    logger: true,
    metrics: true,
    tracer: true,
    slowQueryThresholdMs: true,
    maxLagMs: true,
    requirePrimary: true,
    requireAllNodes: true,
    pipeline: true,
    statementCache: true,
    types: true,
    session: true,
    password: true,
  }),
  node: keysOf<NodeConfig>({
    name: true,
    url: true,
    pool: true,
    tracer: true,
    ssl: true,
    session: true,
    password: true,
  }),
  pool: keysOf<PoolConfig>({
    max: true,
    min: true,
    idleTimeoutMs: true,
    maxLifetimeMs: true,
    connectTimeoutMs: true,
  }),
  retry: keysOf<RetryConfig>({
    maxAttempts: true,
    baseDelayMs: true,
    maxDelayMs: true,
    waitForPrimaryMs: true,
    retryable: true,
  }),
  healthCheck: keysOf<HealthCheckConfig>({
    intervalMs: true,
    timeoutMs: true,
    failuresBeforeDown: true,
  }),
  pipeline: keysOf<Exclude<ClusterConfig["pipeline"], boolean | undefined>>({
    connections: true,
    maxDepth: true,
  }),
  hedge: keysOf<HedgeConfig>({
    afterMs: true,
    maxExtraLoad: true,
  }),
};

/**
 * Rejects a key that is not a setting of its level (a typo would otherwise be ignored
 * and its default used), naming its path and the closest setting.
 *
 * @param field The level's path (`pool`, `replicas[1]`), undefined at the top.
 * @param value The level's object.
 * @param known Its settings, from {@linkcode KNOWN}.
 * @throws {ConfigError} for the first unknown key.
 */
export function onlyKnownKeys(
  field: string | undefined,
  value: Record<string, unknown>,
  known: readonly string[],
): void {
  const path = (key: string) => field === undefined ? key : `${field}.${key}`;
  for (const key of Object.keys(value)) {
    if (known.includes(key)) continue;
    const near = closest(key, known);
    const hint = near === undefined
      ? `known settings: ${known.join(", ")}`
      : `did you mean '${path(near)}'?`;
    throw new ConfigError(
      path(key),
      `Cannot connect: '${path(key)}' is not a known setting (${hint})`,
    );
  }
}

/**
 * The known key a typo most likely meant: the nearest by edit distance (case ignored)
 * when it is near enough, else the nearest known key that contains the typo or is
 * contained in it (`depth` -> `maxDepth`, `maxConnections` -> `max`).
 */
function closest(key: string, known: readonly string[]): string | undefined {
  const lower = key.toLowerCase();
  const ranked = known
    .map((name) => ({ name, lower: name.toLowerCase() }))
    .map((k) => ({ ...k, distance: editDistance(lower, k.lower) }))
    .sort((a, b) => a.distance - b.distance);
  const nearest = ranked[0];
  if (nearest !== undefined && nearest.distance <= Math.max(2, Math.floor(key.length / 3))) {
    return nearest.name;
  }
  return ranked.find((k) => k.lower.includes(lower) || lower.includes(k.lower))?.name;
}

/** Levenshtein distance: insertions, deletions and substitutions, one row at a time. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j]! + 1, current[j - 1]! + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length]!;
}
