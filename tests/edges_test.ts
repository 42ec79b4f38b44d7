import assert from "node:assert/strict";
import { connect, DbxError, type Executor } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { faultProxy } from "../src/testing/fault_proxy.ts";
import { until } from "./helpers.ts";

const urls = testDatabaseUrls();
/** Appended to the names of tests that need the database, when it is not configured. */
const why = urls === undefined ? " (ignored: DBX_TEST_MASTER_URL is not set)" : "";

/** Asserts that `promise` rejects with a DbxError of `kind`. */
async function rejectsWithKind(promise: Promise<unknown>, kind: string, what: string) {
  await assert.rejects(promise, (err) => {
    assert.ok(err instanceof DbxError, `${what} rejected with ${err} instead of a DbxError`);
    assert.equal(err.kind, kind, `${what}: ${err.message}`);
    return true;
  });
}

dbTest("ping() and health() with an aborted signal reject with DbxError kind canceled", async (
  cluster,
) => {
  const aborted = AbortSignal.abort();
  await rejectsWithKind(cluster.ping({ signal: aborted }), "canceled", "ping (aborted)");
  await rejectsWithKind(cluster.health({ signal: aborted }), "canceled", "health (aborted)");
  const pinging = new AbortController();
  const ping = cluster.ping({ signal: pinging.signal });
  pinging.abort();
  await rejectsWithKind(ping, "canceled", "ping (aborting)");
  const checking = new AbortController();
  const health = cluster.health({ signal: checking.signal });
  checking.abort();
  await rejectsWithKind(health, "canceled", "health (aborting)");
  await cluster.ping();
  assert.equal((await cluster.health()).writable, true);
});

Deno.test({
  name: "ping() and health() past their timeoutMs reject with DbxError kind timeout" + why,
  ignore: urls === undefined,
  async fn() {
    await using proxy = await faultProxy(urls!.master);
    await using cluster = await connect({ master: proxy.url(urls!.master) });
    proxy.delay(300);
    await rejectsWithKind(cluster.ping({ timeoutMs: 100 }), "timeout", "ping");
    await rejectsWithKind(cluster.health({ timeoutMs: 100 }), "timeout", "health");
    proxy.heal();
  },
});

dbTest(
  "callers that gave up waiting for a pooled connection no longer count as waiting",
  async (cluster) => {
    const waiting = () => cluster.stats().totals.waitingClients;
    const tx = await cluster.begin(); // the primary's only connection
    try {
      const canceller = new AbortController();
      const calls = Array.from({ length: 40 }, (_, i) =>
        cluster.query(
          "select $1::int as n",
          [i],
          i % 2 === 0 ? { timeoutMs: 50 } : { signal: canceller.signal },
        ).then(() => undefined, (err: unknown) => err));
      // The deadlines pass on their own; the others give up when aborted.
      let timedOut = false;
      calls[0]!.then(() => (timedOut = true));
      await until("the callers with a deadline gave up", () => timedOut);
      canceller.abort();
      const errors = await Promise.all(calls);
      assert.deepEqual(
        errors.map((err) => err instanceof DbxError ? err.kind : String(err)),
        errors.map((_, i) => i % 2 === 0 ? "timeout" : "canceled"),
      );
      assert.equal(waiting(), 0, "no caller that gave up is still waiting");
    } finally {
      await tx.rollback();
    }
    assert.deepEqual(await cluster.query("select $1::int as n", [7]), [{ n: 7 }]);
    assert.equal(waiting(), 0);
  },
  { config: { pool: { max: 1 }, pipeline: false } },
);

dbTest(
  "a statement with a value pg cannot serialise fails alone; pipelined neighbours get their own answers",
  async (cluster) => {
    const good = (from: number) =>
      Array.from(
        { length: 100 },
        (_, i) => cluster.queryRow<{ n: number }>("select $1::int as n", [from + i]),
      );
    const before = good(0);
    const bad = cluster.query("select $1::jsonb as j", [{ n: 1n }]);
    const after = good(100);
    await assert.rejects(bad, (err) => {
      assert.ok(err instanceof TypeError, `rejected with ${err}`);
      assert.match(err.message, /BigInt/);
      return true;
    });
    const answers = await Promise.all([...before, ...after]);
    assert.deepEqual(answers.map((r) => r.n), Array.from({ length: 200 }, (_, i) => i));

    // The failed statement is forgotten once: the pipe a blocked statement
    // then waits on does not look idle, so a quick one goes elsewhere, not
    // behind it. The blocked statement waits on an advisory lock held until
    // the quick one is answered (or a generous bound passes).
    const key = 191919;
    let release!: () => void;
    const hold = new Promise<void>((resolve) => (release = resolve));
    let locked!: () => void;
    const isLocked = new Promise<void>((resolve) => (locked = resolve));
    let own!: Executor;
    const holder = cluster.withConnection(async (conn) => {
      own = conn;
      await conn.queryRow("select pg_advisory_lock($1)", [key]);
      locked();
      await hold;
    });
    await isLocked;
    const failing = cluster.query("select $1::json as doc", [{ n: 2n }]);
    const blocked = cluster.query("select pg_advisory_xact_lock($1)", [key]);
    await assert.rejects(failing, /BigInt/);
    // Once the server waits on the lock, it has answered everything sent before.
    await until("the blocked statement waits for the lock", async () => {
      const { n } = await own.queryRow<{ n: number }>(
        "select count(*)::int as n from pg_locks where locktype = 'advisory' and not granted",
      );
      return n === 1;
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const outcome = await Promise.race([
      cluster.query("select 2 as two").then((rows) => JSON.stringify(rows)),
      new Promise<string>((resolve) => (timer = setTimeout(resolve, 30_000, "stuck"))),
    ]);
    clearTimeout(timer);
    release();
    await holder;
    await blocked;
    assert.equal(outcome, '[{"two":2}]', "a quick statement queued behind one waiting on a lock");

    assert.deepEqual(await cluster.query("select $1::jsonb as j", [{ n: 1 }]), [{ j: { n: 1 } }]);
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
  },
);

dbTest(
  "a statement with a value pg cannot serialise fails alone on a pooled connection too",
  async (cluster) => {
    const good = Array.from(
      { length: 20 },
      (_, i) => cluster.queryRow<{ n: number }>("select $1::int as n", [i]),
    );
    await assert.rejects(cluster.query("select $1::jsonb as j", [{ n: 1n }]), /BigInt/);
    assert.deepEqual(
      (await Promise.all(good)).map((r) => r.n),
      Array.from({ length: 20 }, (_, i) => i),
    );
    assert.deepEqual(await cluster.query("select $1::jsonb as j", [{ n: 1 }]), [{ j: { n: 1 } }]);
    assert.equal(cluster.stats().totals.waitingClients, 0);
  },
  { config: { pool: { max: 2 }, pipeline: false } },
);
