/**
 * Cluster configuration: the plain-object form of the Go library's
 * functional options, its documented defaults, and eager validation that
 * turns every bad value into a {@linkcode ConfigError} naming the field and
 * the value (passwords redacted).
 *
 * @module
 */

import { type Balancer, roundRobin } from "./balancer.ts";
import { ConfigError, isRetryable } from "./errors.ts";
import { type Logger, type MetricsHook, noopLogger, type Tracer } from "./observe.ts";

/**
 * Per-node connection pool settings (one `pg.Pool` per node).
 *
 * @example
 * ```ts
 * import type { PoolConfig } from "@codelab/dbx";
 *
 * const pool: PoolConfig = { max: 20, min: 2, idleTimeoutMs: 10_000 };
 * ```
 */
export interface PoolConfig {
  /** Most connections open at once. @default 10 */
  max?: number;
  /** Connections kept open even when idle. @default 0 */
  min?: number;
  /** Close a connection idle for this long (0 = never). @default 30_000 */
  idleTimeoutMs?: number;
  /** Retire a connection after this long, once idle (0 = never). @default 3_600_000 */
  maxLifetimeMs?: number;
  /** Give up establishing a connection (or waiting for a free one) after this long. @default 5_000 */
  connectTimeoutMs?: number;
}

/**
 * How failed statements are retried (see the retry contract in the README).
 *
 * @example
 * ```ts
 * import { isConnectionError, type RetryConfig } from "@codelab/dbx";
 *
 * // Retry only connection failures, a little longer than the default.
 * const retry: RetryConfig = { maxAttempts: 5, baseDelayMs: 100, retryable: isConnectionError };
 * ```
 */
export interface RetryConfig {
  /** Attempts in total, the first included; 1 disables retries. @default 3 */
  maxAttempts?: number;
  /** Backoff base: the cap before jitter is `baseDelayMs * 2 ** (n - 1)`. @default 50 */
  baseDelayMs?: number;
  /** Upper bound of one backoff delay. @default 1_000 */
  maxDelayMs?: number;
  /**
   * Extra veto on retrying: return `false` to fail at once. It cannot make an
   * unsafe retry happen (a write that may have reached the server is never re-sent).
   * @default isRetryable
   */
  retryable?: (err: unknown) => boolean;
}

/**
 * Background health checking.
 *
 * @example
 * ```ts
 * import type { HealthCheckConfig } from "@codelab/dbx";
 *
 * const healthCheck: HealthCheckConfig = { intervalMs: 500, timeoutMs: 300, failuresBeforeDown: 2 };
 * ```
 */
export interface HealthCheckConfig {
  /** Time between probe rounds. @default 2_000 */
  intervalMs?: number;
  /** Bound on one probe (connect and query). @default 1_000 */
  timeoutMs?: number;
  /** Consecutive failed probes before a node is marked down. @default 1 */
  failuresBeforeDown?: number;
}

/**
 * One node given as an object, to name it or tune it.
 *
 * @example
 * ```ts
 * import type { NodeConfig } from "@codelab/dbx";
 *
 * const replica: NodeConfig = { name: "eu-replica", url: "postgres://app@db2:5432/app", pool: { max: 4 } };
 * ```
 */
export interface NodeConfig {
  /** Display name in stats, logs and errors. @default "host:port" of the URL */
  name?: string;
  /** `postgres://user:password@host:port/database?...` */
  url: string;
  /** Overrides of the cluster-wide pool settings for this node. @default {} */
  pool?: PoolConfig;
  /** Tracer for this node, overriding the cluster one. @default undefined */
  tracer?: Tracer;
}

/**
 * Everything `connect()` accepts. Only `master` is required.
 *
 * @example
 * ```ts
 * import { connect, leastInFlight, type ClusterConfig } from "@codelab/dbx";
 *
 * const config: ClusterConfig = {
 *   master: "postgres://app@db1:5432/app",
 *   replicas: [{ name: "db2", url: "postgres://app@db2:5432/app", pool: { max: 20 } }],
 *   retry: { maxAttempts: 4 },
 *   healthCheck: { intervalMs: 500 },
 *   balancer: leastInFlight(),
 *   maxLagMs: 1_000,
 * };
 * await using cluster = await connect(config);
 * ```
 */
