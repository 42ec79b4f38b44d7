/**
 * Read-your-writes sessions against the shared test cluster, with replay
 * paused on replicas so that a stale read would show.
 */

import assert from "node:assert/strict";
import { type Cluster, roundRobin } from "../mod.ts";
import { SessionState } from "../src/call/session.ts";
import { dbTest } from "../src/testing/mod.ts";
import { replicaNames, sleep, until, withPausedReplay } from "./helpers.ts";

/**
 * Probes often, so that tests see replicas catch up soon; turns over the
 * replicas, so that reads reach a paused one whatever the latencies.
 */
const FAST = {
  config: { healthCheck: { intervalMs: 50, timeoutMs: 5_000 }, balancer: roundRobin() },
} as const;

interface Ports {
  primary: number;
  replicas: number[];
}

async function portsOf(cluster: Cluster): Promise<Ports> {
  const ports: Ports = { primary: 0, replicas: [] };
  for (const n of cluster.stats().nodes) {
    const { p, r } = await cluster.node(n.name).queryRow<{ p: number; r: boolean }>(
      "select inet_server_port() as p, pg_is_in_recovery() as r",
    );
    if (r) ports.replicas.push(p);
    else ports.primary = p;
  }
  assert.ok(ports.replicas.length >= 2, `two replicas are needed, got ${ports.replicas.length}`);
  return ports;
}

/** A fresh table with one row per id, replayed on every replica before the test goes on. */
async function freshTable(cluster: Cluster, table: string, ids: number): Promise<void> {
  await cluster.exec(`drop table if exists ${table}`);
  await cluster.exec(`create table ${table}(id int primary key, v int not null)`);
  await cluster.exec(`insert into ${table} select g, 0 from generate_series(1, $1::int) g`, [ids]);
  for (const name of replicaNames(cluster)) {
    await until(`${name} has replayed ${table}`, async () => {
      const [row] = await cluster.node(name).query<{ n: number }>(
        `select count(*)::int as n from pg_class where relname = $1`,
        [table],
      );
      if (row!.n === 0) return false;
      const { n } = await cluster.node(name).queryRow<{ n: number }>(
        `select count(*)::int as n from ${table}`,
      );
      return n === ids;
    });
  }
}

dbTest(
  "a session that wrote reads its write; a session that did not keeps reading replicas",
  async (cluster) => {
    const ports = await portsOf(cluster);
    await freshTable(cluster, "session_a", 1);
    const [paused] = replicaNames(cluster);
    const pausedPort = ports.replicas[0]!;
    await withPausedReplay(cluster, [paused!], async () => {
      const writer = cluster.session(async () => {
        const seen: number[] = [];
        for (let i = 1; i <= 60; i++) {
          await cluster.exec("update session_a set v = $1 where id = 1", [i]);
          const row = await cluster.readQueryRow<{ v: number; p: number }>(
            "select v, inet_server_port() as p from session_a where id = 1",
          );
          assert.equal(row.v, i, `read ${i} of the writing session sees its write`);
          seen.push(row.p);
        }
        return seen;
      });
      const reader = cluster.session(async () => {
        const seen: number[] = [];
        for (let i = 1; i <= 60; i++) {
          const row = await cluster.readQueryRow<{ p: number }>("select inet_server_port() as p");
          seen.push(row.p);
          await sleep(1);
        }
        return seen;
      });
      const [w, r] = await Promise.all([writer, reader]);
      assert.ok(!w.includes(pausedPort), `the paused replica never served the writer: ${w}`);
      assert.ok(
        w.every((p) => p === ports.primary || ports.replicas.includes(p)),
        `served by the primary or a caught-up replica: ${w}`,
      );
      assert.ok(
        r.every((p) => ports.replicas.includes(p)),
        `the session that did not write read replicas only: ${r}`,
      );
      assert.ok(r.includes(pausedPort), `including the paused one: ${r}`);
    });
  },
  FAST,
);

