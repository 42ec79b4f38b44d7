/**
 * Eager validation of a {@linkcode ClusterConfig}: fills in every default
 * and turns every bad value into a {@linkcode ConfigError} naming the field
 * and the value (passwords redacted). Re-exported by `config.ts`.
 *
 * @module
 */

import { type Balancer, random, roundRobin } from "./balancer.ts";
import {
  type ClusterConfig,
  HEALTH_CHECK_DEFAULTS,
  type NodeConfig,
  POOL_DEFAULTS,
  type PoolConfig,
  redactUrl,
  type ResolvedConfig,
  type ResolvedNode,
  RETRY_DEFAULTS,
  type RetryConfig,
} from "./config.ts";
import { KNOWN, onlyKnownKeys } from "./config_keys.ts";
import { ConfigError } from "./errors.ts";
import { isRetryable } from "./failure.ts";
import { type LoadBalanceHosts, parseMultiHostUrl, type TargetSessionAttrs } from "./multi_host.ts";
import { type NodeRole, noopLogger, type Tracer } from "./observe.ts";
import { resolveSsl } from "./tls.ts";
import { describe } from "./validate.ts";

function fail(field: string, rule: string, value: unknown): never {
  throw new ConfigError(
    field,
    `Cannot connect: '${field}' ${rule}: current value is ${describe(value, redactUrl)}`,
  );
}

function pipelineOf(
  value: unknown,
): { readonly connections: number; readonly maxDepth: number } | undefined {
  if (value === false) return undefined;
  if (value === undefined || value === true) return { connections: 2, maxDepth: 64 };
  const p = plainObject("pipeline", value);
  onlyKnownKeys("pipeline", p, KNOWN.pipeline);
  return {
    connections: integer("pipeline.connections", p.connections, 2, 1),
    maxDepth: integer("pipeline.maxDepth", p.maxDepth, 64, 1),
  };
}

