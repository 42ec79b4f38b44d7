import assert from "node:assert/strict";
import { createServer } from "node:net";
import {
  Cluster,
  type ClusterConfig,
  ConfigError,
  connect,
  DbxError,
  delay,
  HEALTH_CHECK_DEFAULTS,
  isRetryable,
  noopLogger,
  POOL_DEFAULTS,
  random,
  redactUrl,
  resolveConfig,
  RETRY_DEFAULTS,
  type Tracer,
} from "../mod.ts";
import { configError } from "./helpers.ts";

const MASTER = "postgres://app@db1:5432/app";
const REPLICA = "postgres://app@db2:5432/app";

const tracer = (): Tracer => ({ queryStart: () => undefined, queryEnd: () => {} });

// --- defaults --------------------------------------------------------------------

Deno.test("resolveConfig() fills in the documented pool defaults", () => {
  const { nodes } = resolveConfig({ master: MASTER });
  assert.deepEqual(nodes[0]?.pool, {
    max: 10,
    min: 0,
    idleTimeoutMs: 30_000,
    maxLifetimeMs: 3_600_000,
    connectTimeoutMs: 5_000,
  });
  assert.deepEqual(nodes[0]?.pool, { ...POOL_DEFAULTS });
});

Deno.test("resolveConfig() fills in the documented retry defaults", () => {
  const { retry } = resolveConfig({ master: MASTER });
  assert.equal(retry.maxAttempts, 3);
  assert.equal(retry.baseDelayMs, 50);
  assert.equal(retry.maxDelayMs, 1_000);
  assert.equal(retry.waitForPrimaryMs, 5_000);
  assert.equal(retry.retryable, isRetryable);
  assert.deepEqual(RETRY_DEFAULTS, {
    maxAttempts: 3,
    baseDelayMs: 50,
    maxDelayMs: 1_000,
    waitForPrimaryMs: 5_000,
  });
});

Deno.test("resolveConfig() fills in the documented health-check defaults", () => {
  const { healthCheck } = resolveConfig({ master: MASTER });
  assert.deepEqual(healthCheck, { intervalMs: 2_000, timeoutMs: 1_000, failuresBeforeDown: 1 });
  assert.deepEqual(healthCheck, { ...HEALTH_CHECK_DEFAULTS });
});

Deno.test("resolveConfig() defaults to a latency-aware balancer, a silent logger and no hooks", () => {
  const resolved = resolveConfig({ master: MASTER });
  assert.equal(typeof resolved.balancer.pick, "function");
  const nodes = [{ name: "a", healthy: true, inFlight: 0 }, {
    name: "b",
    healthy: true,
    inFlight: 0,
  }];
  // Equal nodes take turns; a clearly slower one is passed over.
  assert.deepEqual([resolved.balancer.pick(nodes), resolved.balancer.pick(nodes)], nodes);
  const timed = [
    { ...nodes[0]!, latencyMs: 30, latencySampledAt: performance.now() },
    { ...nodes[1]!, latencyMs: 1, latencySampledAt: performance.now() },
  ];
  assert.deepEqual([resolved.balancer.pick(timed), resolved.balancer.pick(timed)], [
    timed[1],
    timed[1],
  ]);
  assert.equal(resolved.logger, noopLogger);
  assert.equal(resolved.metrics, undefined);
  assert.equal(resolved.slowQueryThresholdMs, undefined);
  assert.equal(resolved.nodes[0]?.tracer, undefined);
});

Deno.test("the exported defaults are frozen", () => {
  assert.ok(Object.isFrozen(POOL_DEFAULTS));
  assert.ok(Object.isFrozen(RETRY_DEFAULTS));
  assert.ok(Object.isFrozen(HEALTH_CHECK_DEFAULTS));
});

