/**
 * Connections that keep no one else's state (issue #19, items 1–4): session
 * state never crosses callers, a transaction refuses late statements, a
 * facade client released mid-statement never hands its transaction on, and
 * the statement cache survives the application dropping prepared statements.
 */

import assert from "node:assert/strict";
import { DbxError } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";
import { until } from "./helpers.ts";

const DEFAULT_PATH = '"$user", public';

/** The settings every caller should see, read by `n` concurrent callers. */
async function seenByOthers(
  run: (sql: string) => Promise<Record<string, unknown>[]>,
  n = 40,
): Promise<Set<string>> {
  const seen = new Set<string>();
  await Promise.all(
    Array.from({ length: n }, async () => {
      const [row] = await run(
        "select current_setting('search_path') as path, current_user::text as who, current_setting('statement_timeout') as st",
      );
      seen.add(`${row!.path} | ${row!.who} | ${row!.st}`);
    }),
  );
  return seen;
}

const SESSION_CHANGERS = [
  "set role pg_monitor",
  "set search_path to tenant_a",
  "set statement_timeout = 4321",
  "select set_config('search_path', 'tenant_b', false)",
  "/* leading comment */ SET SESSION AUTHORIZATION pg_monitor",
  "select 1; set search_path to tenant_c",
  "select pg_advisory_lock(4242)",
  "create temp table leak_t(x int)",
  "discard all",
  "deallocate all",
  "listen some_channel",
];

for (const pipeline of [true, false]) {
  dbTest(
    `statements that change session state are refused on shared connections, and no other caller sees them (pipeline: ${pipeline})`,
    async (cluster) => {
      const baseline = await seenByOthers((sql) => cluster.query(sql));
      assert.equal(baseline.size, 1, `one view before: ${[...baseline]}`);
      for (const sql of SESSION_CHANGERS) {
        const others = seenByOthers((q) => cluster.query(q));
        const err = await cluster.exec(sql).then(() => undefined, (e: unknown) => e);
        assert.ok(
          err instanceof DbxError && /changes session state/.test(err.message),
          `${sql}: refused, got ${err}`,
        );
        assert.match(err.message, /withConnection|cluster\.listen|runTx/, "names the right tool");
        assert.deepEqual(await others, baseline, `${sql}: nobody saw it`);
        // The read path refuses the same.
        await assert.rejects(cluster.readQuery(sql), /changes session state/);
        // The facade runs it on a connection it pins for itself: still nobody else sees it.
        const facade = cluster.pgPool();
        await facade.query(sql);
        assert.deepEqual(
          await seenByOthers((q) => cluster.query(q)),
          baseline,
          `${sql} through pgPool(): nobody else saw it`,
        );
        await facade.end();
      }
      assert.deepEqual(await seenByOthers((sql) => cluster.query(sql)), baseline);
      assert.deepEqual(await seenByOthers((sql) => cluster.readQuery(sql)), baseline);
      // The facades' connections are reset (DISCARD ALL) once handed back.
      await until("no advisory lock is held", async () => {
        const [locks] = await cluster.query<{ n: number }>(
          "select count(*)::int as n from pg_locks where locktype = 'advisory'",
        );
        return locks?.n === 0;
      });
    },
    { config: pipeline ? { pool: { max: 2 } } : { pipeline: false, pool: { max: 2 } } },
  );
}

dbTest(
  "SET LOCAL, SET TRANSACTION and set_config(…, true) still run: their effect ends with the statement's transaction",
  async (cluster) => {
    await cluster.exec("set local statement_timeout = 1234");
    await cluster.query("select set_config('search_path', 'x', true)");
    assert.deepEqual(
      await seenByOthers((sql) => cluster.query(sql), 4),
      new Set([
        `${DEFAULT_PATH} | ${
          (await cluster.queryRow<{ u: string }>("select current_user::text as u")).u
        } | 0`,
      ]),
    );
  },
);

dbTest(
  "a plain SET inside runTx does not outlive COMMIT: the next transactions see the defaults",
  async (cluster) => {
    const pid = await cluster.runTx(async (tx) => {
      await tx.exec("set statement_timeout = 4321");
      await tx.exec("set search_path to tenant_a");
      return (await tx.queryRow<{ pid: number }>("select pg_backend_pid() as pid")).pid;
    });
    for (let i = 0; i < 10; i++) {
      const row = await cluster.runTx((tx) =>
        tx.queryRow<{ st: string; path: string; pid: number }>(
          "select current_setting('statement_timeout') as st, current_setting('search_path') as path, pg_backend_pid() as pid",
        )
      );
      assert.deepEqual([row.st, row.path], ["0", DEFAULT_PATH], `transaction ${i}`);
      // The connection was reset, not thrown away: one pool of one connection.
      assert.equal(row.pid, pid, "same backend, reset");
    }
    // SET LOCAL ends with its transaction and needs no reset.
    await cluster.runTx((tx) => tx.exec("set local statement_timeout = 99"));
    const row = await cluster.runTx((tx) =>
      tx.queryRow<{ st: string }>("select current_setting('statement_timeout') as st")
    );
    assert.equal(row.st, "0");
  },
  { config: { pool: { max: 1 }, pipeline: false } },
);

