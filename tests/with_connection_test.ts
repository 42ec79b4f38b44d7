/** `cluster.withConnection()`: one session of the caller's own, reset afterwards. */

import assert from "node:assert/strict";
import { DbxError } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";

dbTest(
  "withConnection() keeps SET, temp tables and advisory locks to its own session and resets it afterwards",
  async (cluster) => {
    const first = await cluster.withConnection(async (conn) => {
      await conn.exec("set search_path to wc_tenant, public");
      await conn.exec("create temp table wc_tmp(x int)");
      await conn.exec("insert into wc_tmp values ($1)", [1]);
      await conn.queryRow("select pg_advisory_lock($1)", [7007]);
      const row = await conn.queryRow<{ path: string; pid: number; n: number }>(
        "select current_setting('search_path') as path, pg_backend_pid() as pid, (select count(*)::int from wc_tmp) as n",
      );
      assert.deepEqual([row.path, row.n], ["wc_tenant, public", 1], "one session throughout");
      return row.pid;
    });
    // One pooled connection: the next caller gets the same backend, reset.
    const after = await cluster.queryRow<
      { path: string; pid: number; tmp: string | null; locks: number }
    >(
      "select current_setting('search_path') as path, pg_backend_pid() as pid, to_regclass('wc_tmp')::text as tmp, (select count(*)::int from pg_locks where locktype = 'advisory') as locks",
    );
    assert.equal(after.pid, first, "the connection was reset, not thrown away");
    assert.deepEqual([after.path, after.tmp, after.locks], ['"$user", public', null, 0]);
  },
  { config: { pool: { max: 1 }, pipeline: false } },
);

dbTest(
  "withConnection() destroys a connection left inside a transaction or with a statement running",
  async (cluster) => {
    const pid = await cluster.withConnection(async (conn) => {
      await conn.exec("begin");
      await conn.exec("create table wc_never(x int)");
      return (await conn.queryRow<{ pid: number }>("select pg_backend_pid() as pid")).pid;
    });
    const row = await cluster.queryRow<{ pid: number; t: string | null }>(
      "select pg_backend_pid() as pid, to_regclass('wc_never')::text as t",
    );
    assert.notEqual(row.pid, pid, "a new connection");
    assert.equal(row.t, null, "the open transaction was rolled back");
  },
  { config: { pool: { max: 1 }, pipeline: false } },
);

dbTest("withConnection() on the replica route runs where reads go", async (cluster) => {
  const standby = await cluster.withConnection(
    (conn) => conn.queryRow<{ r: boolean }>("select pg_is_in_recovery() as r"),
    { route: "replica" },
  );
  assert.equal(standby.r, cluster.stats().nodes.length > 1);
});

dbTest(
  "withConnection() refuses bad input by name and refuses statements after fn settled",
  async (cluster) => {
    await assert.rejects(
      cluster.withConnection("nope" as never),
      (e: unknown) => e instanceof TypeError && /'fn' must be a function/.test(e.message),
    );
    await assert.rejects(
      cluster.withConnection(() => Promise.resolve(), { route: "both" as never }),
      (e: unknown) =>
        e instanceof RangeError && /'route'/.test(e.message) && /"both"/.test(e.message),
    );
    let kept: { exec(sql: string): Promise<unknown> } | undefined;
    await cluster.withConnection((conn) => {
      kept = conn;
      return Promise.resolve();
    });
    await assert.rejects(kept!.exec("select 1"), DbxError);
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
  },
);

dbTest(
  "withConnection() with an aborted signal or a passed deadline rejects with DbxError canceled/timeout and keeps the pool usable",
  async (cluster) => {
    await assert.rejects(
      cluster.withConnection(() => Promise.resolve(1), { signal: AbortSignal.abort() }),
      (e: unknown) => e instanceof DbxError && e.kind === "canceled",
    );
    await assert.rejects(
      cluster.withConnection((conn) => conn.exec("select pg_sleep(30)"), { timeoutMs: 100 }),
      (e: unknown) => e instanceof DbxError && e.kind === "timeout",
    );
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
  },
  { config: { pool: { max: 1 }, pipeline: false } },
);