Deno.test("resolveConfig() keeps the settings it is given", () => {
  const balancer = random();
  const metrics = { onRetry: () => {} };
  const retryable = () => false;
  const resolved = resolveConfig({
    master: MASTER,
    retry: { maxAttempts: 5, baseDelayMs: 10, maxDelayMs: 10, waitForPrimaryMs: 0, retryable },
    healthCheck: { intervalMs: 500, timeoutMs: 200, failuresBeforeDown: 3 },
    balancer,
    logger: console,
    metrics,
    slowQueryThresholdMs: 0,
  });
  assert.deepEqual(resolved.retry, {
    maxAttempts: 5,
    baseDelayMs: 10,
    maxDelayMs: 10,
    waitForPrimaryMs: 0,
    retryable,
  });
  assert.deepEqual(resolved.healthCheck, {
    intervalMs: 500,
    timeoutMs: 200,
    failuresBeforeDown: 3,
  });
  assert.equal(resolved.balancer, balancer);
  assert.equal(resolved.logger, console);
  assert.equal(resolved.metrics, metrics);
  assert.equal(resolved.slowQueryThresholdMs, 0);
});

// --- nodes -----------------------------------------------------------------------

Deno.test("resolveConfig() lists the master first, then the replicas in order", () => {
  const { nodes } = resolveConfig({
    master: MASTER,
    replicas: [REPLICA, { url: "postgres://app@db3:5432/app" }],
  });
  assert.deepEqual(nodes.map((n) => [n.name, n.configuredRole]), [
    ["db1:5432", "primary"],
    ["db2:5432", "replica"],
    ["db3:5432", "replica"],
  ]);
});

Deno.test('resolveConfig() names a node "host:port" by default, port 5432 when omitted', () => {
  const { nodes } = resolveConfig({
    master: "postgresql://app@db1/app",
    replicas: ["postgres://app@10.0.0.2:6432/app"],
  });
  assert.deepEqual(nodes.map((n) => [n.name, n.host, n.port]), [
    ["db1:5432", "db1", 5432],
    ["10.0.0.2:6432", "10.0.0.2", 6432],
  ]);
});

Deno.test('resolveConfig() names an IPv6 node "[host]:port"', () => {
  const { nodes } = resolveConfig({ master: "postgres://app@[::1]:5433/app" });
  assert.equal(nodes[0]?.name, "[::1]:5433");
});

Deno.test("resolveConfig() uses the name of a NodeConfig", () => {
  const { nodes } = resolveConfig({
    master: { name: "primary-eu", url: MASTER },
    replicas: [{ name: "replica-eu", url: REPLICA }],
  });
  assert.deepEqual(nodes.map((n) => n.name), ["primary-eu", "replica-eu"]);
  assert.equal(nodes[0]?.url, MASTER);
});

Deno.test("resolveConfig() merges per-node pool overrides over the cluster pool", () => {
  const { nodes } = resolveConfig({
    master: MASTER,
    replicas: [{ url: REPLICA, pool: { max: 3, connectTimeoutMs: 250 } }],
    pool: { max: 20, min: 2, idleTimeoutMs: 1_000 },
  });
  assert.deepEqual(nodes[0]?.pool, {
    max: 20,
    min: 2,
    idleTimeoutMs: 1_000,
    maxLifetimeMs: 3_600_000,
    connectTimeoutMs: 5_000,
  });
  assert.deepEqual(nodes[1]?.pool, {
    max: 3,
    min: 2,
    idleTimeoutMs: 1_000,
    maxLifetimeMs: 3_600_000,
    connectTimeoutMs: 250,
  });
});

Deno.test("resolveConfig() gives a node its own tracer over the cluster tracer", () => {
  const clusterTracer = tracer();
  const nodeTracer = tracer();
  const { nodes } = resolveConfig({
    master: MASTER,
    replicas: [{ url: REPLICA, tracer: nodeTracer }],
    tracer: clusterTracer,
  });
  assert.equal(nodes[0]?.tracer, clusterTracer);
  assert.equal(nodes[1]?.tracer, nodeTracer);
});

Deno.test("resolveConfig() keeps the password in url and redacts it everywhere else", () => {
  const url = "postgres://app:hunter2@db1:5432/app?password=hunter2";
  const { nodes } = resolveConfig({ master: url });
  assert.equal(nodes[0]?.url, url);
  assert.equal(nodes[0]?.name, "db1:5432");
  assert.ok(!nodes[0]?.redactedUrl.includes("hunter2"), nodes[0]?.redactedUrl);
  assert.ok(!JSON.stringify({ ...nodes[0], url: undefined }).includes("hunter2"));
});

