/**
 * Automatic pipelining and the statement cache, against a real server:
 * cancel safety, the retry contract when a pipe dies with statements in
 * flight, and re-preparing a statement whose plan went stale.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { DbxError, type Logger, mayHaveBeenApplied } from "../mod.ts";
import { testDatabase, testDatabaseUrls } from "../src/testing/db_test.ts";
import { dbTest } from "../src/testing/mod.ts";
import { until, within } from "./helpers.ts";

dbTest(
  "cancelling one caller's statement never cancels another's on the same node",
  async (cluster) => {
    const stop = new AbortController();
    const slow = cluster.query("select pg_sleep(30)", [], { signal: stop.signal })
      .then(() => "finished", (e: unknown) => e);
    await until("the slow statement runs on the server", async () => {
      const [row] = await cluster.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'",
      );
      return row!.n === 1;
    });
    // 50 fast statements on the same node, and the cancel in the middle of them.
    const fast = Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => cluster.query("select $1::int as i", [i])),
    );
    stop.abort();
    const settled = await fast;
    const ended = await slow;
    assert.ok(ended instanceof DbxError && ended.code === "57014", `the slow one: ${ended}`);
    assert.deepEqual(settled.filter((r) => r.status === "rejected"), [], "no other was cancelled");
    assert.deepEqual(
      settled.map((r) => (r as PromiseFulfilledResult<{ i: number }[]>).value[0]!.i),
      Array.from({ length: 50 }, (_, i) => i),
    );
  },
);

dbTest(
  "a pipe killed with statements in flight: reads are retried, writes are never run twice",
  async (cluster) => {
    await cluster.exec("drop sequence if exists pipe_writes");
    await cluster.exec("create sequence pipe_writes");
    try {
      // Fill the pipes with reads and writes, then kill every pipelined
      // backend of the primary from outside (a pooled connection).
      const reads = Array.from(
        { length: 20 },
        () => cluster.readQuery("select pg_sleep(0.2), 1 as one").then((r) => r, (e: unknown) => e),
      );
      const writes = Array.from(
        { length: 10 },
        () =>
          cluster.query<{ v: string }>("select nextval('pipe_writes')::text as v, pg_sleep(0.2)")
            .then((r) => r, (e: unknown) => e),
      );
      const killed = await cluster.query<{ n: number }>(
        `select count(pg_terminate_backend(pid))::int as n from pg_stat_activity
          where application_name = 'dbx' and pid <> pg_backend_pid() and query like '%pg_sleep(0.2)%'`,
        [],
        { timeoutMs: 10_000 },
      );
      assert.ok(killed[0]!.n >= 1, "a pipe was running the statements");
      const readResults = await Promise.all(reads);
      for (const r of readResults) {
        assert.ok(Array.isArray(r), `every read succeeded (retried elsewhere): ${r}`);
      }
      const writeResults = await Promise.all(writes);
      const acknowledged = writeResults.filter(Array.isArray).length;
      for (const w of writeResults.filter((r) => !Array.isArray(r))) {
        assert.ok(w instanceof DbxError, `${w}`);
        assert.match(w.message, /may have been applied/);
        assert.ok(mayHaveBeenApplied(w), `in doubt: ${w}`);
      }
      for (const r of readResults) assert.equal(mayHaveBeenApplied(r), false);
      // Each acknowledged write ran once; a failed one ran at most once.
      const { last_value } = await cluster.queryRow<{ last_value: string }>(
        "select last_value from pipe_writes",
      );
      assert.ok(Number(last_value) >= acknowledged && Number(last_value) <= writes.length);
      assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
    } finally {
      await cluster.exec("drop sequence pipe_writes");
    }
  },
  // No replica: reads and writes share the primary's pipes. The kill takes
  // the primary down until its next probe: the reads retry until then.
  { config: { replicas: [], retry: { maxAttempts: 30, baseDelayMs: 50, maxDelayMs: 500 } } },
);

dbTest(
  "a cached statement whose result type changed is prepared again and sent once more",
  async (cluster) => {
    await cluster.exec("drop table if exists stale_plan");
    await cluster.exec("create table stale_plan(id int primary key, v int)");
    try {
      await cluster.exec("insert into stale_plan values (1, 7)");
      const sql = "select v from stale_plan where id = $1";
      // Prepare it on every connection the cluster may use.
      for (let i = 0; i < 20; i++) assert.deepEqual(await cluster.query(sql, [1]), [{ v: 7 }]);
      await cluster.exec("alter table stale_plan alter column v type text");
      for (let i = 0; i < 20; i++) assert.deepEqual(await cluster.query(sql, [1]), [{ v: "7" }]);
    } finally {
      await cluster.exec("drop table stale_plan");
    }
  },
);

dbTest(
  "with pipeline: false and statementCache: false, statements run as before on pooled connections",
  async (cluster) => {
    const rows = await Promise.all(
      Array.from({ length: 10 }, (_, i) => cluster.query("select $1::int as i", [i])),
    );
    assert.deepEqual(rows.map((r) => r[0]!.i), Array.from({ length: 10 }, (_, i) => i));
    const { totalConns } = cluster.stats().nodes[0]!;
    assert.ok(totalConns >= 2, `pooled connections were used (${totalConns})`);
    const [named] = await cluster.query<{ n: number }>(
      "select count(*)::int as n from pg_prepared_statements",
    );
    assert.equal(named!.n, 0, "no named statement on this connection");
  },
  { config: { pipeline: false, statementCache: false } },
);

dbTest(
  "the statement cache keeps the most recently used statements per connection",
  async (cluster) => {
    const texts = ["select $1::int as v", "select $1::int + 1 as v", "select $1::int + 2 as v"];
    const prepared = async () =>
      (await cluster.query<{ statement: string }>(
        "select statement from pg_prepared_statements order by prepare_time",
      )).map((r) => r.statement);
    // One connection: every statement below runs on it.
    for (const [i, text] of texts.entries()) {
      assert.deepEqual(await cluster.query(text, [1]), [{ v: 1 + i }]);
    }
    assert.deepEqual(await prepared(), texts.slice(1), "the least recently used went");
    assert.deepEqual(await cluster.query(texts[1]!, [5]), [{ v: 6 }], "a hit");
    assert.deepEqual(await cluster.query(texts[0]!, [5]), [{ v: 5 }], "prepared again");
    assert.deepEqual(await prepared(), [texts[1], texts[0]], "the older of the two went");
  },
  { config: { pipeline: false, statementCache: 2, pool: { max: 1 }, replicas: [] } },
);

dbTest(
  "a statement stuck on a pipe is passed by fast callers, and its text leaves the pipes",
  async (cluster) => {
    const blocked = "select pg_advisory_xact_lock(4242) as locked";
    await using tx = await cluster.begin();
    await tx.exec("select pg_advisory_xact_lock(4242)");
    let released = false;
    const first = cluster.query(blocked).then(() => released);
    // Stuck for longer than the slowest a pipe tolerates (20 ms): stalled, by any measure.
    // Asked on a pooled connection (a timeout keeps a statement off the pipes): sent in
    // the same tick, it would share the blocked statement's pipe and wait behind it.
    await until("the first statement waited 100 ms for the lock", async () => {
      const [row] = await cluster.query<{ n: number }>(
        `select count(*)::int as n from pg_stat_activity
         where query = $1 and wait_event_type = 'Lock' and now() - query_start > interval '100 ms'`,
        [blocked],
        { timeoutMs: 30_000 },
      );
      return row!.n === 1;
    });
    const more = Array.from({ length: 4 }, () => cluster.query(blocked).then(() => released));
    const fast = await within(
      "50 fast statements are answered while five others wait on a lock",
      Promise.all(
        Array.from(
          { length: 50 },
          (_, i) => cluster.query<{ i: number }>("select $1::int as i", [i]),
        ),
      ),
    );
    assert.deepEqual(fast.map((rows) => rows[0]!.i), Array.from({ length: 50 }, (_, i) => i));
    let waiting = 0;
    await until(
      () => `all five blocked statements wait on the server, none behind another (${waiting} do)`,
      async () => {
        const [row] = await cluster.query<{ n: number }>(
          "select count(*)::int as n from pg_stat_activity where query = $1 and wait_event_type = 'Lock'",
          [blocked],
        );
        waiting = row!.n;
        return waiting === 5;
      },
    );
    released = true;
    await tx.rollback();
    assert.deepEqual(await Promise.all([first, ...more]), [true, true, true, true, true]);
  },
);

dbTest(
  "an answer left unread while this process is busy does not make its pipe stalled",
  async (cluster) => {
    const fast = "select $1::int as i";
    // Answered 20 ms after it is sent: it arrives while this process is busy. A text of
    // its own per attempt, so that no attempt finds it slow from the runs of earlier ones.
    const late = (attempt: number) => `select pg_sleep(0.02), $1::int as i -- attempt ${attempt}`;
    const total = () => cluster.stats().nodes[0]!.totalConns;
    // Both pipes open.
    await Promise.all([cluster.query(late(0), [0]), cluster.query(fast, [0])]);
    assert.equal(total(), 2, "two pipes, no pooled connection yet");
    // The scenario needs the late answer to be unread when the busy spell starts; a run
    // where this process was too slow to see the fast answer first proves nothing.
    let after: { sent: Promise<unknown> } | undefined;
    for (let attempt = 1; after === undefined; attempt++) {
      assert.ok(attempt <= 20, "the late answer was read before the fast one's 20 times");
      let lateRead = false;
      // On one pipe each (the first is full with one).
      const waiting = cluster.query(late(attempt), [1]).then(() => (lateRead = true));
      after = await cluster.query(fast, [1]).then(() => {
        if (lateRead) return undefined;
        // Busy for longer than any pipe waits before it counts as stalled (20 ms); the
        // late answer arrives meanwhile and waits in its socket, unread.
        const end = performance.now() + 60;
        while (performance.now() < end) { /* busy */ }
        // Its text, sent now: the pipe it waits on must not count as stalled.
        return { sent: cluster.query(late(attempt), [2]) };
      });
      await waiting;
    }
    await after.sent;
    assert.equal(total(), 2, "the statement after the busy spell took a pipe, not the pool");
  },
  // One statement per pipe, so that the second of two takes the other pipe.
  { config: { replicas: [], pipeline: { connections: 2, maxDepth: 1 } } },
);