dbTest(
  "with every replica paused a writing session reads the primary, and replicas again once they replay",
  async (cluster) => {
    const ports = await portsOf(cluster);
    await freshTable(cluster, "session_b", 1);
    const names = replicaNames(cluster);
    const before = cluster.stats().totals.sessionReadsOnPrimary;
    await cluster.session(async () => {
      await withPausedReplay(cluster, names, async () => {
        await cluster.runTx((tx) => tx.exec("update session_b set v = 1 where id = 1"));
        for (let i = 0; i < 20; i++) {
          const row = await cluster.readQueryRow<{ v: number; p: number }>(
            "select v, inet_server_port() as p from session_b where id = 1",
          );
          assert.deepEqual(row, { v: 1, p: ports.primary }, `read ${i} after a committed runTx`);
        }
      });
      assert.ok(
        cluster.stats().totals.sessionReadsOnPrimary - before >= 20,
        `counted: ${cluster.stats().totals.sessionReadsOnPrimary - before}`,
      );
      // Replay resumed: the next probes see the replicas caught up.
      const resumed = performance.now();
      const served: number[] = [];
      await until("a session read is served by a replica again", async () => {
        const row = await cluster.readQueryRow<{ v: number; p: number }>(
          "select v, inet_server_port() as p from session_b where id = 1",
        );
        assert.equal(row.v, 1, "never stale");
        served.push(row.p);
        return ports.replicas.includes(row.p);
      }, 30_000);
      const ms = performance.now() - resumed;
      console.log(
        `session reads back on a replica ${Math.round(ms)} ms after replay resumed ` +
          `(${(ms / FAST.config.healthCheck.intervalMs).toFixed(1)} probe intervals)`,
      );
    });
  },
  FAST,
);

dbTest(
  "no stale read in 2 000 write-then-read pairs of sessions while a replica's replay is paused",
  async (cluster) => {
    const ports = await portsOf(cluster);
    const sessions = 8;
    const pairs = 250;
    await freshTable(cluster, "session_c", sessions);
    const [paused] = replicaNames(cluster);
    const pausedPort = ports.replicas[0]!;
    const served = new Map<number, number>();
    let stale = 0;
    await withPausedReplay(cluster, [paused!], async () => {
      // Without a session the same reads are stale: the check below can fail.
      await cluster.exec("update session_c set v = -1 where id = 1");
      let staleWithout = 0;
      for (let i = 0; i < 20; i++) {
        const { v } = await cluster.readQueryRow<{ v: number }>(
          "select v from session_c where id = 1",
        );
        if (v !== -1) staleWithout++;
      }
      assert.ok(staleWithout > 0, "reads outside a session do reach the paused replica");
      await Promise.all(Array.from({ length: sessions }, (_, s) =>
        cluster.session(async () => {
          const id = s + 1;
          for (let i = 1; i <= pairs; i++) {
            await cluster.exec("update session_c set v = $2 where id = $1", [id, i]);
            // Sometimes give the probes time to see a replica catch up.
            if (i % 3 === 0) await sleep(Math.random() * 120);
            const row = await cluster.readQueryRow<{ v: number; p: number }>(
              "select v, inet_server_port() as p from session_c where id = $1",
              [id],
            );
            if (row.v !== i) stale++;
            served.set(row.p, (served.get(row.p) ?? 0) + 1);
          }
        })));
    });
    const report = JSON.stringify(Object.fromEntries(served));
    assert.equal(stale, 0, `stale reads (served by port: ${report})`);
    assert.equal(served.get(pausedPort) ?? 0, 0, `the paused replica served none: ${report}`);
    const onReplica = ports.replicas.reduce((n, p) => n + (served.get(p) ?? 0), 0);
    assert.ok(onReplica > 0, `some reads were served by the caught-up replica: ${report}`);
    console.log(`session pairs: ${sessions * pairs}, served by port ${report}`);
  },
  FAST,
);