// --- validation ------------------------------------------------------------------

interface BadCase {
  what: string;
  config: unknown;
  field: string;
  /** Text the message must contain to show the bad value; omitted when it is redacted. */
  value?: string;
}

const badCases: BadCase[] = [
  { what: "a missing config", config: undefined, field: "config", value: "undefined" },
  // A string is a connection string (`connect(url)`); other non-objects are refused.
  { what: "a config that is not an object", config: 42, field: "config", value: "42" },
  { what: "an empty master", config: { master: "" }, field: "master", value: '""' },
  { what: "a blank master", config: { master: "   " }, field: "master", value: '"   "' },
  { what: "a missing master", config: {}, field: "master", value: "undefined" },
  { what: "a master that is a number", config: { master: 42 }, field: "master", value: "42" },
  {
    what: "a NodeConfig without url",
    config: { master: { name: "db1" } },
    field: "master.url",
    value: "undefined",
  },
  {
    what: "a NodeConfig url that is not a string",
    config: { master: { url: 5432 } },
    field: "master.url",
    value: "5432",
  },
  { what: "a garbage URL", config: { master: "not a url" }, field: "master" },
  {
    what: "a URL with a bad port",
    config: { master: "postgres://app@db1:99999/app" },
    field: "master",
  },
  {
    what: "a non-postgres scheme",
    config: { master: "mysql://app@db1:3306/app" },
    field: "master",
    value: '"mysql://app@db1:3306/app"',
  },
  {
    what: "a URL without a host",
    config: { master: "postgres:///app" },
    field: "master",
    value: '"postgres:///app"',
  },
  {
    what: "a bad replica URL",
    config: { master: MASTER, replicas: [REPLICA, "http://db3/app"] },
    field: "replicas[1]",
    value: '"http://db3/app"',
  },
  {
    what: "a bad replica NodeConfig url",
    config: { master: MASTER, replicas: [{ url: "" }] },
    field: "replicas[0].url",
    value: '""',
  },
  {
    what: "replicas that are not an array",
    config: { master: MASTER, replicas: REPLICA },
    field: "replicas",
  },
  {
    what: "replicas given as an object",
    config: { master: MASTER, replicas: { 0: REPLICA } },
    field: "replicas",
  },
  {
    what: "an empty node name",
    config: { master: { name: "", url: MASTER } },
    field: "master.name",
    value: '""',
  },
  {
    what: "a node name that is not a string",
    config: { master: { name: 7, url: MASTER } },
    field: "master.name",
    value: "7",
  },
  {
    what: "a pool that is not an object",
    config: { master: MASTER, pool: 10 },
    field: "pool",
    value: "10",
  },
  {
    what: "a negative duration",
    config: { master: MASTER, pool: { idleTimeoutMs: -1 } },
    field: "pool.idleTimeoutMs",
    value: "-1",
  },
  {
    what: "a NaN duration",
    config: { master: MASTER, pool: { maxLifetimeMs: NaN } },
    field: "pool.maxLifetimeMs",
    value: "NaN",
  },
  {
    what: "an Infinity duration",
    config: { master: MASTER, pool: { connectTimeoutMs: Infinity } },
    field: "pool.connectTimeoutMs",
    value: "Infinity",
  },
  {
    what: "a duration given as a string",
    config: { master: MASTER, pool: { idleTimeoutMs: "100" } },
    field: "pool.idleTimeoutMs",
    value: '"100"',
  },
  {
    what: "a zero connect timeout",
    config: { master: MASTER, pool: { connectTimeoutMs: 0 } },
    field: "pool.connectTimeoutMs",
    value: "0",
  },
  {
    what: "a negative per-node duration",
    config: { master: MASTER, replicas: [{ url: REPLICA, pool: { idleTimeoutMs: -5 } }] },
    field: "replicas[0].pool.idleTimeoutMs",
    value: "-5",
  },
  {
    what: "max: 0",
    config: { master: MASTER, pool: { max: 0 } },
    field: "pool.max",
    value: "0",
  },
  {
    what: "a non-integer max",
    config: { master: MASTER, pool: { max: 2.5 } },
    field: "pool.max",
    value: "2.5",
  },
  {
    what: "a negative min",
    config: { master: MASTER, pool: { min: -1 } },
    field: "pool.min",
    value: "-1",
  },
  {
    what: "a zero health-check interval",
    config: { master: MASTER, healthCheck: { intervalMs: 0 } },
    field: "healthCheck.intervalMs",
    value: "0",
  },
  {
    what: "a NaN health-check timeout",
    config: { master: MASTER, healthCheck: { timeoutMs: NaN } },
    field: "healthCheck.timeoutMs",
    value: "NaN",
  },
  {
    what: "failuresBeforeDown: 0",
    config: { master: MASTER, healthCheck: { failuresBeforeDown: 0 } },
    field: "healthCheck.failuresBeforeDown",
    value: "0",
  },
  {
    what: "a non-integer maxAttempts",
    config: { master: MASTER, retry: { maxAttempts: 1.5 } },
    field: "retry.maxAttempts",
    value: "1.5",
  },
  {
    what: "maxAttempts: 0",
    config: { master: MASTER, retry: { maxAttempts: 0 } },
    field: "retry.maxAttempts",
    value: "0",
  },
  {
    what: "a negative baseDelayMs",
    config: { master: MASTER, retry: { baseDelayMs: -1 } },
    field: "retry.baseDelayMs",
    value: "-1",
  },
  {
    what: "an Infinity maxDelayMs",
    config: { master: MASTER, retry: { maxDelayMs: Infinity } },
    field: "retry.maxDelayMs",
    value: "Infinity",
  },
  {
    what: "a retryable that is not a function",
    config: { master: MASTER, retry: { retryable: true } },
    field: "retry.retryable",
    value: "true",
  },
  {
    what: "a negative slowQueryThresholdMs",
    config: { master: MASTER, slowQueryThresholdMs: -1 },
    field: "slowQueryThresholdMs",
    value: "-1",
  },
  {
    what: "a balancer without pick",
    config: { master: MASTER, balancer: {} },
    field: "balancer.pick",
    value: "undefined",
  },
  {
    what: "a balancer that is not an object",
    config: { master: MASTER, balancer: "roundRobin" },
    field: "balancer",
    value: '"roundRobin"',
  },
  {
    what: "a logger missing a method",
    config: { master: MASTER, logger: { debug() {}, info() {}, warn() {} } },
    field: "logger.error",
    value: "undefined",
  },
  {
    what: "a logger method that is not a function",
    config: { master: MASTER, logger: { ...noopLogger, warn: "yes" } },
    field: "logger.warn",
    value: '"yes"',
  },
  {
    what: "a tracer missing queryEnd",
    config: { master: MASTER, tracer: { queryStart() {} } },
    field: "tracer.queryEnd",
    value: "undefined",
  },
  {
    what: "a node tracer missing queryStart",
    config: { master: { url: MASTER, tracer: { queryEnd() {} } } },
    field: "master.tracer.queryStart",
    value: "undefined",
  },
  {
    what: "metrics that are not an object",
    config: { master: MASTER, metrics: 1 },
    field: "metrics",
    value: "1",
  },
  {
    what: "hedge: true",
    config: { master: MASTER, hedge: true },
    field: "hedge",
    value: "true",
  },
  {
    what: "a negative hedge.afterMs",
    config: { master: MASTER, hedge: { afterMs: -5 } },
    field: "hedge.afterMs",
    value: "-5",
  },
  {
    what: 'a hedge.afterMs that is neither a number nor "p95"',
    config: { master: MASTER, hedge: { afterMs: "p99" } },
    field: "hedge.afterMs",
    value: '"p99"',
  },
  {
    what: "a hedge.maxExtraLoad of 0",
    config: { master: MASTER, hedge: { maxExtraLoad: 0 } },
    field: "hedge.maxExtraLoad",
    value: "0",
  },
  {
    what: "a hedge.maxExtraLoad above 1",
    config: { master: MASTER, hedge: { maxExtraLoad: 1.5 } },
    field: "hedge.maxExtraLoad",
    value: "1.5",
  },
];