export interface ClusterConfig {
  /** The node configured as primary (the servers have the last word on roles). */
  master: string | NodeConfig;
  /** Read replicas. @default [] */
  replicas?: readonly (string | NodeConfig)[];
  /** Pool settings for every node. @default see {@linkcode PoolConfig} */
  pool?: PoolConfig;
  /** Retry policy. @default see {@linkcode RetryConfig} */
  retry?: RetryConfig;
  /** Health checking. @default see {@linkcode HealthCheckConfig} */
  healthCheck?: HealthCheckConfig;
  /** Replica selection. @default roundRobin() */
  balancer?: Balancer;
  /** Where dbx logs node changes, retries and slow queries. @default a silent logger */
  logger?: Logger;
  /** Metrics callbacks. @default undefined */
  metrics?: MetricsHook;
  /** Tracer for every node without its own. @default undefined */
  tracer?: Tracer;
  /** Log statements slower than this at warn level (undefined = off). @default undefined */
  slowQueryThresholdMs?: number;
  /**
   * Default `maxLagMs` for every read: replicas whose replay lag is above it
   * are skipped (a call's own `maxLagMs` overrides it).
   * @default undefined (any healthy replica)
   */
  maxLagMs?: number;
}

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
  /** Role given by the config (the server's answer wins once probed). */
  readonly configuredRole: "primary" | "replica";
  /** Pool settings with defaults and cluster-wide values applied. */
  readonly pool: Required<PoolConfig>;
  /** The node's tracer, else the cluster's. */
  readonly tracer: Tracer | undefined;
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
  readonly retry: Required<RetryConfig>;
  /** Health checking with defaults. */
  readonly healthCheck: Required<HealthCheckConfig>;
  /** Replica selection. */
  readonly balancer: Balancer;
  /** Logger (silent by default). */
  readonly logger: Logger;
  /** Metrics callbacks, if any. */
  readonly metrics: MetricsHook | undefined;
  /** Slow-query threshold, if set. */
  readonly slowQueryThresholdMs: number | undefined;
  /** Default replica lag bound for reads, if set. */
  readonly maxLagMs: number | undefined;
}

/**
 * Defaults of {@linkcode PoolConfig}.
 *
 * @example
 * ```ts
 * import { POOL_DEFAULTS } from "@codelab/dbx";
 *
 * console.log(POOL_DEFAULTS.max); // 10
 * ```
 */
export const POOL_DEFAULTS: Readonly<Required<PoolConfig>> = Object.freeze({
  max: 10,
  min: 0,
  idleTimeoutMs: 30_000,
  maxLifetimeMs: 3_600_000,
  connectTimeoutMs: 5_000,
});

/**
 * Defaults of {@linkcode HealthCheckConfig}.
 *
 * @example
 * ```ts
 * import { HEALTH_CHECK_DEFAULTS } from "@codelab/dbx";
 *
 * console.log(HEALTH_CHECK_DEFAULTS.intervalMs); // 2000
 * ```
 */
export const HEALTH_CHECK_DEFAULTS: Readonly<Required<HealthCheckConfig>> = Object.freeze({
  intervalMs: 2_000,
  timeoutMs: 1_000,
  failuresBeforeDown: 1,
});

/**
 * Defaults of the numeric {@linkcode RetryConfig} fields.
 *
 * @example
 * ```ts
 * import { RETRY_DEFAULTS } from "@codelab/dbx";
 *
 * console.log(RETRY_DEFAULTS.maxAttempts); // 3
 * ```
 */
export const RETRY_DEFAULTS: Readonly<Required<Omit<RetryConfig, "retryable">>> = Object.freeze({
  maxAttempts: 3,
  baseDelayMs: 50,
  maxDelayMs: 1_000,
});

/**
 * Replaces the password of a connection string (userinfo and `password=`
 * query parameter) with `***`. Unparsable input is reduced to a marker
 * rather than echoed, since it may hold a password in an unexpected place.
 *
 * @param url A connection string.
 * @returns The same string without its password.
 *
 * @example
 * ```ts
 * import { redactUrl } from "@codelab/dbx";
 *
 * console.log(redactUrl("postgres://app:s3cret@db1:5432/app")); // "postgres://app:***@db1:5432/app"
 * ```
 */