dbTest(
  "pipes open as the load grows, 16 statements each, and close when it goes",
  async (cluster) => {
    const conns = () => cluster.stats().nodes[0]!.totalConns;
    const burst = (n: number) =>
      Promise.all(
        Array.from(
          { length: n },
          (_, i) => cluster.query<{ i: number }>("select $1::int as i", [i]),
        ),
      ).then((all) => all.map((rows) => rows[0]!.i));
    // Sent in one tick: 64 fit on no fewer than four pipes, and no more open.
    assert.deepEqual(await burst(64), Array.from({ length: 64 }, (_, i) => i));
    assert.equal(conns(), 4, "four pipes for 64 statements at once, no pooled connection");
    // Unused for the pool's idle timeout, every pipe but the first closes.
    const shrunk = () =>
      until(() => `the pipes closed down to one (${conns()} connections)`, async () => {
        await cluster.query("select 1");
        return conns() === 1;
      });
    await shrunk();
    // Ten at once fit on the one pipe left. A statement is not gathered behind a text
    // not yet seen fast, nor on a pipe silent for longer than the slow threshold, which a
    // loaded host can make of any run: so the claim is that some run of a few shows it.
    const seen: number[] = [];
    for (let attempt = 1; seen.at(-1) !== 1; attempt++) {
      assert.ok(attempt <= 10, `ten statements at once took ${seen.join(", ")} pipes`);
      if (attempt > 1) await shrunk();
      assert.deepEqual(await burst(10), Array.from({ length: 10 }, (_, i) => i));
      seen.push(conns());
    }
  },
  { config: { replicas: [], pool: { idleTimeoutMs: 200 } } },
);