Deno.test("resolveConfig() names the rule a bad hedge setting breaks", () => {
  assert.equal(
    configError({ master: MASTER, hedge: { afterMs: -5 } }).message,
    `Cannot connect: 'hedge.afterMs' must be "p95" or a number of ms from 0 to 2147483647: ` +
      "current value is -5",
  );
  assert.equal(
    configError({ master: MASTER, hedge: { maxExtraLoad: 0 } }).message,
    "Cannot connect: 'hedge.maxExtraLoad' must be a number in (0, 1]: current value is 0",
  );
});

Deno.test("resolveConfig() leaves hedging off by default and fills in its defaults", () => {
  assert.equal(resolveConfig({ master: MASTER }).hedge, undefined);
  assert.equal(resolveConfig({ master: MASTER, hedge: false }).hedge, undefined);
  assert.deepEqual(resolveConfig({ master: MASTER, hedge: {} }).hedge, {
    afterMs: "p95",
    maxExtraLoad: 0.05,
  });
  assert.deepEqual(
    resolveConfig({ master: MASTER, hedge: { afterMs: 20, maxExtraLoad: 1 } }).hedge,
    { afterMs: 20, maxExtraLoad: 1 },
  );
});

for (const c of badCases) {
  Deno.test(`resolveConfig() rejects ${c.what} with a ConfigError naming '${c.field}'`, () => {
    const err = configError(c.config);
    assert.equal(err.field, c.field);
    assert.ok(err.message.includes(`'${c.field}'`), err.message);
    if (c.value !== undefined) {
      assert.ok(err.message.includes(`current value is ${c.value}`), err.message);
    }
  });
}