function flag(field: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") fail(field, "must be a boolean", value);
  return value as boolean;
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
  onlyKnownKeys(field, p, KNOWN.pool);
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

/**
 * Which part of a connection string is malformed, said without echoing it
 * (the value is shown redacted, so it cannot show what is wrong).
 */
function urlProblem(url: string): string | undefined {
  const lower = url.trimStart().toLowerCase();
  if (/^postgres(ql)?\/\//.test(lower)) {
    return "must start with postgres:// ('postgres' is followed by '//' without the ':')";
  }
  if (/^postgres(ql)?:\/?[^/]/.test(lower)) {
    return "must start with postgres:// (two slashes after 'postgres:')";
  }
  if (!/^[a-z][a-z0-9+.-]*:/.test(lower)) {
    return "must start with postgres:// or postgresql:// (no scheme found)";
  }
  return undefined;
}

/** libpq's cluster-wide parameters, as found in the URLs, with the field each came from. */
interface LibpqParams {
  targetSessionAttrs?: { value: TargetSessionAttrs; field: string };
  loadBalanceHosts?: { value: LoadBalanceHosts; field: string };
}

function collect<K extends keyof LibpqParams>(
  params: LibpqParams,
  key: K,
  name: string,
  value: NonNullable<LibpqParams[K]>["value"] | undefined,
  field: string,
): void {
  if (value === undefined) return;
  const seen = params[key];
  if (seen !== undefined && seen.value !== value) {
    fail(field, `parameter '${name}' must agree with '${seen.field}' (${seen.value})`, value);
  }
  params[key] = { value, field } as LibpqParams[K];
}

/** One config entry (a URL or a NodeConfig), as one node per host of its URL. */
function resolveNode(
  field: string,
  raw: unknown,
  role: NodeRole,
  pool: Required<PoolConfig>,
  tracer: Tracer | undefined,
  params: LibpqParams,
): ResolvedNode[] {
  const spec: Record<string, unknown> = typeof raw === "string"
    ? { url: raw }
    : plainObject(field, raw);
  if (raw === undefined || raw === null) {
    fail(field, "must be a connection string or a NodeConfig", raw);
  }
  if (typeof raw !== "string") onlyKnownKeys(field, spec, KNOWN.node);
  const urlField = typeof raw === "string" ? field : `${field}.url`;
  const url = spec.url;
  if (typeof url !== "string" || url.trim() === "") {
    fail(urlField, "must be a non-empty postgres:// connection string", url);
  }
  const problem = urlProblem(url);
  if (problem !== undefined) fail(urlField, problem, redactUrl(url));
  const multi = parseMultiHostUrl(url, urlField);
  collect(params, "targetSessionAttrs", "target_session_attrs", multi.targetSessionAttrs, urlField);
  collect(params, "loadBalanceHosts", "load_balance_hosts", multi.loadBalanceHosts, urlField);
  const many = multi.hosts.length > 1;
  if (many && spec.name !== undefined) {
    fail(
      `${field}.name`,
      "cannot name the nodes of a multi-host URL (each is named host:port)",
      spec.name,
    );
  }
  const nodeTracer = spec.tracer;
  if (nodeTracer !== undefined) checkTracer(`${field}.tracer`, nodeTracer);
  const nodePool = resolvePool(`${field}.pool`, spec.pool, pool);
  return multi.hosts.map((h) => {
    const { ssl, url: pgUrl } = resolveSsl(field, spec.ssl as NodeConfig["ssl"], h.url, urlField);
    let parsed: URL;
    try {
      parsed = new URL(pgUrl);
    } catch {
      fail(
        urlField,
        "must be a valid postgres:// connection string (check the port: digits only; percent-encode '@', ':' and '/' in the user and password)",
        redactUrl(url),
      );
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
    return {
      name,
      url: pgUrl,
      redactedUrl: redactUrl(pgUrl),
      host,
      port,
      configuredRole: many ? "unknown" : role,
      pool: nodePool,
      tracer: (nodeTracer as Tracer | undefined) ?? tracer,
      ssl,
    };
  });
}

/**
 * The servers of a config, from `master` + `replicas` or from `nodes`
 * (exactly one form), each with the field it came from.
 */
function resolveNodes(
  c: Partial<ClusterConfig>,
  pool: Required<PoolConfig>,
  tracer: Tracer | undefined,
  params: LibpqParams,
): { nodes: ResolvedNode[]; fields: string[] } {
  const nodes: ResolvedNode[] = [];
  const fields: string[] = [];
  const add = (field: string, raw: unknown, role: NodeRole) => {
    for (const node of resolveNode(field, raw, role, pool, tracer, params)) {
      nodes.push(node);
      fields.push(field);
    }
  };
  if (c.nodes !== undefined) {
    for (const other of ["master", "replicas"] as const) {
      if (c[other] !== undefined) {
        throw new ConfigError(
          other,
          `Cannot connect: give either 'nodes' or 'master' (with 'replicas'), not both: '${other}' is set next to 'nodes'`,
        );
      }
    }
    if (!Array.isArray(c.nodes) || c.nodes.length === 0) {
      fail("nodes", "must be a non-empty array of connection strings or NodeConfigs", c.nodes);
    }
    c.nodes.forEach((n, i) => add(`nodes[${i}]`, n, "unknown"));
    return { nodes, fields };
  }
  if (c.master === undefined || c.master === "") {
    fail(
      "master",
      "must be a non-empty postgres:// connection string (or give 'nodes')",
      c.master,
    );
  }
  add("master", c.master, "primary");
  const replicas = c.replicas ?? [];
  if (!Array.isArray(replicas)) fail("replicas", "must be an array", replicas);
  replicas.forEach((r, i) => add(`replicas[${i}]`, r, "replica"));
  return { nodes, fields };
}

/**
 * What `connect()` waits for and how reads are spread, from the config and
 * libpq's `target_session_attrs` / `load_balance_hosts`; a URL contradicting
 * an explicit setting is an error, not a silent choice.
 */
function sessionTarget(
  c: Partial<ClusterConfig>,
  params: LibpqParams,
): { requirePrimary: boolean; requireStandby: boolean; balancer: Balancer } {
  const explicit = flag("requirePrimary", c.requirePrimary, true);
  const attrs = params.targetSessionAttrs;
  let requirePrimary = explicit;
  let requireStandby = false;
  if (attrs !== undefined) {
    requirePrimary = attrs.value === "read-write" || attrs.value === "primary";
    requireStandby = attrs.value === "standby" || attrs.value === "read-only";
    if (c.requirePrimary !== undefined && c.requirePrimary !== requirePrimary) {
      fail(
        "requirePrimary",
        `contradicts 'target_session_attrs=${attrs.value}' in '${attrs.field}'`,
        c.requirePrimary,
      );
    }
  }
  const lb = params.loadBalanceHosts;
  if (lb?.value === "random" && c.balancer !== undefined) {
    fail("balancer", `contradicts 'load_balance_hosts=random' in '${lb.field}'`, c.balancer);
  }
  if (c.balancer !== undefined) checkMethods("balancer", c.balancer, ["pick"]);
  const balancer = c.balancer ?? (lb?.value === "random" ? random() : roundRobin());
  return { requirePrimary, requireStandby, balancer };
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
export function resolveConfig(config: ClusterConfig | string): ResolvedConfig {
  const c =
    (typeof config === "string" ? { nodes: [config] } : plainObject("config", config)) as Partial<
      ClusterConfig
    >;
  if (config === undefined) fail("config", "must be an object or a connection string", config);
  onlyKnownKeys(undefined, c as Record<string, unknown>, KNOWN.cluster);
  const tracer = c.tracer;
  if (tracer !== undefined) checkTracer("tracer", tracer);
  const pool = resolvePool("pool", c.pool, POOL_DEFAULTS);
  const params: LibpqParams = {};
  const { nodes, fields } = resolveNodes(c, pool, tracer, params);
  const names = new Map<string, number>();
  const ids = new Map<string, number>();
  nodes.forEach((node, i) => {
    const field = fields[i]!;
    const sameId = ids.get(identity(node));
    if (sameId !== undefined) {
      fail(field, `must not repeat node ${nodes[sameId]!.name}`, node.redactedUrl);
    }
    ids.set(identity(node), i);
    if (names.has(node.name)) fail(`${field}.name`, "must be unique across nodes", node.name);
    names.set(node.name, i);
  });
  const target = sessionTarget(c, params);

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
    logger: c.logger ?? noopLogger,
    metrics: c.metrics,
    maxLagMs: c.maxLagMs === undefined ? undefined : duration("maxLagMs", c.maxLagMs, 0),
    requirePrimary: target.requirePrimary,
    requireStandby: target.requireStandby,
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
