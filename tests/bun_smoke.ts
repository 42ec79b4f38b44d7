/**
 * Smoke test of the public API on Bun (CI runs `bun tests/bun_smoke.ts`):
 * a local primary + replica, read/write routing, runTx commit and rollback,
 * COPY, close. Exits non-zero with a message on the first failure.
 *
 * @module
 */

import assert from "node:assert/strict";
import process from "node:process";
import { connect } from "../mod.ts";
import { startLocalCluster } from "../src/testing/mod.ts";

const runtime = typeof (globalThis as { Bun?: { version: string } }).Bun === "object"
  ? `Bun ${(globalThis as unknown as { Bun: { version: string } }).Bun.version}`
  : "not Bun";

try {
  await using local = await startLocalCluster({ replicas: 1 });
  await using cluster = await connect({
    master: local.masterUrl,
    replicas: local.replicaUrls,
    healthCheck: { intervalMs: 500, timeoutMs: 500 },
  });
  const primaryPort = local.nodes[0]!.port;
  const replicaPort = local.nodes[1]!.port;

  const w = await cluster.queryRow<{ p: number }>("select inet_server_port() as p");
  assert.equal(w.p, primaryPort, "writes go to the primary");
  const r = await cluster.readQueryRow<{ p: number; rec: boolean }>(
    "select inet_server_port() as p, pg_is_in_recovery() as rec",
  );
  assert.deepEqual(r, { p: replicaPort, rec: true }, "reads go to the replica");

  await cluster.exec("create table smoke(id int primary key)");
  await cluster.runTx(async (tx) => {
    await tx.exec("insert into smoke values (1)");
    assert.equal(cluster.getExecutor(), tx, "the transaction is bound to the async context");
  });
  await assert.rejects(
    cluster.runTx(async (tx) => {
      await tx.exec("insert into smoke values (2)");
      throw new Error("roll me back");
    }),
    /roll me back/,
  );
  assert.equal(await cluster.copyFrom("smoke", ["id"], [[3], [4]]), 2);
  const ids = await cluster.query<{ id: number }>("select id from smoke order by id");
  assert.deepEqual(
    ids.map((x) => x.id),
    [1, 3, 4],
    "commit kept, rollback discarded, COPY applied",
  );

  const stats = cluster.stats();
  assert.ok(stats.totals.queries > 0);
  console.log(`bun smoke: OK on ${runtime} (${stats.totals.queries} attempts, routing verified)`);
} catch (err) {
  console.error(`bun smoke: FAILED on ${runtime}:`, err);
  process.exitCode = 1;
}