Deno.test("a bad master reads as a setting, not as a user to connect as", () => {
  assert.equal(
    configError({ master: "" }).message,
    `Cannot connect: 'master' must be a non-empty postgres:// connection string: current value is ""`,
  );
});

// --- unknown settings ------------------------------------------------------------

const typoCases: { config: unknown; field: string; suggestion: string }[] = [
  { config: { master: MASTER, replica: [REPLICA] }, field: "replica", suggestion: "replicas" },
  { config: { mastr: MASTER }, field: "mastr", suggestion: "master" },
  { config: { master: MASTER, healthcheck: {} }, field: "healthcheck", suggestion: "healthCheck" },
  {
    config: { master: MASTER, pool: { maxConnections: 5 } },
    field: "pool.maxConnections",
    suggestion: "pool.max",
  },
  {
    config: { master: MASTER, retry: { maxAttempt: 2 } },
    field: "retry.maxAttempt",
    suggestion: "retry.maxAttempts",
  },
  {
    config: { master: MASTER, healthCheck: { interval: 100 } },
    field: "healthCheck.interval",
    suggestion: "healthCheck.intervalMs",
  },
  {
    config: { master: { uri: MASTER } },
    field: "master.uri",
    suggestion: "master.url",
  },
  {
    config: { master: MASTER, replicas: [REPLICA, { url: "postgres://app@db3/app", pol: {} }] },
    field: "replicas[1].pol",
    suggestion: "replicas[1].pool",
  },
  {
    config: { master: { url: MASTER, pool: { Max: 3 } } },
    field: "master.pool.Max",
    suggestion: "master.pool.max",
  },
  {
    config: { master: MASTER, pipeline: { depth: 8 } },
    field: "pipeline.depth",
    suggestion: "pipeline.maxDepth",
  },
  {
    config: { master: MASTER, hedge: { after: 8 } },
    field: "hedge.after",
    suggestion: "hedge.afterMs",
  },
];

for (const c of typoCases) {
  Deno.test(`connect() rejects the unknown setting '${c.field}' and suggests '${c.suggestion}'`, () => {
    const err = configError(c.config);
    assert.equal(err.field, c.field);
    assert.equal(
      err.message,
      `Cannot connect: '${c.field}' is not a known setting (did you mean '${c.suggestion}'?)`,
    );
  });
}

