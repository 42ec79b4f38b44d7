/** `cluster.pgPool()`: the node-postgres surface ORMs use, against the local cluster. */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { dbTest } from "../src/testing/mod.ts";
import { until } from "./helpers.ts";

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
