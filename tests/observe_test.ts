import assert from "node:assert/strict";
import {
  type MetricsHook,
  noopLogger,
  type QueryEndEvent,
  type QueryEvent,
  type RetryEvent,
} from "../mod.ts";
import { callHook } from "../src/observe/observe.ts";
import { dbTest, testLogger } from "../src/testing/mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";

const urls = testDatabaseUrls();
const port = (url: string) => Number(new URL(url).port || 5432);

Deno.test("callHook() swallows and logs a throwing hook, and skips a missing one", () => {
  const logger = testLogger();
  const hooks: MetricsHook = {
    onNodeUp() {
      throw new Error("hook bug");
    },
  };
  callHook(logger, hooks, "onNodeUp", { node: "a", role: "primary" });
  callHook(logger, hooks, "onNodeDown", { node: "a", role: "primary" });
  callHook(logger, undefined, "onNodeDown", { node: "a", role: "primary" });
  assert.equal(logger.entries.length, 1);
  assert.equal(logger.entries[0]!.level, "error");
  assert.equal(logger.entries[0]!.attrs.hook, "onNodeUp");
});

Deno.test("callHook() calls a hook as a method of its object", () => {
  const seen: string[] = [];
  const hooks = {
    prefix: "got ",
    onNodeUp(this: { prefix: string }, e: { node: string }) {
      seen.push(this.prefix + e.node);
    },
  };
  callHook(noopLogger, hooks, "onNodeUp", { node: "b", role: "replica" });
  assert.deepEqual(seen, ["got b"]);
});

Deno.test("testLogger() records every level with its attributes", () => {
  const logger = testLogger();
  logger.debug("d");
  logger.info("i", { a: 1 });
  logger.warn("w");
  logger.error("e", { b: 2 });
  assert.deepEqual(logger.entries, [
    { level: "debug", msg: "d", attrs: {} },
    { level: "info", msg: "i", attrs: { a: 1 } },
    { level: "warn", msg: "w", attrs: {} },
    { level: "error", msg: "e", attrs: { b: 2 } },
  ]);
});

const starts: QueryEvent[] = [];
const ends: QueryEndEvent[] = [];
dbTest(
  "onQueryStart and onQueryEnd see every attempt with node, role, duration and error",
  async (cluster) => {
    await cluster.query("select 1");
    await cluster.readQuery("select $1::int", [2]);
    await assert.rejects(cluster.query("select * from missing_table_xyz"));
    assert.equal(starts.length, 3);
    assert.equal(ends.length, 3);
    assert.deepEqual(starts.map((e) => [e.role, e.argCount, e.attempt]), [["primary", 0, 1], [
      "replica",
      1,
      1,
    ], [
      "primary",
      0,
      1,
    ]]);
    assert.equal(starts[0]!.node, `127.0.0.1:${port(urls!.master)}`);
    assert.equal(starts[1]!.sql, "select $1::int");
    assert.ok(ends.every((e) => typeof e.durationMs === "number" && e.durationMs >= 0));
    assert.equal(ends[0]!.error, undefined);
    assert.match(String(ends[2]!.error), /missing_table_xyz/);
  },
  {
    config: {
      metrics: {
        onQueryStart: (e) => starts.push(e),
        onQueryEnd: (e) => ends.push(e),
      },
    },
  },
);

const throwingLogger = testLogger();
dbTest("a metrics hook that throws never breaks a query, and is logged", async (cluster) => {
  assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
  assert.deepEqual(await cluster.readQuery("select 2 as two"), [{ two: 2 }]);
  const logged = throwingLogger.entries.filter((e) => e.msg === "dbx: metrics hook threw");
  assert.ok(
    logged.length >= 4,
    `start and end hooks of both queries were logged (${logged.length})`,
  );
}, {
  config: {
    logger: throwingLogger,
    metrics: {
      onQueryStart() {
        throw new Error("start hook bug");
      },
      onQueryEnd() {
        throw new Error("end hook bug");
      },
    },
  },
});

const slowLogger = testLogger();
dbTest(
  "a statement slower than slowQueryThresholdMs is logged at warn without argument values",
  async (cluster) => {
    await cluster.query("select pg_sleep(0.15), $1::text as secret", ["p4ssw0rd-value"]);
    await cluster.query("select 1");
    const slow = slowLogger.entries.filter((e) => e.msg === "dbx: slow query");
    assert.equal(slow.length, 1, "only the slow statement");
    const entry = slow[0]!;
    assert.equal(entry.level, "warn");
    assert.equal(entry.attrs.node, `127.0.0.1:${port(urls!.master)}`);
    assert.equal(entry.attrs.role, "primary");
    assert.equal(entry.attrs.argCount, 1);
    assert.ok((entry.attrs.durationMs as number) >= 150);
    assert.match(entry.attrs.sql as string, /pg_sleep/);
    assert.ok(
      !JSON.stringify(slowLogger.entries).includes("p4ssw0rd-value"),
      "argument values never logged",
    );
  },
  { config: { logger: slowLogger, slowQueryThresholdMs: 100 } },
);

const retries: RetryEvent[] = [];
const downs: string[] = [];
const fallbackLogger = testLogger();
dbTest(
  "node down and replica fallback reach the hooks and the log; a replica known down costs no retry",
  async (cluster) => {
    // The only replica refuses connections: it is down, reads fall back.
    assert.deepEqual(await cluster.readQuery("select 1 as one"), [{ one: 1 }]);
    assert.deepEqual(downs, ["127.0.0.1:1"]);
    assert.ok(
      fallbackLogger.entries.some((e) => e.msg === "dbx: node is down" && e.level === "warn"),
    );
    assert.ok(fallbackLogger.entries.some((e) => e.msg === "dbx: read falls back to the primary"));
    assert.deepEqual(retries, []);
  },
  {
    config: {
      replicas: ["postgres://postgres@127.0.0.1:1/postgres"],
      logger: fallbackLogger,
      metrics: { onRetry: (e) => retries.push(e), onNodeDown: (e) => downs.push(e.node) },
    },
  },
);

dbTest("stats() reports latency percentiles that move with the load", async (cluster) => {
  assert.equal(cluster.stats().nodes[0]!.latencyP50Ms, undefined, "no attempt yet");
  for (let i = 0; i < 20; i++) await cluster.query("select 1");
  const fast = cluster.stats().nodes[0]!;
  assert.ok(fast.latencyP50Ms! > 0 && fast.latencyP99Ms! >= fast.latencyP50Ms!);
  for (let i = 0; i < 30; i++) await cluster.query("select pg_sleep(0.02)");
  const slow = cluster.stats().nodes[0]!;
  assert.ok(
    slow.latencyP50Ms! >= 20,
    `median moved to the slower statements (${slow.latencyP50Ms})`,
  );
  assert.ok(slow.latencyP99Ms! >= slow.latencyP50Ms!);
});

dbTest("start() and stop() manage the cluster as a Component", async (cluster) => {
  await cluster.start(); // already started by connect(): same promise, resolves
  const report = await cluster.health();
  assert.equal(report.writable, true);
  assert.equal(report.nodes[0]!.role, "primary");
  await cluster.stop();
  await assert.rejects(
    cluster.query("select 1"),
    /Cannot run query\(\) as the cluster was closed by stop\(\)/,
  );
});
