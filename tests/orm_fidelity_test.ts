/**
 * The ORM adapters behave as node-postgres does, against the local cluster:
 * Kysely 0.29's `inflightQueryAbortStrategy` on both ways of putting Kysely
 * on a cluster, transaction statements seen by Kysely's `log`, the facade's
 * "error" event for a connection that dies idle, and statements outside
 * transactions on the shared pipelined path (ORM statement names included).
 */

import assert from "node:assert/strict";
import { Kysely, type LogEvent, PostgresDialect, sql } from "kysely";
// @ts-types="@types/pg-cursor"
import Cursor from "pg-cursor";
import type { Cluster } from "../mod.ts";
import { dbxDialect } from "../src/compat/kysely.ts";
import { dbTest } from "../src/testing/mod.ts";
import { until } from "./helpers.ts";

interface DB {
  orm_abort: { id: number };
}

const setUps = {
  "PostgresDialect on pgPool()": (cluster: Cluster, log?: (e: LogEvent) => void) =>
    new Kysely<DB>({
      dialect: new PostgresDialect({ pool: cluster.pgPool(), cursor: Cursor }),
      ...(log === undefined ? {} : { log }),
    }),
  "dbxDialect": (cluster: Cluster, log?: (e: LogEvent) => void) =>
    new Kysely<DB>({ dialect: dbxDialect(cluster), ...(log === undefined ? {} : { log }) }),
};

/** A write that waits on the server first: `marker` finds it in pg_stat_activity. */
function slowInsert(marker: string, seconds: number) {
  return sql`with delayed as (select pg_sleep(${sql.lit(seconds)}) as ${sql.id(marker)})
    insert into orm_abort select 1 from delayed`;
}

/** Backends running a statement that mentions `marker`. */
async function running(cluster: Cluster, marker: string): Promise<number[]> {
  const rows = await cluster.query<{ pid: number }>(
    "select pid from pg_stat_activity where state = 'active' and query like $1 and pid <> pg_backend_pid()",
    [`%${marker}%`],
  );
  return rows.map((r) => r.pid);
}

async function rows(cluster: Cluster): Promise<number> {
  const [row] = await cluster.query<{ n: number }>("select count(*)::int as n from orm_abort");
  return row!.n;
}

async function fresh(cluster: Cluster): Promise<void> {
  await cluster.exec("drop table if exists orm_abort");
  await cluster.exec("create table orm_abort(id int)");
}