Deno.test("an unknown setting far from every known one lists the known settings", () => {
  const err = configError({ master: MASTER, pool: { colour: "blue" } });
  assert.equal(err.field, "pool.colour");
  assert.equal(
    err.message,
    "Cannot connect: 'pool.colour' is not a known setting " +
      "(known settings: max, min, idleTimeoutMs, maxLifetimeMs, connectTimeoutMs)",
  );
});

Deno.test("a typo is reported before the errors it causes (a misspelt master)", () => {
  assert.equal(configError({ Master: MASTER }).field, "Master");
});

Deno.test("connect() rejects an unknown setting before opening any connection", async () => {
  await assert.rejects(
    connect({ master: MASTER, replica: [REPLICA] } as unknown as ClusterConfig),
    (err) => err instanceof ConfigError && err.field === "replica",
  );
});

Deno.test("every documented setting is accepted at every level", () => {
  const resolved = resolveConfig({
    master: { name: "m", url: MASTER, pool: { max: 4 }, tracer: tracer() },
    replicas: [{ url: REPLICA, pool: { min: 0 } }],
    pool: { max: 5, min: 1, idleTimeoutMs: 1, maxLifetimeMs: 1, connectTimeoutMs: 1 },
    retry: {
      maxAttempts: 2,
      baseDelayMs: 1,
      maxDelayMs: 2,
      waitForPrimaryMs: 0,
      retryable: () => false,
    },
    healthCheck: { intervalMs: 1, timeoutMs: 1, failuresBeforeDown: 1 },
    balancer: random(),
    logger: noopLogger,
    metrics: {},
    tracer: tracer(),
    slowQueryThresholdMs: 1,
    maxLagMs: 1,
    requirePrimary: false,
    pipeline: { connections: 1, maxDepth: 2 },
    statementCache: 8,
  });
  assert.equal(resolved.nodes.length, 2);
});

Deno.test("ConfigError is a DbxError of kind 'other'", () => {
  const err = configError({ master: "" });
  assert.ok(err instanceof DbxError);
  assert.equal(err.name, "ConfigError");
  assert.equal(err.kind, "other");
});

Deno.test("resolveConfig() rejects max < min, naming both settings and values", () => {
  const err = configError({ master: MASTER, pool: { max: 2, min: 5 } });
  assert.match(err.field, /^pool\.(min|max)$/);
  assert.match(err.message, /'pool\.min'/);
  assert.match(err.message, /'pool\.max'/);
  assert.match(err.message, /\b2\b/);
  assert.match(err.message, /\b5\b/);
});

Deno.test("resolveConfig() rejects a per-node max below the inherited cluster min", () => {
  const err = configError({ master: { url: MASTER, pool: { max: 1 } }, pool: { min: 3 } });
  assert.match(err.field, /^master\.pool\.(min|max)$/);
  assert.match(err.message, /\b1\b/);
  assert.match(err.message, /\b3\b/);
});

Deno.test("resolveConfig() accepts max equal to min", () => {
  const { nodes } = resolveConfig({ master: MASTER, pool: { max: 4, min: 4 } });
  assert.equal(nodes[0]?.pool.min, 4);
});

Deno.test("resolveConfig() rejects maxDelayMs below baseDelayMs, naming both", () => {
  const err = configError({ master: MASTER, retry: { baseDelayMs: 100, maxDelayMs: 50 } });
  assert.match(err.field, /^retry\.(maxDelayMs|baseDelayMs)$/);
  assert.match(err.message, /'retry\.maxDelayMs'/);
  assert.match(err.message, /'retry\.baseDelayMs'/);
  assert.match(err.message, /\b100\b/);
  assert.match(err.message, /\b50\b/);
});

Deno.test("resolveConfig() rejects maxDelayMs below the default baseDelayMs", () => {
  assert.equal(
    configError({ master: MASTER, retry: { maxDelayMs: 10 } }).field,
    "retry.maxDelayMs",
  );
});

