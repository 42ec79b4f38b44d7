/**
 * Smoke test of the public API on Bun (not a Deno test): `bun tests/bun_smoke.ts`
 * after `npm install` at the repository root (Bun resolves the bare `pg`
 * imports of src/ from the root node_modules; Deno maps them in deno.json).
 *
 * Starts a local primary + 1 replica, connects, and checks: writes run on the
 * primary and reads on the replica (by `inet_server_port()`), `runTx` commits
 * and rolls back, COPY, rows equal to stock pg's, one Kysely (`dbxDialect`)
 * and one Drizzle (`cluster.pgPool()`) query (kysely and drizzle-orm are root
 * devDependencies), and `close()`. Prints one line per step; exits 0, or
 * 1 with the failed step and its error.
 *
 * @module
 */

import assert from "node:assert/strict";
import process from "node:process";
import { clearTimeout, setTimeout } from "node:timers";
import { sql as drizzleSql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import { Kysely, sql } from "kysely";
// @ts-types="@types/pg"
import pg from "pg";
import { ClusterClosedError, connect } from "../mod.ts";
import { dbxDialect } from "../src/compat/kysely.ts";
import { startLocalCluster } from "../src/testing/mod.ts";

const TIMEOUT_MS = 120_000;

const bun = (globalThis as { Bun?: { version: string } }).Bun;
const runtime = bun === undefined ? "not Bun" : `Bun ${bun.version}`;

let step = "start";
const ok = (what: string) => console.log(`bun smoke: ok   ${what}`);

// A hung server must fail the run, not stall CI: abort startup, then give up.
const deadline = new AbortController();
const watchdog = setTimeout(() => {
  console.error(`bun smoke: FAILED on ${runtime}: no progress within ${TIMEOUT_MS} ms (${step})`);
  deadline.abort(new Error("bun smoke timed out"));
  setTimeout(() => process.exit(1), 10_000).unref();
}, TIMEOUT_MS);
watchdog.unref();

try {
  step = "startLocalCluster({ replicas: 1 })";
  await using local = await startLocalCluster({ replicas: 1, signal: deadline.signal });
  const [primary, replica] = local.nodes;
  assert.ok(primary !== undefined && replica !== undefined, "a primary and a replica");
  ok(`${step}: primary :${primary.port}, replica :${replica.port}`);

  step = "connect()";
  const cluster = await connect({
    master: local.masterUrl,
    replicas: local.replicaUrls,
    healthCheck: { intervalMs: 500, timeoutMs: 500 },
  });
  try {
    ok(step);

    step = "write routing";
    const w = await cluster.queryRow<{ port: number; rec: boolean }>(
      "select inet_server_port() as port, pg_is_in_recovery() as rec",
    );
    assert.deepEqual(w, { port: primary.port, rec: false }, "queryRow runs on the primary");
    await cluster.exec("create table smoke(id int primary key)");
    ok(`${step}: queryRow/exec on the primary (:${w.port})`);

    step = "read routing";
    const r = await cluster.readQueryRow<{ port: number; rec: boolean }>(
      "select inet_server_port() as port, pg_is_in_recovery() as rec",
    );
    assert.deepEqual(r, { port: replica.port, rec: true }, "readQueryRow runs on the replica");
    ok(`${step}: readQueryRow on the replica (:${r.port})`);

    step = "runTx commit";
    const inTx = await cluster.runTx(async (tx) => {
      await tx.exec("insert into smoke values (1)");
      assert.equal(cluster.getExecutor(), tx, "the transaction is bound to the async context");
      return (await tx.queryRow<{ port: number }>("select inet_server_port() as port")).port;
    });
    assert.equal(inTx, primary.port, "the transaction runs on the primary");
    ok(step);

    step = "runTx rollback";
    await assert.rejects(
      cluster.runTx(async (tx) => {
        await tx.exec("insert into smoke values (2)");
        throw new Error("roll me back");
      }),
      /roll me back/,
      "runTx re-throws the callback's error",
    );
    ok(step);

    step = "copyFrom";
    assert.equal(await cluster.copyFrom("smoke", ["id"], [[3], [4]]), 2);
    const ids = await cluster.query<{ id: number }>("select id from smoke order by id");
    assert.deepEqual(ids.map((x) => x.id), [1, 3, 4], "commit kept, rollback undone, COPY in");
    ok(`${step}; table holds ${JSON.stringify(ids.map((x) => x.id))}`);

    step = "rows as stock pg reads them";
    // dbx's row reader (`pg_parser.ts` `readFields`) under Bun's engine, which the Deno
    // suite does not run: binary columns (int4, float8, timestamptz) beside text ones,
    // some not ASCII and some NULL.
    const rowsSql = `select g as id, case when g % 5 = 0 then null else 'näme ' || g end as name,
      'user' || g || '@example.com' as email, g / 7.0::float8 as score,
      timestamptz '2026-12-04 10:00:00.123456+00' - g * interval '1 minute 1.5 ms' as created
      from generate_series(1, $1::int) g`;
    const stock = new pg.Client({ connectionString: local.masterUrl });
    stock.on("error", () => {});
    await stock.connect();
    try {
      const want = (await stock.query(rowsSql, [50])).rows;
      // The first run describes the statement; later ones ask for the binary columns.
      for (let run = 1; run <= 3; run++) {
        assert.deepEqual(await cluster.query(rowsSql, [50]), want, `run ${run}`);
      }
      ok(`${step}: ${want.length} rows, three runs equal`);
    } finally {
      await stock.end();
    }

    step = "Kysely on dbxDialect";
    const kysely = new Kysely<{ smoke: { id: number } }>({
      dialect: dbxDialect(cluster, { reads: "replica" }),
    });
    const k = await kysely.selectFrom("smoke").select(sql<number>`inet_server_port()`.as("port"))
      .limit(1).executeTakeFirstOrThrow();
    assert.equal(k.port, replica.port, "Kysely's select ran on the replica");
    ok(`${step}: select on the replica (:${k.port})`);

    step = "Drizzle on pgPool()";
    const db = drizzle({ client: cluster.pgPool() });
    const d = await db.execute<{ port: number }>(drizzleSql`select inet_server_port() as port`);
    assert.equal(d.rows[0]?.port, primary.port, "Drizzle's query ran on the primary");
    ok(`${step}: query on the primary (:${d.rows[0]?.port})`);
  } finally {
    step = "close()";
    await cluster.close();
  }
  await cluster.close(); // idempotent: the same promise
  await assert.rejects(cluster.query("select 1"), ClusterClosedError, "closed means closed");
  ok(`${step}: idempotent, later calls reject with ClusterClosedError`);

  step = "stop the local cluster";
} catch (err) {
  console.error(`bun smoke: FAILED on ${runtime} at "${step}":`, err);
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
}
if (process.exitCode !== 1) console.log(`bun smoke: OK on ${runtime}`);
