/**
 * The config after validation and defaults, as `resolveConfig` returns it and the
 * cluster runs on (the input types are in `config.ts`).
 *
 * @module
 */

import type { Balancer } from "../call/balancer.ts";
import type { HealthCheckConfig, PoolConfig, RetryConfig, WithDefaults } from "./config.ts";
import type { ResolvedHedge } from "./hedge.ts";
import type { Logger, MetricsHook, NodeRole, Tracer } from "../observe/observe.ts";
import type { SslConfig } from "./tls.ts";
import type { TypeParsers } from "./type_parsers.ts";

/**
 * A node's settings after validation and defaults.
 *
 * @example
 * ```ts
 * import { resolveConfig } from "@codelab/dbx";
 *
 * const [master] = resolveConfig({ master: "postgres://app:pw@db1:5433/app" }).nodes;
 * console.log(master?.name, master?.redactedUrl); // "db1:5433" "postgres://app:***@db1:5433/app"
 * ```
 */
export interface ResolvedNode {
  /** Display name (never contains a password). */
  readonly name: string;
  /** The URL as given (with its password): only ever handed to the driver. */
  readonly url: string;
  /** The URL with the password replaced by `***`, for display. */
  readonly redactedUrl: string;
  /** Host name or address (IPv6 without brackets). */
  readonly host: string;
  /** TCP port. */
  readonly port: number;
  /** Role given by the config, `"unknown"` for `nodes` and multi-host URLs (the server's answer wins once probed). */
  readonly configuredRole: NodeRole;
  /** Pool settings with defaults and cluster-wide values applied. */
  readonly pool: WithDefaults<PoolConfig>;
  /** The node's tracer, else the cluster's. */
  readonly tracer: Tracer | undefined;
  /** TLS settings for pg, when given (`url` then carries no TLS parameter). */
  readonly ssl: boolean | SslConfig | undefined;
  /** PostgreSQL settings every connection starts with: the URL's `options`, then `session` (cluster, then node). */
  readonly session: Readonly<Record<string, string>>;
  /** The node's password, else the cluster's (not enumerable: no inspect or JSON shows it). */
  readonly password: string | (() => string | Promise<string>) | undefined;
}

/**
 * The whole config after validation and defaults.
 *
 * @example
 * ```ts
 * import { resolveConfig } from "@codelab/dbx";
 *
 * const resolved = resolveConfig({ master: "postgres://app@db1:5432/app", retry: { maxAttempts: 5 } });
 * console.log(resolved.retry.maxAttempts, resolved.healthCheck.intervalMs); // 5 2000
 * ```
 */
export interface ResolvedConfig {
  /** Master first, then replicas in config order. */
  readonly nodes: readonly ResolvedNode[];
  /** Retry policy with defaults. */
  readonly retry: WithDefaults<RetryConfig>;
  /** Health checking with defaults. */
  readonly healthCheck: WithDefaults<HealthCheckConfig>;
  /** Replica selection. */
  readonly balancer: Balancer;
  /** Hedged reads; undefined when off. */
  readonly hedge: ResolvedHedge | undefined;
  /** Logger (silent by default). */
  readonly logger: Logger;
  /** Metrics callbacks, if any. */
  readonly metrics: MetricsHook | undefined;
  /** Slow-query threshold, if set. */
  readonly slowQueryThresholdMs: number | undefined;
  /** Default replica lag bound for reads, if set. */
  readonly maxLagMs: number | undefined;
  /** Whether `connect()` waits for a primary. */
  readonly requirePrimary: boolean;
  /** Whether `connect()` waits for a replica (`target_session_attrs=standby` or `read-only`). */
  readonly requireStandby: boolean;
  /** Whether `connect()` waits for every node to answer. */
  readonly requireAllNodes: boolean;
  /** Whether nodes that do not answer at startup are reported by `console.warn` (no logger given). */
  readonly consoleWarnings: boolean;
  /** Pipelining settings; undefined when off. */
  readonly pipeline: { readonly connections: number; readonly maxDepth: number } | undefined;
  /** Distinct statement texts that get a name; 0 when the cache is off. */
  readonly statementCache: number;
  /** Value parsers, when not pg's. */
  readonly types: TypeParsers | undefined;
}
