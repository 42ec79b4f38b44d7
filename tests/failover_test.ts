/**
 * Fault-injection suite: real servers are killed, stopped, promoted and
 * paused under concurrent load, and a ledger of acknowledged writes checks
 * that nothing acknowledged is lost or written twice.
 */

import assert from "node:assert/strict";
import {
  type Cluster,
  connect,
  DbxError,
  type NodeEvent,
  NoHealthyNodeError,
  RetryExhaustedError,
  type RoleChangeEvent,
} from "../mod.ts";
import {
  faultProxy,
  type LocalCluster,
  startLocalCluster,
  testLogger,
} from "../src/testing/mod.ts";
import { named, noPostgres, readLoop, sleep, until } from "./helpers.ts";

/** Fast checks, as a latency-sensitive service would configure them. */
const FAST = { healthCheck: { intervalMs: 500, timeoutMs: 500 } } as const;

/**
 * Concurrent writers inserting unique ids into `ledger`, recording which
 * inserts were acknowledged and when. Failed inserts are counted, not thrown.
 */
class Ledger {
  readonly acknowledged: number[] = [];
  readonly ackTimes: number[] = [];
  failures = 0;
  #next = 1;
  #running = false;
  #writers: Promise<void>[] = [];

  constructor(readonly cluster: Cluster) {}

  static async create(cluster: Cluster): Promise<Ledger> {
    // No primary key: a doubled write must be visible as a duplicate row.
    await cluster.exec("drop table if exists ledger");
    await cluster.exec("create table ledger(id bigint not null)");
    return new Ledger(cluster);
  }

  start(writers: number): void {
    this.#running = true;
    for (let i = 0; i < writers; i++) this.#writers.push(this.#write());
  }

  async #write(): Promise<void> {
    while (this.#running) {
      const id = this.#next++;
      try {
        await this.cluster.exec("insert into ledger(id) values ($1)", [id]);
        this.acknowledged.push(id);
        this.ackTimes.push(performance.now());
      } catch {
        this.failures++;
        await sleep(10);
      }
    }
  }

  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#writers);
  }

  /** Every acknowledged id exactly once, and no id twice. */
  async verify(): Promise<{ acknowledged: number; present: number }> {
    const rows = await this.cluster.query<{ id: string; n: number }>(
      "select id::text, count(*)::int as n from ledger group by id",
    );
    const counts = new Map(rows.map((r) => [Number(r.id), r.n]));
    const missing = this.acknowledged.filter((id) => !counts.has(id));
    const doubled = rows.filter((r) => r.n > 1).map((r) => r.id);
    assert.deepEqual(missing, [], "no acknowledged write is missing");
    assert.deepEqual(doubled, [], "no write is present twice");
    return { acknowledged: this.acknowledged.length, present: rows.length };
  }
}

/** Readers looping on readQuery, counting failures. */
function readers(cluster: Cluster, n = 8) {
  return readLoop(() => cluster.readQuery("select 1"), n);
}

async function withCluster(
  local: LocalCluster,
  fn: (cluster: Cluster) => Promise<void>,
  config: Partial<Exclude<Parameters<typeof connect>[0], string>> = {},
): Promise<void> {
  await using cluster = await connect({
    master: local.masterUrl,
    replicas: local.replicaUrls,
    ...FAST,
    ...config,
  });
  await fn(cluster);
}

Deno.test({
  name: named("scenario 1: a replica killed under 8 concurrent readers fails no read"),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 2 });
    await withCluster(local, async (cluster) => {
      const ledger = await Ledger.create(cluster);
      ledger.start(2);
      const load = readers(cluster);
      await until("reads flow", () => load.reads > 300);
      await local.kill("replica2");
      const atKill = load.reads;
      await until("reads go on", () => load.reads > atKill + 1_000);
      // Marked down by a read that found it gone, or else by the next probe: a thousand
      // reads may all have gone to the other nodes before either.
      await until(
        "the killed replica is marked down",
        () => cluster.stats().nodes[2]!.healthy === false,
      );
      await load.stop();
      await ledger.stop();
      console.log(`scenario 1: ${load.reads} reads, ${load.failures.length} failed`);
      assert.deepEqual(load.failures, [], "zero failed reads");
      await ledger.verify();
    });
  },
});

