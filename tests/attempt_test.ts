/**
 * The one attempt runner, seen from the outside: how a failure is
 * classified (which errors take a node down, which are statement errors),
 * what is counted and observed, and that observers never change an outcome.
 */

import assert from "node:assert/strict";
import { DbxError, type Logger, type MetricsHook, RetryExhaustedError } from "../mod.ts";
import { dbTest, testLogger } from "../src/testing/mod.ts";

const allHealthy = (cluster: { stats(): { nodes: readonly { healthy: boolean }[] } }) =>
  cluster.stats().nodes.every((n) => n.healthy);

dbTest(
  "a wrong argument count (08P01) fails the statement only: no retry, no node down",
  async (cluster) => {
    await cluster.exec("drop table if exists r08");
    await cluster.exec("create table r08(a int, b int)");
    try {
      const before = cluster.stats().totals;
      const write = await cluster.exec("insert into r08 values ($1, $2)", [1]).catch((e) => e);
      assert.ok(write instanceof DbxError, `got ${write}`);
      assert.equal(write.code, "08P01");
      assert.equal(write.kind, "other");
      assert.doesNotMatch(write.message, /may have been applied/);
      const read = await cluster.readQuery("select $1::int", [1, 2]).catch((e) => e);
      assert.ok(read instanceof DbxError && !(read instanceof RetryExhaustedError), `got ${read}`);
      assert.equal(read.code, "08P01");
      const after = cluster.stats().totals;
      assert.equal(after.queries - before.queries, 2, "one attempt each");
      assert.equal(after.retries, before.retries);
      assert.ok(allHealthy(cluster), "every node is still up");
      assert.deepEqual(await cluster.query("select count(*)::int as n from r08"), [{ n: 0 }]);
    } finally {
      await cluster.exec("drop table r08");
    }
  },
);

dbTest("more than 65 535 arguments are refused with a RangeError before anything is sent", async (
  cluster,
) => {
  const before = cluster.stats().totals.queries;
  const args = new Array(70_000).fill(1);
  await assert.rejects(
    cluster.readQuery("select 1", args),
    (e) => e instanceof RangeError && /'args' must hold at most 65535 values/.test(e.message),
  );
  await assert.rejects(cluster.exec("select 1", args), RangeError);
  assert.equal(cluster.stats().totals.queries, before, "nothing reached a node");
  assert.ok(allHealthy(cluster));
});

/** A logger whose every method throws. */
const throwingLogger: Logger = {
  debug() {
    throw new Error("debug broke");
  },
  info() {
    throw new Error("info broke");
  },
  warn() {
    throw new Error("warn broke");
  },
  error() {
    throw new Error("error broke");
  },
};
const throwingHooks: MetricsHook = {
  onQueryStart() {
    throw new Error("hook broke");
  },
  onQueryEnd() {
    throw new Error("hook broke");
  },
  onRetry() {
    throw new Error("hook broke");
  },
};

dbTest(
  "a logger, hook or tracer that throws never changes a statement's outcome (slow-query log included)",
  async (cluster) => {
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
    assert.deepEqual(await cluster.readQuery("select 2 as two"), [{ two: 2 }]);
    await cluster.runTx((tx) => tx.exec("select 1"));
    await cluster.ping();
    const failed = await cluster.query("select * from no_such_table_here").catch((e) => e);
    assert.ok(failed instanceof DbxError);
    assert.equal(failed.code, "42P01", "the statement's own error, not the logger's");
  },
  {
    config: {
      slowQueryThresholdMs: 0,
      logger: throwingLogger,
      metrics: throwingHooks,
      tracer: {
        queryStart() {
          throw new Error("tracer broke");
        },
        queryEnd() {
          throw new Error("tracer broke");
        },
      },
    },
  },
);

const pingLog = testLogger();
const pingEnds: string[] = [];

dbTest("ping() runs through the attempt runner: counted and observed on every node", async (
  cluster,
) => {
  const before = cluster.stats().nodes.map((n) => n.queries);
  pingEnds.length = 0;
  await cluster.ping();
  const after = cluster.stats().nodes.map((n) => n.queries);
  assert.deepEqual(after.map((q, i) => q - before[i]!), before.map(() => 1));
  assert.deepEqual(
    [...pingEnds].sort(),
    cluster.stats().nodes.map((n) => n.name).sort(),
    "one onQueryEnd per node",
  );
}, { config: { logger: pingLog, metrics: { onQueryEnd: (e) => void pingEnds.push(e.node) } } });

const retryLog = testLogger();
const retried: { attempt: number; node: string | undefined }[] = [];

dbTest(
  "a read whose replica connection is lost is retried elsewhere and the retry reaches onRetry, stats and the log",
  async (cluster) => {
    // On a replica the statement kills its own backend; on the primary it answers.
    const row = await cluster.readQueryRow<{ r: boolean }>(
      "select pg_is_in_recovery() as r, case when pg_is_in_recovery() then pg_terminate_backend(pg_backend_pid()) end",
    );
    assert.equal(row.r, false, "served by the primary after the replicas failed");
    assert.ok(retried.length >= 1, "onRetry fired");
    assert.equal(retried[0]!.attempt, 1);
    assert.ok(cluster.stats().totals.retries >= 1, "stats().totals.retries counts it");
    assert.ok(retryLog.entries.some((e) => e.level === "debug" && e.msg === "dbx: retrying"));
  },
  {
    config: {
      logger: retryLog,
      retry: { maxAttempts: 3 },
      metrics: { onRetry: (e) => void retried.push({ attempt: e.attempt, node: e.node }) },
    },
  },
);
