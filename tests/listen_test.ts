/**
 * LISTEN/NOTIFY: delivery, the dedicated connection's life, validation, and
 * a subscription that follows a failover to the promoted replica.
 */

import assert from "node:assert/strict";
import { type Cluster, ClusterClosedError, connect, type ReconnectInfo } from "../mod.ts";
import { dbTest, faultProxy, startLocalCluster, testCluster } from "../src/testing/mod.ts";
import { testDatabase } from "../src/testing/db_test.ts";
import { named, noPostgres, until } from "./helpers.ts";

/** Backends whose last statement is this subscription's LISTEN (the channel is unique per test). */
async function listening(cluster: Cluster, channel: string): Promise<number> {
  const [row] = await cluster.query<{ n: number }>(
    "select count(*)::int as n from pg_stat_activity where query = $1",
    [`LISTEN "${channel.replaceAll('"', '""')}"`],
  );
  return row!.n;
}

interface Received {
  payload: string;
  channel: string;
  processId: number;
}

dbTest(
  "listen() delivers notify() payloads with the channel and the sender's process id",
  async (cluster) => {
    // Quotes, spaces and capitals: the channel is one quoted identifier.
    const channel = 'Jobs "x" ü';
    const got: Received[] = [];
    await using sub = await cluster.listen(channel, (payload, info) => {
      got.push({ payload, ...info });
    });
    assert.equal(sub.channel, channel);
    assert.equal(sub.node, cluster.stats().nodes[0]!.name);
    await cluster.notify(channel, "one");
    await cluster.notify("some other channel", "not for us");
    // Sent from a transaction: its backend's pid is the sender's.
    const pid = await cluster.runTx(async (tx) => {
      const { pid } = await tx.queryRow<{ pid: number }>("select pg_backend_pid() as pid");
      await cluster.notify(channel, "two");
      return pid;
    });
    await until("both notifications arrived", () => got.length >= 2);
    assert.deepEqual(got.map((g) => g.payload), ["one", "two"]);
    assert.ok(got.every((g) => g.channel === channel), JSON.stringify(got));
    assert.equal(got[1]!.processId, pid);
  },
);

dbTest("a notification sent in a transaction arrives only once it commits", async (cluster) => {
  const channel = "listen_tx_commit";
  const got: string[] = [];
  await using _sub = await cluster.listen(channel, (payload) => void got.push(payload));
  await assert.rejects(
    cluster.runTx(async () => {
      await cluster.notify(channel, "rolled back");
      throw new Error("abort the transaction");
    }),
    /abort the transaction/,
  );
  await cluster.runTx(() => cluster.notify(channel, "committed"));
  await until("the committed notification arrived", () => got.length >= 1);
  // Notifications of one subscription arrive in commit order: the rolled back one would be first.
  assert.deepEqual(got, ["committed"]);
});

dbTest(
  "unlisten() closes the dedicated connection; a second call returns the same promise",
  async (cluster) => {
    const channel = "listen_close_check";
    assert.equal(await listening(cluster, channel), 0);
    const sub = await cluster.listen(channel, () => {});
    await until("one backend listens", async () => await listening(cluster, channel) === 1);
    const first = sub.unlisten();
    assert.equal(sub.unlisten(), first);
    await first;
    assert.equal(sub.node, undefined);
    await until("no backend listens", async () => await listening(cluster, channel) === 0);
    // The pool was never used for it: every pooled connection is idle.
    const primary = cluster.stats().nodes[0]!;
    assert.equal(primary.idleConns, primary.totalConns);
  },
);

dbTest("closing the cluster closes its subscriptions", async (cluster) => {
  const channel = "listen_cluster_close";
  const other = await testCluster();
  const sub = await other.listen(channel, () => {});
  await until("one backend listens", async () => await listening(cluster, channel) === 1);
  await other.close();
  assert.equal(sub.node, undefined);
  await until("no backend listens", async () => await listening(cluster, channel) === 0);
  await sub.unlisten(); // still fine afterwards
});

dbTest("an aborted signal ends the subscription", async (cluster) => {
  const channel = "listen_signal";
  const stop = new AbortController();
  const sub = await cluster.listen(channel, () => {}, { signal: stop.signal });
  await until("one backend listens", async () => await listening(cluster, channel) === 1);
  stop.abort();
  await until("no backend listens", async () => await listening(cluster, channel) === 0);
  assert.equal(sub.node, undefined);
});

dbTest("a throwing handler is logged and the subscription goes on", async (cluster) => {
  const channel = "listen_throwing";
  const got: string[] = [];
  await using _sub = await cluster.listen(channel, (payload) => {
    got.push(payload);
    if (payload === "bad") throw new Error("handler failed");
    return payload === "worse" ? Promise.reject(new Error("async handler failed")) : undefined;
  });
  for (const p of ["bad", "worse", "good"]) await cluster.notify(channel, p);
  await until("all three arrived", () => got.length >= 3);
  assert.deepEqual(got, ["bad", "worse", "good"]);
});