Deno.test({
  name: named(
    "scenario 2: primary stopped and a replica promoted: writes resume there, nothing lost or doubled",
  ),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 2 });
    const roleChanges: RoleChangeEvent[] = [];
    await withCluster(local, async (cluster) => {
      const ledger = await Ledger.create(cluster);
      const load = readers(cluster, 4);
      ledger.start(4);
      await until("writes flow", () => ledger.acknowledged.length > 200);
      const stoppedAt = performance.now();
      await local.stop("primary");
      await local.promote("replica1");
      const promotedAt = performance.now();
      await until(
        "writes resume on the promoted replica",
        () => ledger.ackTimes.at(-1)! > promotedAt,
      );
      console.log(`scenario 2: stop + promote took ${Math.round(promotedAt - stoppedAt)} ms`);
      const ackedAfter = ledger.acknowledged.length;
      await until("writes keep flowing", () => ledger.acknowledged.length > ackedAfter + 100);
      await ledger.stop();
      await load.stop();
      // Writes were unavailable for the longest pause between two
      // acknowledgements around the failover (stop and promote included).
      const times = [...ledger.ackTimes].sort((a, b) => a - b);
      let gap = 0;
      for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i]! - times[i - 1]!);
      console.log(
        `scenario 2: writes unavailable for ${Math.round(gap)} ms (stop + promote included); ` +
          `${ledger.failures} failed writes; ${load.failures.length} failed reads`,
      );
      const row = await cluster.queryRow<{ p: number }>("select inet_server_port() as p");
      assert.equal(row.p, local.nodes[1]!.port, "writes now go to the promoted replica1");
      assert.equal(cluster.stats().nodes[1]!.role, "primary");
      assert.deepEqual(
        roleChanges.filter((e) => e.node === cluster.stats().nodes[1]!.name),
        [{ node: cluster.stats().nodes[1]!.name, from: "replica", to: "primary" }],
        "onRoleChange told about the promotion, once",
      );
      const { acknowledged, present } = await ledger.verify();
      console.log(`scenario 2: ledger ${acknowledged} acknowledged, ${present} present`);
    }, { metrics: { onRoleChange: (e) => void roleChanges.push(e) } });
  },
});

Deno.test({
  name: named(
    "scenario 3: a blackholed replica: reads move on within the deadline; it returns after heal()",
  ),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 2 });
    await using proxy = await faultProxy(local.replicaUrls[0]!);
    const ups: NodeEvent[] = [];
    await using cluster = await connect({
      master: local.masterUrl,
      replicas: [proxy.url(local.replicaUrls[0]!), local.replicaUrls[1]!],
      ...FAST,
      metrics: { onNodeUp: (e) => void ups.push(e) },
    });
    const ledger = await Ledger.create(cluster);
    ledger.start(2);
    let running = true;
    const failures: unknown[] = [];
    const durations: number[] = [];
    const loops = Array.from({ length: 8 }, async () => {
      while (running) {
        const start = performance.now();
        try {
          // Generous: on a loaded machine two unanswered probes (what cuts a
          // hung host) can take seconds; the slowest read is printed below.
          await cluster.readQuery("select 1", [], { timeoutMs: 20_000 });
          durations.push(performance.now() - start);
        } catch (err) {
          failures.push(err);
        }
      }
    });
    await until("reads flow", () => durations.length > 300);
    proxy.blackhole();
    const at = durations.length;
    await until("the hung replica is marked down", () => !cluster.stats().nodes[1]!.healthy);
    await until("reads go on elsewhere", () => durations.length > at + 500);
    const slowest = Math.max(...durations.slice(at));
    const upsBefore = ups.length;
    proxy.heal();
    await until("the replica comes back after heal()", () => cluster.stats().nodes[1]!.healthy);
    assert.deepEqual(
      ups.slice(upsBefore).map((e) => [e.node, e.role]),
      [[cluster.stats().nodes[1]!.name, "replica"]],
      "onNodeUp told about the healed replica",
    );
    running = false;
    await Promise.all(loops);
    await ledger.stop();
    console.log(
      `scenario 3: ${durations.length} reads, ${failures.length} failed, slowest read after the blackhole ${
        Math.round(slowest)
      } ms`,
    );
    assert.deepEqual(failures, [], "every read finished within its deadline");
    await ledger.verify();
  },
});