dbTest(
  "a statement is not gathered behind one whose text was never seen fast on a pipe",
  async (cluster) => {
    await cluster.query("select $1::int as i", [0]); // Its text is seen fast.
    await using tx = await cluster.begin();
    await tx.exec("select pg_advisory_xact_lock(4244)");
    // Sent in one tick: the first has never run, and waits for the lock.
    const first = cluster.query("select pg_advisory_xact_lock(4244) as locked");
    const quick = cluster.query<{ i: number }>("select $1::int as i", [1]);
    assert.deepEqual(
      await within("the quick statement is answered while the first waits", quick),
      [{ i: 1 }],
    );
    await tx.rollback();
    assert.equal((await first).length, 1);
  },
  { config: { replicas: [] } },
);

dbTest(
  "a statement goes around a pipe that has answered nothing for a while, with nothing else read",
  async (cluster) => {
    const blocked = "select pg_advisory_xact_lock(4243) as locked";
    // Its text seen fast on a pipe: statements may be gathered behind it.
    for (let i = 0; i < 4; i++) await cluster.query(blocked);
    await using tx = await cluster.begin();
    await tx.exec("select pg_advisory_xact_lock(4243)");
    const first = cluster.query(blocked);
    // Watched by a client of the test's own: dbx reads nothing meanwhile, so nothing
    // shows whether the pipe is late or its answer only unread.
    const watcher = new pg.Client({ connectionString: testDatabaseUrls()!.master });
    await watcher.connect();
    try {
      await until("the blocked statement waited 100 ms for the lock", async () => {
        const { rows } = await watcher.query(
          `select count(*)::int as n from pg_stat_activity
           where query = $1 and wait_event_type = 'Lock' and now() - query_start > interval '100 ms'`,
          [blocked],
        );
        return rows[0].n === 1;
      });
    } finally {
      await watcher.end();
    }
    const before = cluster.stats().nodes[0]!.totalConns;
    const answer = await within(
      "a statement sent now is answered while the first still waits",
      cluster.query("select $1::int as i", [7]),
    );
    assert.deepEqual(answer, [{ i: 7 }]);
    assert.equal(cluster.stats().nodes[0]!.totalConns, before + 1, "on a pipe of its own");
    await tx.rollback();
    assert.equal((await first).length, 1);
  },
  // No health probe reads meanwhile either.
  { config: { replicas: [], healthCheck: { intervalMs: 600_000 } } },
);