dbTest(
  "listen() and notify() reject a bad channel, handler or payload, naming it and the value",
  async (cluster) => {
    for (const bad of ["", 42, undefined, null]) {
      await assert.rejects(
        cluster.listen(bad as string, () => {}),
        (err) =>
          err instanceof TypeError && err.message.includes("'channel'") &&
          err.message.includes(`current value is ${bad === "" ? '""' : String(bad)}`),
        `listen(${String(bad)})`,
      );
      await assert.rejects(
        cluster.notify(bad as string, "x"),
        (err) => err instanceof TypeError && err.message.includes("'channel'"),
      );
    }
    await assert.rejects(
      cluster.listen("c".repeat(64), () => {}),
      (err) => err instanceof RangeError && /'channel'.*63 bytes.*64 bytes/.test(err.message),
    );
    await assert.rejects(
      cluster.listen("ok", "nope" as unknown as () => void),
      (err) => err instanceof TypeError && /'handler'.*"nope"/.test(err.message),
    );
    await assert.rejects(
      cluster.listen("ok", () => {}, { onReconnect: 1 as unknown as () => void }),
      (err) => err instanceof TypeError && /'options.onReconnect'.*1/.test(err.message),
    );
    await assert.rejects(
      cluster.notify("ok", 5 as unknown as string),
      (err) => err instanceof TypeError && /'payload'.*5/.test(err.message),
    );
    // Nothing reached the server, and no connection was left open.
    assert.equal(cluster.stats().totals.queries, 0);
  },
);

Deno.test({
  name: named(
    "a subscription follows a failover: LISTEN on the promoted replica, onReconnect told once",
  ),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 1 });
    await using cluster = await connect({
      master: local.masterUrl,
      replicas: local.replicaUrls,
      healthCheck: { intervalMs: 500, timeoutMs: 500 },
    });
    const channel = "failover_events";
    const got: string[] = [];
    const reconnects: ReconnectInfo[] = [];
    await using sub = await cluster.listen(channel, (payload) => void got.push(payload), {
      onReconnect: (info) => void reconnects.push(info),
    });
    await cluster.notify(channel, "before");
    await until("the first notification arrived", () => got.includes("before"));

    await local.stop("primary");
    await local.promote("replica1");
    const promotedPort = local.nodes[1]!.port;
    await until("the subscription reconnected", () => reconnects.length > 0, 60_000);
    assert.ok(
      reconnects[0]!.node.endsWith(`:${promotedPort}`),
      `listening on the promoted replica: ${JSON.stringify(reconnects)}`,
    );
    assert.ok(reconnects[0]!.downMs >= 0);
    assert.equal(sub.node, reconnects[0]!.node);

    await cluster.notify(channel, "after");
    await until("the notification sent to the new primary arrived", () => got.includes("after"));
    const { port } = await cluster.queryRow<{ port: number }>(
      "select current_setting('port')::int as port",
    );
    assert.equal(port, promotedPort, "notify went to the new primary");
    assert.deepEqual(got, ["before", "after"]);
    assert.equal(reconnects.length, 1, `onReconnect calls: ${JSON.stringify(reconnects)}`);
  },
});

dbTest(
  "a hung primary is noticed on the subscription's own connection, which comes back after it",
  async () => {
    const { master } = await testDatabase();
    await using proxy = await faultProxy(master);
    await using cluster = await connect({
      master: proxy.url(master),
      healthCheck: { intervalMs: 300, timeoutMs: 300 },
    });
    const channel = "listen_hung_host";
    const got: string[] = [];
    const reconnects: ReconnectInfo[] = [];
    await using sub = await cluster.listen(channel, (payload) => void got.push(payload), {
      onReconnect: (info) => void reconnects.push(info),
    });
    // Nothing arrives and nothing closes: only asking the connection tells it is gone.
    proxy.blackhole();
    await until("the silent connection was given up", () => sub.node === undefined, 30_000);
    proxy.heal();
    await until("the subscription reconnected", () => reconnects.length > 0, 60_000);
    await cluster.notify(channel, "back");
    await until("a notification arrived after the reconnect", () => got.includes("back"));
    assert.equal(reconnects.length, 1, JSON.stringify(reconnects));
    assert.equal(sub.node, reconnects[0]!.node);
  },
);

dbTest("listen() and notify() on a closed cluster reject with ClusterClosedError", async () => {
  const closed = await testCluster();
  await closed.close();
  await assert.rejects(closed.listen("after_close", () => {}), ClusterClosedError);
  await assert.rejects(closed.notify("after_close", "x"), ClusterClosedError);
});