Deno.test({
  name: named(
    "scenario 4: replay paused on a replica: maxLagMs reads avoid it, consistentWith reads see the write",
  ),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 2 });
    await withCluster(local, async (cluster) => {
      const ledger = await Ledger.create(cluster);
      await cluster.exec("create table rw(id int primary key)");
      ledger.start(2);
      await local.pauseReplay("replica1");
      const pausedPort = local.nodes[1]!.port;
      // The paused replica falls behind as the writers go on.
      // Lag is unknown (and so too large) until the paused replica has replayed
      // a first transaction; either way it must be measurably behind.
      await until("replica1 lags by more than 300 ms", async () => {
        const node = (await cluster.health()).nodes[1]!;
        return (node.lagMs ?? Infinity) > 300 && (node.lagBytes ?? 0) > 0;
      });
      for (let i = 0; i < 40; i++) {
        const { p } = await cluster.readQueryRow<{ p: number }>(
          "select inet_server_port() as p",
          [],
          {
            maxLagMs: 300,
          },
        );
        assert.notEqual(p, pausedPort, "a lagging replica is skipped");
      }
      // Read-your-writes right after each write, with no waiting.
      for (let id = 1; id <= 30; id++) {
        await cluster.exec("insert into rw(id) values ($1)", [id]);
        const token = await cluster.writeToken();
        const rows = await cluster.readQuery("select id from rw where id = $1", [id], {
          consistentWith: token,
        });
        assert.deepEqual(rows, [{ id }], `write ${id} is visible to the read that follows it`);
      }
      // A cluster-wide default applies too.
      await using strict = await connect({
        master: local.masterUrl,
        replicas: local.replicaUrls,
        maxLagMs: 300,
        ...FAST,
      });
      for (let i = 0; i < 20; i++) {
        const { p } = await strict.readQueryRow<{ p: number }>("select inet_server_port() as p");
        assert.notEqual(p, pausedPort);
      }
      await local.resumeReplay("replica1");
      await until(
        "replica1 catches up",
        async () => (await cluster.health()).nodes[1]!.lagMs === 0,
      );
      const ports = new Set<number>();
      for (let i = 0; i < 10; i++) {
        ports.add(
          (await cluster.readQueryRow<{ p: number }>("select inet_server_port() as p", [], {
            maxLagMs: 300,
          })).p,
        );
      }
      assert.ok(
        ports.has(pausedPort),
        "once caught up, the replica serves bounded-lag reads again",
      );
      await ledger.stop();
      await ledger.verify();
    });
  },
});

Deno.test({
  name: named("scenario 5: connect() finds the real primary when the configured master is down"),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 1 });
    await local.stop("primary");
    await local.promote("replica1");
    await using cluster = await connect({
      master: local.masterUrl,
      replicas: local.replicaUrls,
      ...FAST,
    });
    const row = await cluster.queryRow<{ p: number; r: boolean }>(
      "select inet_server_port() as p, pg_is_in_recovery() as r",
    );
    assert.deepEqual(row, { p: local.nodes[1]!.port, r: false });
    const ledger = await Ledger.create(cluster);
    ledger.start(2);
    await until("writes flow", () => ledger.acknowledged.length > 50);
    await ledger.stop();
    assert.equal(ledger.failures, 0);
    await ledger.verify();
  },
});