export function redactUrl(url: string): string {
  const scheme = /^[a-z][a-z0-9+.-]*:/i.exec(url)?.[0] ?? "";
  // Without an authority ("//"), where a password could sit is anyone's
  // guess: keep only the scheme rather than echo it.
  if (!url.startsWith("//", scheme.length)) return `${scheme}<redacted>`;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return `${scheme}<unparsable url>`;
  }
  if (parsed.password !== "") parsed.password = "***";
  for (const key of [...parsed.searchParams.keys()]) {
    if (/password$/i.test(key)) parsed.searchParams.set(key, "***");
  }
  return parsed.href.replaceAll("%2A%2A%2A", "***");
}

function fail(field: string, rule: string, value: unknown): never {
  throw new ConfigError(
    field,
    `Cannot connect as '${field}' ${rule}: current value is ${describe(value)}`,
  );
}

function describe(value: unknown): string {
  // Any string that could be a connection string is shown redacted.
  if (typeof value === "string") {
    return JSON.stringify(/^[a-z][a-z0-9+.-]*:/i.test(value) ? redactUrl(value) : value);
  }
  if (typeof value === "number" || typeof value === "boolean" || value == null) {
    return String(value);
  }
  if (typeof value === "function") return "a function";
  if (Array.isArray(value)) return "an array";
  return typeof value;
}

function duration(field: string, value: unknown, fallback: number, positive = false): number {
  if (value === undefined) return fallback;
  if (
    typeof value !== "number" || !Number.isFinite(value) || value < 0 || (positive && value === 0)
  ) {
    fail(field, `must be a ${positive ? "positive" : "non-negative"} finite number of ms`, value);
  }
  return value;
}

function integer(field: string, value: unknown, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min) {
    fail(
      field,
      min === 0 ? "must be a non-negative integer" : `must be an integer >= ${min}`,
      value,
    );
  }
  return value;
}

function plainObject(field: string, value: unknown): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    fail(field, "must be an object", value);
  }
  return value as Record<string, unknown>;
}

function resolvePool(
  field: string,
  raw: unknown,
  base: Required<PoolConfig>,
): Required<PoolConfig> {
  const p = plainObject(field, raw);
  const max = integer(`${field}.max`, p.max, base.max, 1);
  const min = integer(`${field}.min`, p.min, base.min, 0);
  if (min > max) fail(`${field}.min`, `must not exceed '${field}.max' (${max})`, min);
  return {
    max,
    min,
    idleTimeoutMs: duration(`${field}.idleTimeoutMs`, p.idleTimeoutMs, base.idleTimeoutMs),
    maxLifetimeMs: duration(`${field}.maxLifetimeMs`, p.maxLifetimeMs, base.maxLifetimeMs),
    connectTimeoutMs: duration(
      `${field}.connectTimeoutMs`,
      p.connectTimeoutMs,
      base.connectTimeoutMs,
      true,
    ),
  };
}

function resolveNode(
  field: string,
  raw: unknown,
  role: "primary" | "replica",
  pool: Required<PoolConfig>,
  tracer: Tracer | undefined,
): ResolvedNode {
  const spec: Record<string, unknown> = typeof raw === "string"
    ? { url: raw }
    : plainObject(field, raw);
  if (raw === undefined || raw === null) {
    fail(field, "must be a connection string or a NodeConfig", raw);
  }
  const urlField = typeof raw === "string" ? field : `${field}.url`;
  const url = spec.url;
  if (typeof url !== "string" || url.trim() === "") {
    fail(urlField, "must be a non-empty postgres:// connection string", url);
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    fail(urlField, "must be a valid postgres:// connection string", redactUrl(url));
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    fail(urlField, "must use the postgres:// or postgresql:// scheme", redactUrl(url));
  }
  // URL keeps the brackets of an IPv6 literal; sockets want the bare address.
  const host = decodeURIComponent(parsed.hostname).replace(/^\[(.*)\]$/, "$1") ||
    parsed.searchParams.get("host") || "";
  if (host === "") fail(urlField, "must name a host", redactUrl(url));
  const port = parsed.port === "" ? 5432 : Number(parsed.port);
  const name = spec.name ?? `${host.includes(":") ? `[${host}]` : host}:${port}`;
  if (typeof name !== "string" || name.trim() === "") {
    fail(`${field}.name`, "must be a non-empty string", name);
  }
  const nodeTracer = spec.tracer;
  if (nodeTracer !== undefined) checkTracer(`${field}.tracer`, nodeTracer);
  return {
    name,
    url,
    redactedUrl: redactUrl(url),
    host,
    port,
    configuredRole: role,
    pool: resolvePool(`${field}.pool`, spec.pool, pool),
    tracer: (nodeTracer as Tracer | undefined) ?? tracer,
  };
}