dbTest(
  "with every pipe full and no pooled connection free, a statement joins a pipe instead of waiting",
  async (cluster) => {
    await cluster.query("select $1::int as i", [0]); // The pipe is open.
    await cluster.withConnection(async (held) => {
      // The pool's only connection is held; one pipe, one statement deep.
      assert.deepEqual(await held.query("select 1 as one"), [{ one: 1 }]);
      const answers = await within(
        "three statements answered while the pool's only connection is held",
        Promise.all([1, 2, 3].map((i) => cluster.query<{ i: number }>("select $1::int as i", [i]))),
      );
      assert.deepEqual(answers.map((rows) => rows[0]!.i), [1, 2, 3]);
    });
    // Not answered after waiting for the pool in vain (which gives up, and is retried).
    assert.equal(cluster.stats().totals.retries, 0);
  },
  { config: { replicas: [], pipeline: { connections: 1, maxDepth: 1 }, pool: { max: 1 } } },
);

/** A logger keeping its debug entries (message and fields). */
function debugLog(): { entries: string[]; logger: Logger } {
  const entries: string[] = [];
  const ignore = () => {};
  return {
    entries,
    logger: {
      debug: (msg, fields) => void entries.push(`${msg} ${JSON.stringify(fields ?? {})}`),
      info: ignore,
      warn: ignore,
      error: ignore,
    },
  };
}

const idleLog = debugLog();
dbTest(
  "a pipe that dies with nothing in flight has its node probed at once, as an idle pooled connection",
  async (cluster) => {
    // One statement: it opens the first pipe, which is idle once answered.
    const [row] = await cluster.query<{ pid: number }>("select pg_backend_pid() as pid");
    assert.equal(cluster.stats().nodes[0]!.totalConns, 1, "one pipe, no pooled connection");
    const { master } = await testDatabase();
    const outside = new pg.Client({ connectionString: master });
    outside.on("error", () => {});
    await outside.connect();
    try {
      await outside.query("select pg_terminate_backend($1)", [row!.pid]);
    } finally {
      await outside.end();
    }
    // No statement meets the dead pipe, and the next probe is 10 minutes away.
    await until(
      () => `the idle pipe's loss is reported: ${idleLog.entries.join("; ")}`,
      () => idleLog.entries.some((e) => e.startsWith("dbx: idle connection lost")),
    );
    assert.ok(cluster.stats().nodes[0]!.healthy);
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
  },
  { config: { replicas: [], healthCheck: { intervalMs: 600_000 }, logger: idleLog.logger } },
);
