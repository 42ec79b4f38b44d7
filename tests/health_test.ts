import assert from "node:assert/strict";
import { connect, DbxError, isRetryable, NoHealthyNodeError, RetryExhaustedError } from "../mod.ts";
import { parseLsn } from "../src/call/route.ts";
import { startLocalCluster, testLogger } from "../src/testing/mod.ts";
import { named, noPostgres, sleep, until } from "./helpers.ts";

Deno.test("parseLsn() orders WAL positions numerically", () => {
  assert.equal(parseLsn("0/0"), 0n);
  assert.equal(parseLsn("16/B374D848"), (0x16n << 32n) | 0xB374D848n);
  assert.ok(parseLsn("1/0")! > parseLsn("0/FFFFFFFF")!);
  assert.equal(parseLsn("nonsense"), undefined);
  assert.equal(parseLsn("x/y"), undefined);
  assert.equal(parseLsn(null), undefined);
});

Deno.test({
  name: named("health checking on a real primary and two streaming replicas"),
  ignore: noPostgres,
  async fn(t) {
    await using local = await startLocalCluster({ replicas: 2 });
    const replicaPort = (i: number) => local.nodes[i + 1]!.port;

    await t.step(
      "roles come from the servers: the checker finds which node is primary",
      async () => {
        // The config names a replica as master; the probe knows better.
        await using cluster = await connect({
          master: local.replicaUrls[0]!,
          replicas: [local.masterUrl, local.replicaUrls[1]!],
          healthCheck: { intervalMs: 200, timeoutMs: 1_000 },
        });
        assert.deepEqual(cluster.stats().nodes.map((n) => n.role), [
          "replica",
          "primary",
          "replica",
        ]);
        const row = await cluster.queryRow<{ p: number }>("select inet_server_port() as p");
        assert.equal(row.p, local.nodes[0]!.port);
        const report = await cluster.health();
        assert.equal(report.writable, true);
        assert.ok(report.nodes.every((n) => n.healthy && typeof n.latencyMs === "number"));
      },
    );

    await t.step("a replica stopped mid-run fails no read", async () => {
      await using cluster = await connect({
        master: local.masterUrl,
        replicas: local.replicaUrls,
        healthCheck: { intervalMs: 200, timeoutMs: 1_000 },
      });
      let reads = 0;
      const failures: unknown[] = [];
      const servedBy = new Map<number, number>();
      let running = true;
      const reader = async () => {
        while (running) {
          try {
            const row = await cluster.readQueryRow<{ p: number }>("select inet_server_port() as p");
            servedBy.set(row.p, (servedBy.get(row.p) ?? 0) + 1);
            reads++;
          } catch (err) {
            failures.push(err);
          }
        }
      };
      const readers = Array.from({ length: 8 }, reader);
      await until("reads flow", () => reads > 200);
      await local.stop("replica1");
      const readsAtStop = reads;
      await until("reads continue after the stop", () => reads > readsAtStop + 500);
      running = false;
      await Promise.all(readers);
      assert.deepEqual(failures, [], "no read failed");
      const stats = cluster.stats();
      assert.equal(stats.nodes[1]!.healthy, false, "the stopped replica is marked down");
      assert.ok((servedBy.get(replicaPort(1)) ?? 0) > 0, "the other replica kept serving");

      await local.start("replica1");
      await until(
        "the restarted replica is back after a probe",
        () => cluster.stats().nodes[1]!.healthy,
      );
      const before = cluster.stats().nodes[1]!.queries;
      // The default balancer tries it again at the latest once it is stale (500 ms without a read).
      await until("reads go to it again", async () => {
        await cluster.readQuery("select 1");
        return cluster.stats().nodes[1]!.queries > before;
      });
    });

    await t.step(
      "writes fail fast while the primary is down, and resume when it is back",
      async () => {
        await using cluster = await connect({
          master: local.masterUrl,
          replicas: local.replicaUrls,
          retry: { maxAttempts: 3, baseDelayMs: 20, maxDelayMs: 50, waitForPrimaryMs: 0 },
          healthCheck: { intervalMs: 200, timeoutMs: 500 },
        });
        await cluster.exec("create table if not exists ledger(id int primary key)");
        await local.stop("primary");
        const started = performance.now();
        const err = await cluster.exec("insert into ledger values (1)").then(
          () => undefined,
          (e: unknown) => e,
        );
        const elapsed = performance.now() - started;
        assert.ok(
          err instanceof NoHealthyNodeError || err instanceof RetryExhaustedError,
          `expected NoHealthyNodeError or RetryExhaustedError, got ${err}`,
        );
        assert.ok(elapsed < 5_000, `failed within the retry budget (${Math.round(elapsed)} ms)`);
        // Reads keep working on the replicas meanwhile.
        assert.equal((await cluster.readQuery("select 1 as one")).length, 1);
        // A second write is refused before anything is sent.
        await until("the primary is marked down", () => !cluster.stats().nodes[0]!.healthy);
        const queriesBefore = cluster.stats().nodes[0]!.queries;
        await assert.rejects(cluster.exec("insert into ledger values (2)"), DbxError);
        assert.equal(
          cluster.stats().nodes[0]!.queries,
          queriesBefore,
          "no attempt on a node marked down",
        );

        await local.start("primary");
        await until("the primary is back", () => cluster.stats().nodes[0]!.healthy);
        await cluster.exec("insert into ledger values (3)");
        const ids = await cluster.query<{ id: number }>("select id from ledger order by id");
        assert.deepEqual(ids, [{ id: 3 }], "no failed write was applied");
      },
    );

    await t.step("nothing keeps running after close(), even with a short interval", async () => {
      const cluster = await connect({
        master: local.masterUrl,
        replicas: local.replicaUrls,
        healthCheck: { intervalMs: 5, timeoutMs: 500 },
      });
      await sleep(100);
      await cluster.close();
      // The sanitizers of this test fail it if a probe timer or socket survived.
    });
  },
});