Deno.test("resolveConfig() accepts zero durations where zero means never", () => {
  const resolved = resolveConfig({
    master: MASTER,
    pool: { idleTimeoutMs: 0, maxLifetimeMs: 0 },
    retry: { baseDelayMs: 0, maxDelayMs: 0 },
  });
  assert.equal(resolved.nodes[0]?.pool.idleTimeoutMs, 0);
  assert.equal(resolved.nodes[0]?.pool.maxLifetimeMs, 0);
  assert.equal(resolved.retry.maxDelayMs, 0);
});

Deno.test("resolveConfig() rejects the same server twice (same host, port, database and user)", () => {
  const err = configError({
    master: "postgres://app:one@db1:5432/app",
    // Default port, other scheme spelling and another password: still db1:5432/app as app.
    replicas: ["postgresql://app:two@db1/app"],
  });
  assert.equal(err.field, "replicas[0]");
  assert.match(err.message, /db1/);
});

Deno.test("resolveConfig() rejects a replica that repeats another replica", () => {
  const err = configError({ master: MASTER, replicas: [REPLICA, { name: "again", url: REPLICA }] });
  assert.equal(err.field, "replicas[1]");
  assert.ok(err.message.includes("db2"), err.message);
});

Deno.test("resolveConfig() accepts the same host with another port or database", () => {
  const { nodes } = resolveConfig({
    master: "postgres://app@db1:5432/app",
    replicas: [
      "postgres://app@db1:5433/app",
      { name: "other-db", url: "postgres://app@db1:5432/other" },
    ],
  });
  assert.equal(nodes.length, 3);
});

Deno.test("resolveConfig() rejects duplicate node names", () => {
  const err = configError({
    master: { name: "a", url: MASTER },
    replicas: [{ name: "a", url: REPLICA }],
  });
  assert.equal(err.field, "replicas[0].name");
  assert.ok(err.message.includes("'replicas[0].name'"), err.message);
  assert.ok(err.message.includes('current value is "a"'), err.message);
});

// --- passwords -------------------------------------------------------------------

const leakyCases: [string, unknown][] = [
  ["a duplicate node", {
    master: "postgres://app:hunter2@db1:5432/app",
    replicas: ["postgres://app:hunter2@db1:5432/app"],
  }],
  ["a bad port", { master: "postgres://app:hunter2@db1:99999/app" }],
  ["a non-numeric port", { master: "postgres://app:hunter2@db1:abc/app" }],
  ["a non-postgres scheme", { master: "mysql://app:hunter2@db1/app" }],
  ["a password query parameter", { master: "mysql://app@db1/app?password=hunter2" }],
  ["a replica NodeConfig with a bad scheme", {
    master: MASTER,
    replicas: [{ url: "http://app:hunter2@db2/app" }],
  }],
  ["replicas given as one string", {
    master: MASTER,
    replicas: "postgres://app:hunter2@db2:5432/app",
  }],
  ["a URL missing its //", { master: "postgres:app:hunter2@db1/app" }],
];

for (const [what, config] of leakyCases) {
  Deno.test(`resolveConfig() keeps the password out of the ConfigError for ${what}`, () => {
    const err = configError(config);
    assert.ok(!err.message.includes("hunter2"), err.message);
    assert.ok(!String(err.stack).includes("hunter2"), "the stack repeats the message");
  });
}

// --- redactUrl -------------------------------------------------------------------

Deno.test("redactUrl() replaces the userinfo password with ***", () => {
  assert.equal(
    redactUrl("postgres://app:s3cret@db1:5432/app"),
    "postgres://app:***@db1:5432/app",
  );
  const encoded = redactUrl("postgres://app:p%40ss%3Aw0rd@db1/app");
  assert.equal(encoded, "postgres://app:***@db1/app");
});

Deno.test("redactUrl() replaces a password query parameter with ***", () => {
  const out = redactUrl("postgres://app@db1/app?sslmode=require&password=hunter2");
  assert.ok(!out.includes("hunter2"), out);
  assert.match(out, /password=\*\*\*/);
  assert.match(out, /sslmode=require/);
});

