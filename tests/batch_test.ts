import assert from "node:assert/strict";
import { BatchError, type Cluster } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";

function assertPoolIdle(cluster: Cluster): void {
  const primary = cluster.stats().nodes[0]!;
  assert.equal(primary.idleConns, primary.totalConns);
  assert.equal(primary.inFlight, 0);
}

async function freshTable(cluster: Cluster): Promise<void> {
  await cluster.exec("drop table if exists batch_t");
  await cluster.exec("create table batch_t(id int primary key, s text)");
}

dbTest("sendBatch() returns every statement's result in order", async (cluster) => {
  await freshTable(cluster);
  const results = await cluster.sendBatch([
    { sql: "insert into batch_t values ($1, $2), ($3, $4)", args: [1, "a", 2, "b"] },
    { sql: "update batch_t set s = upper(s) where id = $1", args: [2] },
    { sql: "select id, s from batch_t order by id" },
    { sql: "select pg_backend_pid() as pid" },
    { sql: "select pg_backend_pid() as pid" },
  ]);
  assert.deepEqual(results.slice(0, 3), [
    { command: "INSERT", rowCount: 2, rows: [] },
    { command: "UPDATE", rowCount: 1, rows: [] },
    { command: "SELECT", rowCount: 2, rows: [{ id: 1, s: "a" }, { id: 2, s: "B" }] },
  ]);
  assert.equal(results[3]!.rows[0]!.pid, results[4]!.rows[0]!.pid, "one connection");
  assertPoolIdle(cluster);
});

dbTest(
  "an atomic batch that fails rolls everything back and names the statement",
  async (cluster) => {
    await freshTable(cluster);
    await cluster.exec("insert into batch_t values (9, 'existing')");
    const err = await cluster.sendBatch([
      { sql: "insert into batch_t values (1, 'x')" },
      { sql: "insert into batch_t values (2, 'y')" },
      { sql: "insert into batch_t values (9, 'duplicate')" },
      { sql: "insert into batch_t values (3, 'z')" },
    ]).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof BatchError, String(err));
    assert.equal(err.batchIndex, 2);
    assert.equal(err.code, "23505");
    assert.equal(err.kind, "unique_violation");
    const ids = await cluster.query<{ id: number }>("select id from batch_t order by id");
    assert.deepEqual(ids, [{ id: 9 }], "nothing from the batch was kept");
    assertPoolIdle(cluster);
    const tx = await cluster.query<{ s: string }>(
      "select current_setting('transaction_isolation') as s",
    );
    assert.equal(tx.length, 1, "the connection is usable");
  },
);

dbTest("a non-atomic batch settles each statement on its own", async (cluster) => {
  await freshTable(cluster);
  const settled = await cluster.sendBatch([
    { sql: "insert into batch_t values (1, 'x')" },
    { sql: "insert into batch_t values (1, 'again')" },
    { sql: "select count(*)::int as n from batch_t" },
    { sql: "select * from no_such_batch_table" },
  ], { atomic: false });
  assert.deepEqual(settled.map((r) => r.status), [
    "fulfilled",
    "rejected",
    "fulfilled",
    "rejected",
  ]);
  const second = (settled[1] as PromiseRejectedResult).reason;
  assert.ok(second instanceof BatchError);
  assert.equal(second.batchIndex, 1);
  assert.equal(second.code, "23505");
  assert.equal(((settled[3] as PromiseRejectedResult).reason as BatchError).code, "42P01");
  assert.deepEqual((settled[2] as PromiseFulfilledResult<{ rows: unknown[] }>).value.rows, [{
    n: 1,
  }]);
  assert.deepEqual(await cluster.query("select id, s from batch_t"), [{ id: 1, s: "x" }]);
  assertPoolIdle(cluster);
});

dbTest("an empty batch resolves to [] without touching the server", async (cluster) => {
  const before = cluster.stats().nodes[0]!;
  assert.deepEqual(await cluster.sendBatch([]), []);
  assert.equal(cluster.stats().nodes[0]!.queries, before.queries);
});

dbTest("sendBatch() rejects bad input naming the entry", async (cluster) => {
  await assert.rejects(
    cluster.sendBatch([{ sql: "select 1" }, { sql: 5 as unknown as string }]),
    (e) => e instanceof TypeError && /'queries\[1\]\.sql' must be a string/.test(e.message),
  );
  await assert.rejects(
    cluster.sendBatch([{ sql: "select 1", args: "x" as unknown as unknown[] }]),
    /'queries\[0\]\.args' must be an array/,
  );
  await assert.rejects(
    cluster.sendBatch("select 1" as unknown as []),
    /'queries' must be an array/,
  );
  await assert.rejects(
    cluster.sendBatch([{ sql: "select 1" }], { atomic: "yes" as unknown as true }),
    /'options.atomic' must be a boolean/,
  );
  assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
});

dbTest(
  "a batch pipelines its statements: later statements are sent before earlier ones finish",
  async (cluster) => {
    // Each statement records when the server started it. Pipelined, the
    // second starts right after the first ends, with no client round trip in
    // between; what we can check without timing is that both ran in one
    // transaction on one backend, in order.
    const results = await cluster.sendBatch([
      { sql: "select clock_timestamp() as t, txid_current() as x, pg_backend_pid() as p" },
      { sql: "select clock_timestamp() as t, txid_current() as x, pg_backend_pid() as p" },
    ]);
    const [a, b] = results.map((r) => r.rows[0] as { t: Date; x: string; p: number });
    assert.equal(a!.x, b!.x, "one transaction");
    assert.equal(a!.p, b!.p, "one backend");
    assert.ok(a!.t.getTime() <= b!.t.getTime(), "in order");
  },
);
