/**
 * Eager validation of a {@linkcode ClusterConfig}: fills in every default
 * and turns every bad value into a {@linkcode ConfigError} naming the field
 * and the value (passwords redacted). Re-exported by `config.ts`.
 *
 * @module
 */

import { isRetryable } from "../failure.ts";
import type { ClusterConfig, ResolvedConfig, RetryConfig } from "./config.ts";
import { HEALTH_CHECK_DEFAULTS, POOL_DEFAULTS, RETRY_DEFAULTS } from "./defaults.ts";
import {
  checkMethods,
  checkTracer,
  duration,
  fail,
  flag,
  integer,
  plainObject,
  plainObjectOrInstance,
  resolvePool,
} from "./check.ts";
import { resolveHedge } from "./hedge.ts";
import { KNOWN, onlyKnownKeys } from "./keys.ts";
import { resolveTopology } from "./nodes.ts";
import { noopLogger } from "../observe/observe.ts";

function pipelineOf(
  value: unknown,
): { readonly connections: number; readonly maxDepth: number } | undefined {
  if (value === false) return undefined;
  if (value === undefined || value === true) return { connections: 4, maxDepth: 64 };
  const p = plainObject("pipeline", value);
  onlyKnownKeys("pipeline", p, KNOWN.pipeline);
  return {
    connections: integer("pipeline.connections", p.connections, 4, 1),
    maxDepth: integer("pipeline.maxDepth", p.maxDepth, 64, 1),
  };
}

/**
 * Validates a {@linkcode ClusterConfig} and fills in every default.
 *
 * @param config The user's config.
 * @returns The resolved config.
 * @throws {ConfigError} naming the first invalid field and its (redacted) value.
 *
 * @example
 * ```ts
 * import { resolveConfig } from "@codelab/dbx";
 *
 * const resolved = resolveConfig({ master: "postgres://app@db1:5432/app" });
 * console.log(resolved.retry.maxAttempts); // 3
 * ```
 */
export function resolveConfig(config: ClusterConfig | string): ResolvedConfig {
  if (
    typeof config !== "string" &&
    (config === null || typeof config !== "object" || Array.isArray(config))
  ) {
    fail("config", "must be a ClusterConfig object or a connection string", config);
  }
  const c: Partial<ClusterConfig> = typeof config === "string" ? { nodes: [config] } : config;
  onlyKnownKeys(undefined, c as Record<string, unknown>, KNOWN.cluster);
  const tracer = c.tracer;
  if (tracer !== undefined) checkTracer("tracer", tracer);
  const pool = resolvePool("pool", c.pool, POOL_DEFAULTS);
  const target = resolveTopology(c, pool, tracer);
  const nodes = target.nodes;

  const r = plainObject("retry", c.retry);
  onlyKnownKeys("retry", r, KNOWN.retry);
  const baseDelayMs = duration("retry.baseDelayMs", r.baseDelayMs, RETRY_DEFAULTS.baseDelayMs);
  const maxDelayMs = duration("retry.maxDelayMs", r.maxDelayMs, RETRY_DEFAULTS.maxDelayMs);
  if (maxDelayMs < baseDelayMs) {
    fail("retry.maxDelayMs", `must be >= 'retry.baseDelayMs' (${baseDelayMs})`, maxDelayMs);
  }
  if (r.retryable !== undefined && typeof r.retryable !== "function") {
    fail("retry.retryable", "must be a function", r.retryable);
  }
  const h = plainObject("healthCheck", c.healthCheck);
  onlyKnownKeys("healthCheck", h, KNOWN.healthCheck);
  if (c.logger !== undefined) checkMethods("logger", c.logger, ["debug", "info", "warn", "error"]);
  if (c.metrics !== undefined) plainObjectOrInstance("metrics", c.metrics);
  const slow = c.slowQueryThresholdMs;
  return {
    nodes,
    retry: {
      maxAttempts: integer("retry.maxAttempts", r.maxAttempts, RETRY_DEFAULTS.maxAttempts, 1),
      baseDelayMs,
      maxDelayMs,
      waitForPrimaryMs: duration(
        "retry.waitForPrimaryMs",
        r.waitForPrimaryMs,
        RETRY_DEFAULTS.waitForPrimaryMs,
      ),
      retryable: (r.retryable as RetryConfig["retryable"]) ?? isRetryable,
    },
    healthCheck: {
      intervalMs: duration(
        "healthCheck.intervalMs",
        h.intervalMs,
        HEALTH_CHECK_DEFAULTS.intervalMs,
        true,
      ),
      timeoutMs: duration(
        "healthCheck.timeoutMs",
        h.timeoutMs,
        HEALTH_CHECK_DEFAULTS.timeoutMs,
        true,
      ),
      failuresBeforeDown: integer(
        "healthCheck.failuresBeforeDown",
        h.failuresBeforeDown,
        HEALTH_CHECK_DEFAULTS.failuresBeforeDown,
        1,
      ),
    },
    balancer: target.balancer,
    hedge: resolveHedge(c.hedge),
    logger: c.logger ?? noopLogger,
    metrics: c.metrics,
    maxLagMs: c.maxLagMs === undefined ? undefined : duration("maxLagMs", c.maxLagMs, 0),
    requirePrimary: target.requirePrimary,
    requireStandby: target.requireStandby,
    requireAllNodes: flag("requireAllNodes", c.requireAllNodes, false),
    consoleWarnings: c.logger === undefined,
    pipeline: pipelineOf(c.pipeline),
    types: c.types === undefined
      ? undefined
      : (checkMethods("types", c.types, ["getTypeParser"]), c.types),
    statementCache: c.statementCache === false
      ? 0
      : integer("statementCache", c.statementCache, 256, 0),
    slowQueryThresholdMs: slow === undefined
      ? undefined
      : duration("slowQueryThresholdMs", slow, 0),
  };
}