for (const [way, setUp] of Object.entries(setUps)) {
  dbTest(`Kysely (${way}): an aborted query runs on with 'ignore query'`, async (cluster) => {
    await fresh(cluster);
    const db = setUp(cluster);
    const abort = new AbortController();
    const query = slowInsert("ignored_marker", 0.5).execute(db, { signal: abort.signal });
    await until(
      "the insert runs",
      async () => (await running(cluster, "ignored_marker")).length > 0,
    );
    abort.abort();
    await assert.rejects(query, (e: unknown) => e instanceof DOMException);
    await until(
      "the insert ended",
      async () => (await running(cluster, "ignored_marker")).length === 0,
    );
    assert.equal(await rows(cluster), 1, "the statement was not cancelled");
    await db.destroy();
  });

  dbTest(`Kysely (${way}): 'cancel query' cancels it on the server`, async (cluster) => {
    await fresh(cluster);
    const db = setUp(cluster);
    const abort = new AbortController();
    const query = slowInsert("cancel_marker", 60).execute(db, {
      signal: abort.signal,
      inflightQueryAbortStrategy: "cancel query",
    });
    await until(
      "the insert runs",
      async () => (await running(cluster, "cancel_marker")).length > 0,
    );
    const [pid] = await running(cluster, "cancel_marker");
    abort.abort();
    await assert.rejects(query, (e: unknown) => e instanceof DOMException);
    await until(
      "the insert ended",
      async () => (await running(cluster, "cancel_marker")).length === 0,
    );
    assert.equal(await rows(cluster), 0);
    // Cancelled, not terminated: the backend lived on (until dbx dropped the connection).
    assert.ok(pid !== undefined);
    await db.destroy();
  });

  dbTest(
    `Kysely (${way}): 'kill session' terminates the backend, reported on pgPool()'s "error"`,
    async (cluster) => {
      await fresh(cluster);
      const db = setUp(cluster);
      const errors: Error[] = [];
      const reported = new Promise<void>((resolve) =>
        cluster.pgPool().on("error", (err) => {
          errors.push(err);
          resolve();
        })
      );
      const abort = new AbortController();
      const query = slowInsert("kill_marker", 60).execute(db, {
        signal: abort.signal,
        inflightQueryAbortStrategy: "kill session",
      });
      await until(
        "the insert runs",
        async () => (await running(cluster, "kill_marker")).length > 0,
      );
      const [pid] = await running(cluster, "kill_marker");
      abort.abort();
      await assert.rejects(query, (e: unknown) => e instanceof DOMException);
      await reported;
      assert.equal(errors[0]?.message, "Connection terminated unexpectedly");
      // The backend leaves pg_stat_activity as it exits, just after its socket closed.
      await until(
        "the backend is gone",
        async () =>
          (await cluster.query("select 1 from pg_stat_activity where pid = $1", [pid])).length ===
            0,
      );
      assert.equal(await rows(cluster), 0);
      // A kill asked for is not the node's failure: it stays up and answers.
      assert.ok(cluster.stats().nodes.every((n) => n.healthy));
      assert.deepEqual(await db.selectNoFrom(sql<number>`1`.as("one")).execute(), [{ one: 1 }]);
      await db.destroy();
    },
  );

  dbTest(`Kysely (${way}): log sees transaction and savepoint statements`, async (cluster) => {
    await fresh(cluster);
    const seen: string[] = [];
    const db = setUp(cluster, (e) => void seen.push(e.query.sql));
    await db.transaction().setIsolationLevel("serializable").setAccessMode("read write").execute(
      async (trx) => {
        await trx.insertInto("orm_abort").values({ id: 1 }).execute();
      },
    );
    const trx = await db.startTransaction().execute();
    const sp = await trx.savepoint("sp_one").execute();
    await sp.insertInto("orm_abort").values({ id: 2 }).execute();
    await sp.rollbackToSavepoint("sp_one").execute();
    await trx.commit().execute();
    assert.deepEqual(seen, [
      "start transaction isolation level serializable read write",
      'insert into "orm_abort" ("id") values ($1)',
      "commit",
      "begin",
      'savepoint "sp_one"',
      'insert into "orm_abort" ("id") values ($1)',
      'rollback to "sp_one"',
      "commit",
    ]);
    assert.equal(await rows(cluster), 1);
    await db.destroy();
  });

  dbTest(`Kysely (${way}): a connection keeps its session; nothing leaks`, async (cluster) => {
    const db = setUp(cluster);
    await db.connection().execute(async (conn) => {
      await sql`create temporary table orm_abort_tmp(x int)`.execute(conn);
      await sql`insert into orm_abort_tmp values (1)`.execute(conn);
      await sql`set application_name = 'orm_fidelity'`.execute(conn);
      const { rows } = await sql<{ n: number; app: string }>`
        select count(*)::int as n, current_setting('application_name') as app from orm_abort_tmp`
        .execute(conn);
      assert.deepEqual(rows, [{ n: 1, app: "orm_fidelity" }]);
    });
    // Reset before anyone else got the connection.
    const apps = await cluster.query<{ n: number }>(
      "select count(*)::int as n from pg_stat_activity where application_name = 'orm_fidelity'",
    );
    assert.deepEqual(apps, [{ n: 0 }]);
    const tmp = await db.selectNoFrom(sql<boolean>`to_regclass('orm_abort_tmp') is null`.as("gone"))
      .execute();
    assert.deepEqual(tmp, [{ gone: true }]);
    await db.destroy();
  });
}

dbTest("pgPool() emits 'error' when an idle connection dies; dbx carries on", async (cluster) => {
  const pool = cluster.pgPool();
  // A pooled connection, idle once released.
  const client = await pool.connect();
  const { rows: [row] } = await client.query("select pg_backend_pid() as pid");
  client.release();
  const errors: Error[] = [];
  const reported = new Promise<void>((resolve) =>
    pool.on("error", (err: Error) => {
      errors.push(err);
      resolve();
    })
  );
  await cluster.exec("select pg_terminate_backend($1)", [(row as { pid: number }).pid]);
  await reported;
  assert.match(errors[0]!.message, /terminat/);
  assert.equal((errors[0] as { code?: string }).code, "57P01");
  assert.deepEqual(await pool.query("select 1 as one").then((r) => r.rows), [{ one: 1 }]);
  await pool.end();
});