Deno.test("redactUrl() redacts the password query parameter whatever its case", () => {
  const out = redactUrl("postgres://app:one@db1/app?PASSWORD=two&Password=three");
  for (const secret of ["one", "two", "three"]) assert.ok(!out.includes(secret), out);
});

Deno.test("redactUrl() leaves a URL without a password unchanged", () => {
  assert.equal(redactUrl("postgres://app@db1:5432/app"), "postgres://app@db1:5432/app");
  assert.equal(
    redactUrl("postgres://app@db1:5432/app?sslmode=require"),
    "postgres://app@db1:5432/app?sslmode=require",
  );
});

Deno.test("redactUrl() reduces unparsable input to a marker without echoing it", () => {
  const bad = redactUrl("postgres://app:hunter2@db1:99999/app");
  assert.ok(!bad.includes("hunter2"), bad);
  assert.match(bad, /unparsable/);
  assert.ok(bad.startsWith("postgres:"), bad);

  // Without "scheme://" there is no authority to find a password in: only a marker is left.
  for (const input of ["host=db1 password=hunter2", "", "hunter2"]) {
    const out = redactUrl(input);
    assert.ok(!out.includes("hunter2"), out);
    assert.match(out, /^<redacted>$/);
  }
});

// --- Cluster constructor ---------------------------------------------------------

Deno.test("new Cluster() throws the same ConfigError synchronously", () => {
  for (const config of [{ master: "" }, { master: MASTER, pool: { max: 0 } }]) {
    const expected = configError(config);
    assert.throws(
      () => new Cluster(config as ClusterConfig),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.equal(err.field, expected.field);
        assert.equal(err.message, expected.message);
        return true;
      },
    );
  }
});

Deno.test("connect() rejects an invalid config with a ConfigError", async () => {
  await assert.rejects(
    connect({ master: MASTER, retry: { maxAttempts: 0 } }),
    (err) => err instanceof ConfigError && err.field === "retry.maxAttempts",
  );
});

Deno.test("new Cluster() opens no connection until started", async () => {
  let connections = 0;
  const server = createServer((socket) => {
    connections++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const { port } = server.address() as { port: number };
    const cluster = new Cluster({
      master: `postgres://app@127.0.0.1:${port}/app`,
      pool: { min: 2 },
      healthCheck: { intervalMs: 10 },
    });
    try {
      await delay(50);
      assert.equal(connections, 0);
    } finally {
      await cluster.close();
    }
    assert.equal(connections, 0);
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

Deno.test("Cluster.close() on a cluster never started resolves, and again with the same promise", async () => {
  const cluster = new Cluster({ master: MASTER, replicas: [REPLICA] });
  const first = cluster.close();
  assert.equal(cluster.close(), first);
  await first;
  await cluster[Symbol.asyncDispose]();
});

Deno.test("a malformed connection string names the part that is wrong, without echoing it", () => {
  const cases: [string, RegExp][] = [
    ["postgres//app:s3cret@db1/app", /'postgres' is followed by '\/\/' without the ':'/],
    ["postgres:app:s3cret@db1/app", /two slashes after 'postgres:'/],
    ["app:s3cret@db1/app", /no scheme found|postgres:\/\/ or postgresql:\/\//],
    ["db1.example.com/app", /no scheme found/],
    ["postgres://app:s3cret@db1:99999/app", /check the port/],
  ];
  for (const [url, why] of cases) {
    assert.throws(
      () => resolveConfig({ master: url }),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError, `${url}: ${err}`);
        assert.equal(err.field, "master");
        assert.match(err.message, why, url);
        assert.doesNotMatch(err.message, /s3cret/, "never the password");
        return true;
      },
    );
  }
});

Deno.test("resolveConfig() takes a types object with getTypeParser and rejects anything else", () => {
  const types = { getTypeParser: () => (v: string) => v };
  assert.equal(resolveConfig({ master: MASTER, types }).types, types);
  assert.equal(resolveConfig({ master: MASTER }).types, undefined);
  assert.throws(
    () => resolveConfig({ master: MASTER, types: {} as never }),
    (err: unknown) => err instanceof ConfigError && err.field === "types.getTypeParser",
  );
});
