/** `cluster.pgPool()`: the node-postgres surface ORMs use, against the local cluster. */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { dbTest, testCluster, testLogger } from "../src/testing/mod.ts";
import { named, noPostgres, until, within } from "./helpers.ts";

dbTest(
  "pgPool().query() passes rowMode, types and name through and returns pg's result",
  async (cluster) => {
    const pool = cluster.pgPool();
    const res = await pool.query({
      text: "select $1::int as n, 'x'::text as s",
      values: [7],
      rowMode: "array",
      name: "pg_pool_test_stmt",
      types: { getTypeParser: (oid: number) => (v: string) => oid === 23 ? Number(v) * 10 : v },
    });
    assert.equal(res.command, "SELECT");
    assert.equal(res.rowCount, 1);
    assert.deepEqual(res.rows, [[70, "x"]]);
    assert.deepEqual(res.fields.map((f) => [f.name, f.dataTypeID]), [["n", 23], ["s", 25]]);
    const again = await pool.query({ text: "select $1::int as n", name: "pg_pool_test_n" }, [2]);
    assert.deepEqual(again.rows, [{ n: 2 }]);
    const viaCallback = await new Promise<pg.QueryResult>((resolve, reject) =>
      pool.query(
        "select 1 as one",
        (err: Error | undefined, r: pg.QueryResult) => err ? reject(err) : resolve(r),
      )
    );
    assert.deepEqual(viaCallback.rows, [{ one: 1 }]);
  },
);

dbTest("pgPool() errors are pg's own, with their SQLSTATE code", async (cluster) => {
  const pool = cluster.pgPool();
  const err = await pool.query("select * from no_such_table_pg_pool").then(
    () => assert.fail("accepted"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof pg.DatabaseError, `pg's error, got ${err}`);
  assert.equal(err.code, "42P01");
  const c = await pool.connect();
  await assert.rejects(c.query("select 1/0"), (e: pg.DatabaseError) => e.code === "22012");
  c.release();
});

dbTest(
  "pgPool().connect() pins one connection; release() is idempotent and drops a busy one",
  async (cluster) => {
    const pool = cluster.pgPool();
    const client = await pool.connect();
    const errors: Error[] = [];
    const onError = (e: Error) => errors.push(e);
    client.on("error", onError);
    const a = await client.query("select pg_backend_pid() as pid");
    const b = await client.query("select pg_backend_pid() as pid");
    assert.deepEqual(a.rows, b.rows, "one backend");
    await client.query("begin");
    await client.query("create temp table pinned_tmp(x int)");
    client.removeListener("error", onError);
    client.release();
    client.release();
    // Released inside BEGIN: destroyed, not pooled (its temp table died with it).
    const c2 = await pool.connect();
    const exists = await c2.query("select to_regclass('pinned_tmp') is not null as e");
    assert.deepEqual(exists.rows, [{ e: false }]);
    c2.release();
    const pid = (a.rows[0] as { pid: number }).pid;
    await until("the released backend is gone", async () => {
      const [row] = await cluster.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where pid = $1",
        [pid],
      );
      return row?.n === 0;
    });
    assert.deepEqual(errors, []);
    const replica = await cluster.pgPool({ route: "replica" }).connect();
    const r = await replica.query("select pg_is_in_recovery() as r");
    assert.deepEqual(r.rows, [{ r: true }]);
    replica.release();
  },
);

dbTest(
  "pgPool() joins the ambient runTx: query and a connect()ed client's BEGIN nests",
  async (cluster) => {
    await cluster.exec("drop table if exists pg_pool_amb");
    await cluster.exec("create table pg_pool_amb(x int)");
    const pool = cluster.pgPool();
    await cluster.runTx(async () => {
      await pool.query("insert into pg_pool_amb values (1)");
      const c = await pool.connect();
      await c.query("begin");
      await c.query("insert into pg_pool_amb values (2)");
      await c.query("rollback");
      await c.query("begin");
      await c.query("insert into pg_pool_amb values (3)");
      await c.query("commit");
      c.release();
      // Released inside its BEGIN: its work is undone, the runTx goes on.
      const left = await pool.connect();
      await left.query("begin");
      await left.query("insert into pg_pool_amb values (4)");
      left.release();
      await pool.query("insert into pg_pool_amb values (5)");
    });
    const rows = await cluster.query("select x from pg_pool_amb order by x");
    assert.deepEqual(rows, [{ x: 1 }, { x: 3 }, { x: 5 }]);
  },
);

/** The time zone a statement sees. */
async function zoneOf(run: Promise<pg.QueryResult>): Promise<string> {
  return ((await run).rows[0] as { TimeZone: string }).TimeZone;
}