Deno.test({
  name: named(
    "a restarted replica gets reads again within two probe intervals, five times in a row",
  ),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 2 });
    const intervalMs = 500;
    await using cluster = await connect({
      master: local.masterUrl,
      replicas: local.replicaUrls,
      healthCheck: { intervalMs, timeoutMs: 1_000 },
    });
    const port = local.nodes[1]!.port;
    /** When each read served by replica1 came back (performance.now()). */
    let lastOnReplica = 0;
    let running = true;
    const failures: unknown[] = [];
    const loops = Array.from({ length: 4 }, async () => {
      while (running) {
        try {
          const { p } = await cluster.readQueryRow<{ p: number }>("select inet_server_port() as p");
          if (p === port) lastOnReplica = performance.now();
        } catch (err) {
          failures.push(err);
        }
      }
    });
    const back: number[] = [];
    try {
      for (let i = 0; i < 5; i++) {
        await until(
          "replica1 serves reads",
          () => lastOnReplica > 0 && cluster.stats().nodes[1]!.healthy,
        );
        await local.stop("replica1");
        await until("replica1 is marked down", () => !cluster.stats().nodes[1]!.healthy);
        await local.start("replica1");
        const started = performance.now();
        await until("reads reach replica1 again", () => lastOnReplica > started, 30_000);
        back.push(Math.round(lastOnReplica - started));
      }
    } finally {
      running = false;
      await Promise.all(loops);
    }
    console.log(`replica back in service after pg_ctl start: ${back.join(", ")} ms`);
    assert.deepEqual(failures, [], "no read failed");
    for (const ms of back) {
      assert.ok(ms <= 3 * intervalMs, `reads reached the restarted replica after ${ms} ms`);
    }
  },
});

Deno.test({
  name: named("one kill of a node with 4 idle pooled connections counts one failure and one probe"),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 1 });
    const log = testLogger();
    // No scheduled round interferes: probes only run when something asks.
    await using cluster = await connect({
      master: local.masterUrl,
      replicas: local.replicaUrls,
      pool: { max: 4 },
      // The 4 idle connections are pooled ones.
      pipeline: false,
      healthCheck: { intervalMs: 600_000, timeoutMs: 2_000 },
      logger: log,
    });
    await Promise.all(
      Array.from({ length: 4 }, () => cluster.readQuery("select pg_sleep(0.05)")),
    );
    await until(
      "4 idle connections on the replica",
      () => cluster.stats().nodes[1]!.idleConns === 4,
    );
    await local.kill("replica1");
    await until(
      "the pool dropped every dead connection",
      () => cluster.stats().nodes[1]!.totalConns === 0,
    );
    await until("the node is down", () => !cluster.stats().nodes[1]!.healthy);
    const probes = () => log.entries.filter((e) => e.msg === "dbx: probe failed");
    await until("the re-probe finished", () => probes().length > 0);
    await cluster.health(); // one more round: exactly one more probe
    assert.deepEqual(
      probes().map((e) => e.attrs?.failures),
      [1, 2],
      "the 4 dead connections shared one probe; health() added one",
    );
    assert.equal(log.entries.filter((e) => e.msg === "dbx: node is down").length, 1);
  },
});

Deno.test({
  name: named(
    "connect() without a password to a SCRAM server says 'password required' and names the node",
  ),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 0, password: "s3cret" });
    const url = new URL(local.masterUrl);
    url.password = "";
    const err = await connect({ master: url.href, retry: { maxAttempts: 1 } }).catch((e) => e);
    // A login that cannot succeed: connect() stops at once, not retryable.
    assert.ok(err instanceof DbxError && !(err instanceof NoHealthyNodeError), `${err}`);
    assert.equal(isRetryable(err), false);
    assert.match(err.message, /password required/);
    assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${local.nodes[0]!.port}`));
  },
});
