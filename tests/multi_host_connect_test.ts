import assert from "node:assert/strict";
import {
  connect,
  type MetricsHook,
  NoHealthyNodeError,
  type QueryEvent,
  roundRobin,
} from "../mod.ts";
import { splitAuthority } from "../src/config/multi_host.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { testLogger } from "../src/testing/mod.ts";
import { until } from "./helpers.ts";

const urls = testDatabaseUrls();
const ignore = urls === undefined || urls.replicas.length === 0;
const why = ignore ? " (ignored: DBX_TEST_MASTER_URL / DBX_TEST_REPLICA_URLS are not set)" : "";

/** `host:port` of a URL, as written. */
const hostOf = (url: string) => splitAuthority(url)!.hosts;
/** A multi-host URL over `hosts`, with the master URL's user, password, database and query. */
function multiHost(hosts: readonly string[], params = ""): string {
  const { head, tail } = splitAuthority(urls!.master)!;
  const sep = tail.includes("?") ? "&" : "?";
  return `${head}${hosts.map(hostOf).join(",")}${tail}${params === "" ? "" : `${sep}${params}`}`;
}
const port = (url: string) => Number(new URL(url).port || 5432);

Deno.test({
  name: "connect(multi-host URL) listing a replica first sends the first write to the primary" +
    why,
  ignore,
  async fn() {
    const master = urls!.master;
    const replicas = urls!.replicas;
    const url = multiHost(
      [replicas[0]!, master, ...replicas.slice(1)],
      "target_session_attrs=read-write",
    );
    const started: QueryEvent[] = [];
    const retries: unknown[] = [];
    const metrics: MetricsHook = {
      onQueryStart: (e) => void started.push(e),
      onRetry: (e) => void retries.push(e),
    };
    const logger = testLogger();
    // Turns over the replicas: the reads below reach each whatever their latencies.
    await using cluster = await connect({ nodes: [url], metrics, logger, balancer: roundRobin() });

    // Every node's role is the server's, learned before connect() resolved.
    const roles = Object.fromEntries(cluster.stats().nodes.map((n) => [n.name, n.role]));
    assert.deepEqual(roles, {
      [hostOf(replicas[0]!)]: "replica",
      [hostOf(master)]: "primary",
      ...Object.fromEntries(replicas.slice(1).map((r) => [hostOf(r), "replica"])),
    });
    assert.ok(cluster.stats().nodes.every((n) => n.healthy));

    // The very first statement is a write and lands on the primary, with no retry.
    const table = `multi_host_${crypto.randomUUID().replaceAll("-", "")}`;
    await cluster.exec(`create table ${table} (id int primary key)`);
    try {
      assert.equal(started[0]?.node, hostOf(master), "the first statement went to the primary");
      assert.equal(started[0]?.role, "primary");
      await cluster.exec(`insert into ${table} values (1)`);
      const row = await cluster.queryRow<{ recovery: boolean; port: number }>(
        "select pg_is_in_recovery() as recovery, inet_server_port() as port",
      );
      assert.deepEqual(row, { recovery: false, port: port(master) });
      assert.deepEqual(retries, [], "no write was sent to a replica and retried");
      assert.equal(cluster.stats().totals.errors, 0);

      // Reads go to the replicas, which see the write once replayed.
      const replicaPorts = new Set(replicas.map(port));
      await until("a replica has replayed the insert", async () => {
        const rows = await cluster.readQuery(`select id from ${table}`);
        return rows.length === 1;
      }, 30_000);
      const seen = new Set<number>();
      for (let i = 0; i < 2 * replicas.length; i++) {
        const r = await cluster.readQueryRow<{ port: number; recovery: boolean }>(
          "select inet_server_port() as port, pg_is_in_recovery() as recovery",
        );
        assert.ok(r.recovery, `read ran on ${r.port}, not on a replica`);
        seen.add(r.port);
      }
      assert.deepEqual(seen, replicaPorts, "reads spread over every replica");

      const health = await cluster.health();
      assert.deepEqual(
        Object.fromEntries(health.nodes.map((n) => [n.name, n.role])),
        roles,
      );
      assert.equal(
        logger.entries.filter((e) => e.msg === "dbx: node changed role").length,
        0,
        "learning the roles at connect is not a role change",
      );
    } finally {
      await cluster.exec(`drop table ${table}`);
    }
  },
});

Deno.test({
  name: "connect({ nodes }) and connect(url) learn the roles whatever the order" + why,
  ignore,
  async fn() {
    for (
      const config of [
        { nodes: [...urls!.replicas, urls!.master] },
        multiHost([...urls!.replicas, urls!.master]),
      ]
    ) {
      await using cluster = await connect(config);
      const primary = cluster.stats().nodes.filter((n) => n.role === "primary");
      assert.deepEqual(primary.map((n) => n.name), [hostOf(urls!.master)]);
      const { recovery } = await cluster.queryRow<{ recovery: boolean }>(
        "select pg_is_in_recovery() as recovery",
      );
      assert.equal(recovery, false);
    }
  },
});

Deno.test({
  name: "target_session_attrs=standby connects to replicas alone; read-write refuses them" + why,
  ignore,
  async fn() {
    const replicasOnly = urls!.replicas;
    await using cluster = await connect({
      nodes: [multiHost(replicasOnly, "target_session_attrs=standby")],
      retry: { waitForPrimaryMs: 0 },
    });
    const { recovery } = await cluster.readQueryRow<{ recovery: boolean }>(
      "select pg_is_in_recovery() as recovery",
    );
    assert.equal(recovery, true);
    const err = await cluster.exec("select 1").catch((e) => e);
    assert.ok(err instanceof NoHealthyNodeError, `writes need a primary: ${err}`);

    const refused = await connect({
      nodes: [multiHost(replicasOnly, "target_session_attrs=read-write")],
      retry: { maxAttempts: 1 },
    }).catch((e) => e);
    assert.ok(refused instanceof NoHealthyNodeError, `${refused}`);
    assert.match(refused.message, /no node reports primary/);
  },
});