dbTest(
  "pgPool() without an 'error' listener: an idle connection dying is harmless",
  async (cluster) => {
    const pool = cluster.pgPool();
    const listener = () => {};
    pool.on("error", listener);
    pool.removeListener("error", listener);
    const client = await pool.connect();
    const { rows: [row] } = await client.query("select pg_backend_pid() as pid");
    client.release();
    const pid = (row as { pid: number }).pid;
    await cluster.exec("select pg_terminate_backend($1)", [pid]);
    await until(
      "the backend is gone",
      async () =>
        (await cluster.query("select 1 from pg_stat_activity where pid = $1", [pid])).length === 0,
    );
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
  },
);

dbTest(
  "pgPool().query() takes the pipes; ORM statement names give way to the cache",
  async (cluster) => {
    const pool = cluster.pgPool();
    const pids = await Promise.all(
      Array.from(
        { length: 40 },
        () =>
          pool.query("select pg_backend_pid() as pid").then((r) =>
            (r.rows[0] as { pid: number }).pid
          ),
      ),
    );
    // Two pipes per node by default; a pooled connection only for overflow.
    assert.ok(
      new Set(pids).size < 40,
      `pipelined: ${new Set(pids).size} backends for 40 statements`,
    );
    // pg refuses one name for two texts on a connection; dbx names statements by text.
    const a = await pool.query({ name: "orm_stmt", text: "select $1::int as a", values: [1] });
    const b = await pool.query({ name: "orm_stmt", text: "select $1::text as b", values: ["x"] });
    assert.deepEqual([a.rows, b.rows], [[{ a: 1 }], [{ b: "x" }]]);
    const arrays = await pool.query({
      name: "orm_rows",
      text: "select $1::int as a",
      values: [2],
      rowMode: "array",
    });
    assert.deepEqual(arrays.rows, [[2]]);
  },
);

dbTest(
  "a schema change sent through dbx makes cached statements prepare again",
  async (cluster) => {
    const pool = cluster.pgPool();
    const insert = "insert into orm_ddl(at) values ($1)";
    await cluster.exec("drop table if exists orm_ddl");
    await cluster.exec("create table orm_ddl(at timestamp)");
    await pool.query(insert, ["2022-01-01 00:00:00-02"]);
    // The column's type changes: a statement prepared before would still read $1 as a timestamp.
    await pool.query("drop table orm_ddl");
    await pool.query("create table orm_ddl(at timestamptz)");
    await pool.query(insert, ["2022-01-01 00:00:00-02"]);
    const [row] = await cluster.query<{ at: string }>(
      "select (at at time zone 'UTC')::text as at from orm_ddl",
    );
    assert.equal(row!.at, "2022-01-01 02:00:00");
    // A re-created enum: the old statement's parameter type is gone (XX000), prepared again.
    const enumInsert = "insert into orm_enum(v) values ($1)";
    for (let i = 0; i < 2; i++) {
      await cluster.exec("drop table if exists orm_enum");
      await cluster.exec("drop type if exists orm_mood");
      await cluster.exec("create type orm_mood as enum ('ok', 'meh')");
      await cluster.exec("create table orm_enum(v orm_mood)");
      await cluster.exec(enumInsert, ["ok"]);
    }
    assert.deepEqual(await cluster.query("select v from orm_enum"), [{ v: "ok" }]);
  },
);

dbTest("dbxDialect({ reads: 'replica' }): a plain read streams from a replica", async (cluster) => {
  const db = new Kysely<DB>({ dialect: dbxDialect(cluster, { reads: "replica" }) });
  const seen: boolean[] = [];
  const query = db.selectNoFrom(sql<boolean>`pg_is_in_recovery()`.as("r"));
  for await (const row of query.stream(1)) seen.push(row.r);
  assert.deepEqual(seen, [true]);
  // Inside a transaction the stream stays on the transaction's primary connection.
  await db.transaction().execute(async (trx) => {
    const rows: boolean[] = [];
    for await (const row of trx.selectNoFrom(sql<boolean>`pg_is_in_recovery()`.as("r")).stream(1)) {
      rows.push(row.r);
    }
    assert.deepEqual(rows, [false]);
  });
  await db.destroy();
});