function checkMethods(field: string, value: unknown, methods: readonly string[]): void {
  const obj = plainObjectOrInstance(field, value);
  for (const m of methods) {
    if (typeof obj[m] !== "function") fail(`${field}.${m}`, "must be a function", obj[m]);
  }
}

function plainObjectOrInstance(field: string, value: unknown): Record<string, unknown> {
  if (value === null || (typeof value !== "object" && typeof value !== "function")) {
    fail(field, "must be an object", value);
  }
  return value as Record<string, unknown>;
}

function checkTracer(field: string, value: unknown): void {
  checkMethods(field, value, ["queryStart", "queryEnd"]);
}

/** Stable identity of a server for duplicate detection: host, port, database and user. */
function identity(node: ResolvedNode): string {
  const u = new URL(node.url);
  return `${node.host.toLowerCase()}:${node.port}/${decodeURIComponent(u.pathname.slice(1))}@${
    decodeURIComponent(u.username)
  }`;
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
export function resolveConfig(config: ClusterConfig): ResolvedConfig {
  const c = plainObject("config", config) as Partial<ClusterConfig>;
  if (config === undefined) fail("config", "must be an object", config);
  const tracer = c.tracer;
  if (tracer !== undefined) checkTracer("tracer", tracer);
  const pool = resolvePool("pool", c.pool, POOL_DEFAULTS);
  if (c.master === undefined || c.master === "") {
    fail("master", "must be a non-empty postgres:// connection string", c.master);
  }
  const nodes = [resolveNode("master", c.master, "primary", pool, tracer)];
  const replicas = c.replicas ?? [];
  if (!Array.isArray(replicas)) fail("replicas", "must be an array", replicas);
  replicas.forEach((r, i) => nodes.push(resolveNode(`replicas[${i}]`, r, "replica", pool, tracer)));

  const names = new Map<string, number>();
  const ids = new Map<string, number>();
  nodes.forEach((node, i) => {
    const field = i === 0 ? "master" : `replicas[${i - 1}]`;
    const sameId = ids.get(identity(node));
    if (sameId !== undefined) {
      fail(field, `must not repeat node ${nodes[sameId]!.name}`, node.redactedUrl);
    }
    ids.set(identity(node), i);
    if (names.has(node.name)) fail(`${field}.name`, "must be unique across nodes", node.name);
    names.set(node.name, i);
  });

  const r = plainObject("retry", c.retry);
  const baseDelayMs = duration("retry.baseDelayMs", r.baseDelayMs, RETRY_DEFAULTS.baseDelayMs);
  const maxDelayMs = duration("retry.maxDelayMs", r.maxDelayMs, RETRY_DEFAULTS.maxDelayMs);
  if (maxDelayMs < baseDelayMs) {
    fail("retry.maxDelayMs", `must be >= 'retry.baseDelayMs' (${baseDelayMs})`, maxDelayMs);
  }
  if (r.retryable !== undefined && typeof r.retryable !== "function") {
    fail("retry.retryable", "must be a function", r.retryable);
  }
  const h = plainObject("healthCheck", c.healthCheck);
  if (c.balancer !== undefined) checkMethods("balancer", c.balancer, ["pick"]);
  if (c.logger !== undefined) checkMethods("logger", c.logger, ["debug", "info", "warn", "error"]);
  if (c.metrics !== undefined) plainObjectOrInstance("metrics", c.metrics);
  const slow = c.slowQueryThresholdMs;
  return {
    nodes,
    retry: {
      maxAttempts: integer("retry.maxAttempts", r.maxAttempts, RETRY_DEFAULTS.maxAttempts, 1),
      baseDelayMs,
      maxDelayMs,
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
    balancer: c.balancer ?? roundRobin(),
    logger: c.logger ?? noopLogger,
    metrics: c.metrics,
    maxLagMs: c.maxLagMs === undefined ? undefined : duration("maxLagMs", c.maxLagMs, 0),
    slowQueryThresholdMs: slow === undefined
      ? undefined
      : duration("slowQueryThresholdMs", slow, 0),
  };
}