dbTest(
  "a statement sent after commit() is refused, never run outside the transaction",
  async (cluster) => {
    await cluster.exec("drop table if exists late_t");
    await cluster.exec("create table late_t(x int)");
    try {
      const tx = await cluster.begin();
      await tx.exec("insert into late_t values (1)");
      const done = tx.commit();
      const late = tx.exec("insert into late_t values (2)").then(() => "ran", (e: unknown) => e);
      const lateRollback = tx.rollback().then(() => "ran", (e: unknown) => e);
      await done;
      const refused = await late;
      assert.ok(refused instanceof DbxError && /committed/.test(refused.message), `${refused}`);
      assert.ok((await lateRollback) instanceof DbxError, "rollback() after commit() is refused");
      assert.deepEqual(await cluster.query("select x from late_t"), [{ x: 1 }]);
    } finally {
      await cluster.exec("drop table late_t");
    }
  },
);

dbTest(
  "inside runTx, statements from callbacks that outlive it are refused, never run in autocommit",
  async (cluster) => {
    await cluster.exec("drop table if exists late_cb_t");
    await cluster.exec("create table late_cb_t(x int)");
    try {
      const late: Promise<unknown>[] = [];
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      await cluster.runTx((tx) => {
        // The classic mistake: forEach(async …) does not wait.
        [1, 2, 3].forEach((i) => {
          late.push((async () => {
            await gate;
            await (i === 3 ? cluster.exec("insert into late_cb_t values (3)") : tx.exec(
              "insert into late_cb_t values ($1)",
              [i],
            ));
          })());
        });
        return Promise.resolve();
      });
      release();
      const outcomes = await Promise.allSettled(late);
      assert.deepEqual(outcomes.map((o) => o.status), ["rejected", "rejected", "rejected"]);
      for (const o of outcomes) {
        assert.ok(
          o.status === "rejected" && o.reason instanceof DbxError &&
            /already committed/.test(o.reason.message),
          `${o.status === "rejected" ? o.reason : o.status}`,
        );
      }
      assert.deepEqual(await cluster.query("select x from late_cb_t"), []);
    } finally {
      await cluster.exec("drop table late_cb_t");
    }
  },
);

dbTest(
  "a pgPool() client released while its BEGIN is unanswered loses none of the next caller's writes",
  async (cluster) => {
    await cluster.exec("drop table if exists facade_begin_t");
    await cluster.exec("create table facade_begin_t(x int)");
    try {
      const pool = cluster.pgPool();
      const c = await pool.connect();
      const begin = c.query("begin").catch((e: unknown) => e);
      c.release();
      for (let i = 1; i <= 5; i++) {
        await cluster.exec("insert into facade_begin_t values ($1)", [i]);
      }
      await begin;
      const [row] = await cluster.query<{ n: number }>(
        "select count(*)::int as n from facade_begin_t",
      );
      assert.equal(row?.n, 5, "every acknowledged insert is there");
      const [open] = await cluster.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where application_name = 'dbx' and state like 'idle in transaction%'",
      );
      assert.equal(open?.n, 0, "no connection left inside a transaction");
    } finally {
      await cluster.exec("drop table facade_begin_t");
    }
  },
  { config: { pool: { max: 1 }, pipeline: false } },
);

dbTest(
  "after the application sends DEALLOCATE ALL, concurrent cached statements never fail with 42P05 or 26000",
  async (cluster) => {
    const run = () =>
      Promise.all(
        Array.from(
          { length: 30 },
          (_, i) => cluster.queryRow<{ n: number }>("select $1::int as n", [i]),
        ),
      );
    assert.deepEqual((await run()).map((r) => r.n), Array.from({ length: 30 }, (_, i) => i));
    for (const sql of ["deallocate all", "discard all"]) {
      await assert.rejects(cluster.exec(sql), /changes session state/);
      assert.deepEqual((await run()).map((r) => r.n), Array.from({ length: 30 }, (_, i) => i));
    }
    // Inside a transaction it runs, and the transaction's next cached statements prepare again.
    const n = await cluster.runTx(async (tx) => {
      await tx.queryRow("select $1::int as n", [1]);
      await tx.exec("deallocate all");
      return (await tx.queryRow<{ n: number }>("select $1::int as n", [2])).n;
    });
    assert.equal(n, 2);
    assert.deepEqual((await run()).map((r) => r.n), Array.from({ length: 30 }, (_, i) => i));
  },
  { config: { pool: { max: 1 } } },
);