/** A zone that is not the server's default (asserted by the tests). */
function otherZone(server: string): string {
  return server === "Pacific/Chatham" ? "Asia/Kathmandu" : "Pacific/Chatham";
}

Deno.test({
  name: named(
    "pgPool().query() with SET pins that facade: its later statements see it, other facades and the cluster do not",
  ),
  ignore: noPostgres,
  async fn() {
    const logger = testLogger();
    await using cluster = await testCluster({ logger });
    const pool = cluster.pgPool();
    const server = await zoneOf(pool.query("show timezone"));
    const zone = otherZone(server);
    assert.notEqual(server, zone);
    // Sent without waiting, as an ORM may: they run in order on the pinned connection.
    const [, shown, pid] = await Promise.all([
      pool.query(`set time zone '${zone}'`),
      zoneOf(pool.query("show timezone")),
      pool.query("select pg_backend_pid() as pid"),
    ]);
    assert.equal(shown, zone);
    for (let i = 0; i < 3; i++) {
      assert.equal(await zoneOf(pool.query({ text: "show timezone" })), zone);
      assert.deepEqual((await pool.query("select pg_backend_pid() as pid")).rows, pid.rows);
    }
    // Nobody else sees it: the cluster still refuses SET on its shared path.
    const other = cluster.pgPool();
    const views = await Promise.all(
      Array.from(
        { length: 20 },
        (_, i) =>
          i % 2 === 0
            ? cluster.queryRow<{ TimeZone: string }>("show timezone").then((r) => r!.TimeZone)
            : zoneOf(other.query("show timezone")),
      ),
    );
    assert.deepEqual(new Set(views), new Set([server]));
    await assert.rejects(cluster.exec(`set time zone '${zone}'`), /changes session state/);
    await assert.rejects(cluster.query(`set time zone '${zone}'`), /changes session state/);
    // Inside runTx a facade's SET runs in the transaction and pins nothing.
    await cluster.runTx(async (tx) => {
      await other.query("set local time zone 'UTC'");
      assert.equal((await tx.queryRow<{ TimeZone: string }>("show timezone"))!.TimeZone, "UTC");
    });
    assert.equal(await zoneOf(other.query("show timezone")), server);
    const warnings = logger.entries.filter((e) => /pinned this facade/.test(e.msg));
    assert.equal(warnings.length, 1, "one warning, for the one facade that pinned");
    assert.equal(warnings[0]!.level, "warn");
    await other.end();
    await pool.end();
  },
});

Deno.test({
  name: named("pgPool().end() hands a pinned connection back reset (DISCARD ALL)"),
  ignore: noPostgres,
  async fn() {
    // One pooled connection: whoever takes one next gets the facade's, once it is back.
    await using cluster = await testCluster({ pool: { max: 1 }, pipeline: false });
    const pool = cluster.pgPool();
    const server = await zoneOf(pool.query("show timezone"));
    const zone = otherZone(server);
    assert.notEqual(server, zone);
    await pool.query(`set time zone '${zone}'`);
    const [{ pid }] = (await pool.query("select pg_backend_pid() as pid")).rows as [
      { pid: number },
    ];
    await pool.end();
    const after = await cluster.withConnection((conn) =>
      conn.queryRow<{ pid: number; TimeZone: string }>(
        "select pg_backend_pid() as pid, current_setting('TimeZone') as \"TimeZone\"",
      )
    );
    assert.deepEqual(after, { pid, TimeZone: server }, "the same connection, reset");
    // And across the node's connections: no backend of the cluster kept the zone.
    const fresh = cluster.pgPool();
    assert.equal(await zoneOf(fresh.query("show timezone")), server);
    assert.equal(
      (await cluster.queryRow<{ TimeZone: string }>("show timezone"))!.TimeZone,
      server,
    );
    await fresh.end();
  },
});

Deno.test({
  name: named("a cluster closed with a pinned pgPool() facade not ended closes promptly"),
  ignore: noPostgres,
  async fn() {
    await using cluster = await testCluster();
    const pool = cluster.pgPool();
    const zone = otherZone(await zoneOf(pool.query("show timezone")));
    await pool.query(`set time zone '${zone}'`);
    const [{ pid }] = (await pool.query("select pg_backend_pid() as pid")).rows as [
      { pid: number },
    ];
    const started = performance.now();
    await within("close() returns", cluster.close());
    // A connection close() had to cut would have waited for its grace (5 s).
    assert.ok(performance.now() - started < 4_000, "handed back, not cut after the grace");
    await assert.rejects(pool.query("show timezone"), /cluster was closed/);
    await using check = await testCluster();
    await until("the pinned backend is gone", async () => {
      const [row] = await check.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where pid = $1",
        [pid],
      );
      return row?.n === 0;
    });
  },
});