Deno.test({
  name: named(
    "scenario 6: with every node down calls fail fast, and recover when the nodes return",
  ),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 1 });
    await withCluster(local, async (cluster) => {
      const ledger = await Ledger.create(cluster);
      await local.stop("replica1");
      await local.stop("primary");
      const started = performance.now();
      const results = await Promise.allSettled([
        cluster.exec("insert into ledger(id) values (-1)", [], { timeoutMs: 5_000 }),
        cluster.readQuery("select 1", [], { timeoutMs: 5_000 }),
        cluster.query("select 1", [], { timeoutMs: 5_000 }),
      ]);
      const elapsed = performance.now() - started;
      console.log(`scenario 6: all calls failed after ${Math.round(elapsed)} ms`);
      for (const r of results) {
        assert.equal(r.status, "rejected");
        const err = (r as PromiseRejectedResult).reason;
        assert.ok(
          err instanceof NoHealthyNodeError || err instanceof RetryExhaustedError ||
            (err instanceof DbxError && err.kind === "connection"),
          `expected an availability error, got ${err}`,
        );
        assert.notEqual((err as DbxError).kind, "timeout", "failed fast, before the 5 s deadline");
      }
      // Further calls are refused without touching the dead servers.
      await until(
        "both nodes are marked down",
        () => cluster.stats().nodes.every((n) => !n.healthy),
      );
      await assert.rejects(cluster.exec("select 1"), NoHealthyNodeError);

      await local.start("primary");
      await local.start("replica1");
      await until("the nodes are back", () => cluster.stats().nodes.every((n) => n.healthy));
      ledger.start(2);
      await until("writes flow again", () => ledger.acknowledged.length > 50);
      await ledger.stop();
      assert.deepEqual(await cluster.readQuery("select 1 as one"), [{ one: 1 }]);
      await ledger.verify();
    }, { retry: { waitForPrimaryMs: 0 } });
  },
});

Deno.test({
  name: named(
    "scenario 7: a write sent while no primary is known waits for the promoted replica and lands once",
  ),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 1 });
    const log = testLogger();
    await withCluster(local, async (cluster) => {
      await cluster.exec("create table waited(id int primary key)");
      await local.stop("primary");
      await until("the primary is marked down", async () => {
        await cluster.health();
        return !cluster.stats().nodes[0]!.healthy;
      });
      // Sent with no primary known: it must wait, not fail.
      let settled = false;
      const write = cluster.exec("insert into waited values (1)").finally(() => (settled = true));
      await until(
        "the write is waiting for a primary",
        () => log.entries.some((e) => e.msg === "dbx: waiting for a primary"),
      );
      assert.equal(settled, false);
      await local.promote("replica1");
      assert.deepEqual(await write, { command: "INSERT", rowCount: 1 });
      const row = await cluster.queryRow<{ p: number; n: number }>(
        "select inet_server_port() as p, (select count(*)::int from waited) as n",
      );
      assert.deepEqual(row, { p: local.nodes[1]!.port, n: 1 }, "on the promoted replica, once");
    }, { logger: log, retry: { waitForPrimaryMs: 60_000 } });
  },
});

Deno.test({
  name: named(
    "connect({ requirePrimary: false }) starts on replicas alone: reads work, writes wait",
  ),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 1 });
    await local.stop("primary");
    await assert.rejects(
      connect({ master: local.masterUrl, replicas: local.replicaUrls, ...FAST }),
      NoHealthyNodeError,
      "by default a primary is required",
    );
    await using cluster = await connect({
      master: local.masterUrl,
      replicas: local.replicaUrls,
      requirePrimary: false,
      retry: { waitForPrimaryMs: 0 },
      ...FAST,
    });
    assert.deepEqual(await cluster.readQuery("select 1 as one"), [{ one: 1 }]);
    await assert.rejects(cluster.exec("select 1"), NoHealthyNodeError);
  },
});

Deno.test({
  name: named("a write waiting for a primary gives up at its own deadline, as a timeout"),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 1 });
    await withCluster(local, async (cluster) => {
      await local.stop("primary");
      await until("the primary is marked down", async () => {
        await cluster.health();
        return !cluster.stats().nodes[0]!.healthy;
      });
      const err = await cluster.exec("select 1", [], { timeoutMs: 300 }).catch((e: unknown) => e);
      assert.ok(err instanceof DbxError && err.kind === "timeout", `got ${err}`);
      // Reads still go to the replica meanwhile.
      assert.deepEqual(await cluster.readQuery("select 1 as one"), [{ one: 1 }]);
    }, { retry: { waitForPrimaryMs: 60_000 } });
  },
});