dbTest("the pgPool facade's writes and replica reads follow the session", async (cluster) => {
  const ports = await portsOf(cluster);
  await freshTable(cluster, "session_f", 1);
  const names = replicaNames(cluster);
  const primary = cluster.pgPool();
  const reads = cluster.pgPool({ route: "replica" });
  await withPausedReplay(cluster, names, async () => {
    await cluster.session(async () => {
      await primary.query("update session_f set v = 3 where id = 1");
      const { rows } = await reads.query(
        "select v, inet_server_port() as p from session_f where id = 1",
      );
      assert.deepEqual(rows, [{ v: 3, p: ports.primary }], "the facade's read saw the write");
      // A transaction on a connection of the facade, as Drizzle and Prisma run them.
      const client = await primary.connect();
      try {
        await client.query("begin");
        await client.query("update session_f set v = 4 where id = 1");
        await client.query("commit");
      } finally {
        client.release();
      }
      const again = await cluster.readQueryRow<{ v: number }>(
        "select v from session_f where id = 1",
      );
      assert.equal(again.v, 4, "the transaction on a pinned connection counts as a write");
    });
    // Outside the session the same read goes to a (paused) replica.
    const { rows } = await reads.query("select inet_server_port() as p");
    assert.ok(ports.replicas.includes(rows[0]!.p), `outside: ${rows[0]!.p}`);
  });
  await primary.end();
  await reads.end();
}, FAST);

dbTest("a session inside runTx changes nothing about the transaction", async (cluster) => {
  await cluster.exec("create table if not exists session_d(id int)");
  await cluster.exec("truncate session_d");
  await cluster.runTx(async (tx) => {
    const { pid } = await tx.queryRow<{ pid: number }>("select pg_backend_pid() as pid");
    await tx.exec("insert into session_d values (1)");
    const inner = await cluster.session(() =>
      cluster.readQueryRow<{ n: number; pid: number }>(
        "select count(*)::int as n, pg_backend_pid() as pid from session_d",
      )
    );
    assert.deepEqual(inner, { n: 1, pid }, "the session's read ran in the transaction");
  });
});

dbTest(
  "session.token() carries the guarantee; sessions nest; bad tokens are refused",
  async (cluster) => {
    await freshTable(cluster, "session_e", 1);
    const [paused] = replicaNames(cluster);
    await withPausedReplay(cluster, [paused!], async () => {
      const token = await cluster.session(async (session) => {
        assert.equal(await session.token(), "0/0", "no write yet");
        assert.equal(session.wrote, false);
        await cluster.exec("update session_e set v = 7 where id = 1");
        // A nested session is the same session: it sees the outer write.
        const inner = await cluster.session((s) => s);
        assert.equal(inner, session);
        assert.equal(inner.wrote, true);
        return await session.token();
      });
      // Another "process": only the token is carried.
      for (let i = 0; i < 10; i++) {
        const { v } = await cluster.readQueryRow<{ v: number }>(
          "select v from session_e where id = 1",
          [],
          { consistentWith: token },
        );
        assert.equal(v, 7, `read ${i} with the session's token`);
        const again = await cluster.session(
          () => cluster.readQueryRow<{ v: number }>("select v from session_e where id = 1"),
          { consistentWith: token },
        );
        assert.equal(again.v, 7, `read ${i} in a session started from the token`);
      }
    });
    assert.throws(
      () => cluster.session(() => 1, { consistentWith: "later" }),
      (err) => err instanceof RangeError && /'options.consistentWith'.*"later"/.test(err.message),
    );
  },
);

Deno.test("a session's write is covered only by a primary probe that started after it", () => {
  let seq = 10;
  const host = {
    get probeSeq() {
      return seq;
    },
    primaryLsn: () => Promise.resolve("0/100"),
  };
  const session = new SessionState(host, undefined, undefined);
  const primary = (probeSeq: number, lsn: bigint) => ({ state: { probe: { seq: probeSeq, lsn } } });
  assert.equal(session.demand(primary(10, 50n)), undefined, "no write: no demand");
  session.noteWrite();
  assert.equal(session.demand(primary(10, 50n)), "primary", "the probe started before the write");
  assert.equal(session.demand(undefined), "primary", "no primary known");
  seq = 12;
  assert.equal(session.demand(primary(11, 80n)), 80n, "a probe started after the write");
  assert.equal(session.demand(primary(9, 10n)), 80n, "the position is kept");
  session.noteWrite();
  assert.equal(session.demand(primary(12, 90n)), "primary");
  assert.equal(session.demand(primary(13, 95n)), 95n);
});
