import assert from "node:assert/strict";
import { connect, pgErrorCode, type QueryEndEvent, roundRobin } from "../mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { faultProxy } from "../src/testing/fault_proxy.ts";
import { until } from "./helpers.ts";

const urls = testDatabaseUrls();
const twoReplicas = urls !== undefined && urls.replicas.length >= 2;
/** Appended to the names of tests that need the database, when it is not configured. */
const why = twoReplicas ? "" : " (ignored: needs DBX_TEST_MASTER_URL and two replicas)";
const port = (url: string) => Number(new URL(url).port || 5432);

/** A read that sleeps `seconds` on the server listening on `$1`, and returns the port that answered. */
const SLEEPY = "select inet_server_port() as port /* dbx-hedge-test */ " +
  "from pg_sleep(case when inet_server_port() = $1::int then $2::float8 else 0 end)";

/** Statements of the hedge test still running on a node (the query asking excepted). */
const RUNNING = "select count(*)::int as n from pg_stat_activity " +
  "where state = 'active' and query like '%dbx-hedge-test%' and pid <> pg_backend_pid()";

Deno.test({
  name:
    "a hedged read is answered by the other replica and the slow one is cancelled on its server" +
    why,
  ignore: !twoReplicas,
  async fn() {
    const [r1, r2] = urls!.replicas as [string, string];
    const ended: QueryEndEvent[] = [];
    await using cluster = await connect({
      master: urls!.master,
      replicas: [{ name: "r1", url: r1 }, { name: "r2", url: r2 }],
      // Turns, so one of two reads starts on r1 whatever the latencies.
      balancer: roundRobin(),
      hedge: { afterMs: 200, maxExtraLoad: 1 },
      metrics: { onQueryEnd: (e) => void ended.push(e) },
      // A statement never seen before may be pipelined, and a pipelined loser can only be
      // dropped (a cancel would hit its neighbours): here every read has a connection of its own.
      pipeline: false,
    });
    const started = performance.now();
    for (let i = 0; i < 2; i++) {
      const row = await cluster.readQueryRow<{ port: number }>(SLEEPY, [port(r1), 60]);
      assert.equal(row.port, port(r2), "r2 answered, also for the read that started on r1");
    }
    assert.ok(performance.now() - started < 30_000, "no read waited for r1's 60 s sleep");
    // One read started on r1; the other, on r2, is hedged too only if r2 took over 200 ms.
    assert.equal(cluster.stats().hedges.won, 1, JSON.stringify(cluster.stats().hedges));
    // The loser's statement is cancelled on r1's server, not left running for a minute.
    await until("r1 no longer runs the slow statement", async () => {
      return (await cluster.node("r1").queryRow<{ n: number }>(RUNNING)).n === 0;
    });
    await until("r1's attempt ended", () => ended.some((e) => e.node === "r1" && e.sql === SLEEPY));
    const lost = ended.filter((e) => e.node === "r1" && e.sql === SLEEPY);
    assert.deepEqual(
      lost.map((e) => pgErrorCode(e.error)),
      lost.map(() => "57014"),
      "cancelled by a CancelRequest",
    );
    const r1Stats = cluster.stats().nodes.find((n) => n.name === "r1")!;
    assert.equal(r1Stats.errors, 0, "losing a hedge race is no error of r1");
  },
});

Deno.test({
  name: "a hedged read goes to the fast replica when the one it started on is slowed down" + why,
  ignore: !twoReplicas,
  async fn() {
    const [r1, r2] = urls!.replicas as [string, string];
    await using proxy = await faultProxy(r1);
    await using cluster = await connect({
      master: urls!.master,
      replicas: [{ name: "r1", url: proxy.url(r1) }, { name: "r2", url: r2 }],
      balancer: roundRobin(),
      hedge: { afterMs: 200, maxExtraLoad: 1 },
      // Slow, not down: a probe through the delay still counts as answered.
      healthCheck: { timeoutMs: 10_000 },
    });
    proxy.delay(1_000);
    const ports: number[] = [];
    for (let i = 0; i < 4; i++) {
      ports.push(
        (await cluster.readQueryRow<{ port: number }>("select inet_server_port() as port"))
          .port,
      );
    }
    assert.deepEqual(ports, ports.map(() => port(r2)), "every read answered by r2");
    const { hedges } = cluster.stats();
    assert.ok(hedges.won >= 1, `reads that started on r1 were hedged: ${JSON.stringify(hedges)}`);
  },
});

Deno.test({
  name: "hedge never applies to writes, transactions, sessions or dedicated connections" + why,
  ignore: !twoReplicas,
  async fn() {
    await using cluster = await connect({
      master: urls!.master,
      replicas: urls!.replicas,
      balancer: roundRobin(),
      hedge: { afterMs: 0, maxExtraLoad: 1 },
    });
    const slow = "select pg_sleep(0.05)";
    await cluster.query(slow);
    await cluster.exec(slow);
    await cluster.runTx((tx) => tx.query(slow));
    await cluster.runTx(() => cluster.readQuery(slow)); // in the ambient transaction
    await cluster.session(() => cluster.readQuery(slow));
    await cluster.withConnection((c) => c.query(slow), { route: "replica" });
    for await (const _ of cluster.readStream(slow)) { /* one row */ }
    assert.deepEqual(cluster.stats().hedges, { sent: 0, won: 0 });
    await cluster.readQuery(slow);
    assert.equal(cluster.stats().hedges.sent, 1, "a plain read is hedged");
  },
});

Deno.test({
  name: "a pipelined hedge loser is dropped: no error, nothing left in flight" +
    why,
  ignore: !twoReplicas,
  async fn() {
    const [r1, r2] = urls!.replicas as [string, string];
    await using proxy = await faultProxy(r1);
    await using cluster = await connect({
      master: urls!.master,
      replicas: [{ name: "r1", url: proxy.url(r1) }, { name: "r2", url: r2 }],
      balancer: roundRobin(),
      hedge: { afterMs: 100, maxExtraLoad: 1 },
      healthCheck: { timeoutMs: 10_000 },
    });
    proxy.delay(300);
    // Concurrent reads share r1's pipes; those that lose are left to finish there.
    const rows = await Promise.all(
      Array.from(
        { length: 8 },
        (_, i) => cluster.readQueryRow<{ n: number }>("select $1::int as n", [i]),
      ),
    );
    assert.deepEqual(rows.map((r) => r.n), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.ok(cluster.stats().hedges.won >= 1, JSON.stringify(cluster.stats().hedges));
    // The dropped statements still end on r1 (their answers arrive and are ignored).
    await until(
      "r1 has nothing in flight",
      () => cluster.stats().nodes.find((n) => n.name === "r1")!.inFlight === 0,
    );
    const r1Stats = cluster.stats().nodes.find((n) => n.name === "r1")!;
    assert.equal(r1Stats.errors, 0);
  },
});
