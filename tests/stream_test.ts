/**
 * Streaming over a server-side cursor: order and batching, releasing the
 * connection when the loop is left early, replicas, the retry contract (only
 * before the first row), ambient transactions and argument checks.
 */

import assert from "node:assert/strict";
import {
  type Cluster,
  ClusterClosedError,
  connect,
  DbxError,
  type QueryEndEvent,
  type RetryEvent,
} from "../mod.ts";
import { dbTest, startLocalCluster, testCluster } from "../src/testing/mod.ts";
import { named, noPostgres, until } from "./helpers.ts";

/** Backends of the primary idle inside a transaction whose last statement was this FETCH. */
async function suspendedCursors(cluster: Cluster, fetch: string): Promise<number> {
  const [row] = await cluster.query<{ n: number }>(
    `select count(*)::int as n from pg_stat_activity
      where state = 'idle in transaction' and query like $1`,
    [`${fetch}%`],
  );
  return row!.n;
}

/** Every connection of the primary's pool is back and idle. */
function assertPoolIdle(cluster: Cluster): void {
  const primary = cluster.stats().nodes[0]!;
  assert.equal(primary.idleConns, primary.totalConns, "every connection went back idle");
  assert.equal(primary.inFlight, 0);
}

const ended: QueryEndEvent[] = [];

dbTest(
  "stream() yields 10 000 rows in order, fetched 333 at a time",
  async (cluster) => {
    ended.length = 0;
    const seen: number[] = [];
    for await (
      const { g } of cluster.stream<{ g: number }>(
        "select g from generate_series(1, $1::int) g order by g",
        [10_000],
        { batchSize: 333 },
      )
    ) {
      seen.push(g);
    }
    assert.equal(seen.length, 10_000);
    assert.ok(seen.every((g, i) => g === i + 1), "in order, none missing or repeated");
    const fetches = ended.filter((e) => e.sql.startsWith("fetch forward 333 from dbx_stream_"));
    // 30 full batches, then one of 10 rows that ends the stream.
    assert.equal(fetches.length, 31);
    assert.deepEqual(
      ended.map((e) => e.sql.split(" ")[0]).filter((w) => w !== "fetch"),
      ["begin", "declare", "commit"],
    );
    assertPoolIdle(cluster);
  },
  { config: { metrics: { onQueryEnd: (e) => void ended.push(e) } } },
);

dbTest(
  "leaving the loop after 5 rows closes the cursor and releases the connection",
  async (cluster) => {
    const fetch = "fetch forward 7 from dbx_stream_";
    const rows: number[] = [];
    for await (
      const { g } of cluster.stream<{ g: number }>(
        "select g from generate_series(1, 1000) g",
        undefined,
        { batchSize: 7 },
      )
    ) {
      rows.push(g);
      if (rows.length === 1) {
        // While the loop runs, the cursor's transaction holds a connection.
        assert.equal(await suspendedCursors(cluster, fetch), 1);
      }
      if (rows.length === 5) break;
    }
    assert.deepEqual(rows, [1, 2, 3, 4, 5]);
    assert.equal(await suspendedCursors(cluster, fetch), 0);
    assertPoolIdle(cluster);
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
  },
);

dbTest("readStream() reads on a replica, in a read-only transaction", async (cluster) => {
  const rows = [];
  for await (
    const row of cluster.readStream<{ r: boolean; ro: string; g: number }>(
      "select pg_is_in_recovery() as r, current_setting('transaction_read_only') as ro, g from generate_series(1, 3) g",
      undefined,
      { batchSize: 2 },
    )
  ) {
    rows.push(row);
  }
  assert.deepEqual(rows, [1, 2, 3].map((g) => ({ r: true, ro: "on", g })));
  assert.equal(cluster.stats().nodes[0]!.queries, 0, "nothing ran on the primary");
});

dbTest(
  "after the first row a killed backend ends the iteration with a connection error, not a retry",
  async (cluster) => {
    const fetch = "fetch forward 10 from dbx_stream_";
    const rows: number[] = [];
    const failure = await (async () => {
      try {
        for await (
          const { g } of cluster.stream<{ g: number }>(
            "select g from generate_series(1, 1000) g",
            undefined,
            { batchSize: 10 },
          )
        ) {
          rows.push(g);
          if (rows.length === 1) {
            const [{ n }] = await cluster.query<{ n: number }>(
              `select count(pg_terminate_backend(pid))::int as n from pg_stat_activity
                where state = 'idle in transaction' and query like $1`,
              [`${fetch}%`],
            ) as [{ n: number }];
            assert.equal(n, 1, "the cursor's backend was killed");
          }
        }
      } catch (err) {
        return err;
      }
      return undefined;
    })();
    assert.ok(failure instanceof DbxError, `a DbxError: ${failure}`);
    assert.equal(failure.kind, "connection", failure.message);
    // The first batch was handed out whole; nothing was fetched again.
    assert.deepEqual(rows, Array.from({ length: 10 }, (_, i) => i + 1));
  },
);

dbTest("inside a transaction, stream() runs in it and sees its own writes", async (cluster) => {
  await cluster.exec("drop table if exists stream_tx");
  await cluster.exec("create table stream_tx(id int)");
  const seen = await cluster.runTx(async (tx) => {
    await tx.exec("insert into stream_tx select generate_series(1, 25)");
    const ids: number[] = [];
    for await (
      const { id } of cluster.stream<{ id: number }>("select id from stream_tx order by id", [], {
        batchSize: 4,
      })
    ) {
      ids.push(id);
      if (ids.length === 10) break;
    }
    // The transaction goes on after the loop was left: the cursor was closed in it.
    const [{ n }] = await tx.query<{ n: number }>(
      "select count(*)::int as n from pg_cursors where name like 'dbx_stream_%'",
    ) as [{ n: number }];
    assert.equal(n, 0, "no cursor left open");
    await tx.exec("insert into stream_tx values (26)");
    return ids;
  });
  assert.deepEqual(seen, Array.from({ length: 10 }, (_, i) => i + 1));
  const [{ n }] = await cluster.query<{ n: number }>(
    "select count(*)::int as n from stream_tx",
  ) as [
    { n: number },
  ];
  assert.equal(n, 26, "the transaction committed");
  assertPoolIdle(cluster);
  await cluster.exec("drop table stream_tx");
});

dbTest("aborting the signal mid-stream ends it as canceled and releases the connection", async (
  cluster,
) => {
  const stop = new AbortController();
  const rows: number[] = [];
  await assert.rejects(
    (async () => {
      for await (
        const { g } of cluster.stream<{ g: number }>(
          "select g from generate_series(1, 100) g",
          undefined,
          { batchSize: 1, signal: stop.signal },
        )
      ) {
        rows.push(g);
        if (g === 3) stop.abort();
      }
    })(),
    (err) => err instanceof DbxError && err.kind === "canceled",
  );
  assert.deepEqual(rows, [1, 2, 3]);
  await until("the connection is back", () => {
    const p = cluster.stats().nodes[0]!;
    return p.idleConns === p.totalConns && p.inFlight === 0;
  });
  assert.deepEqual(await cluster.query("select 2 as two"), [{ two: 2 }]);
});

dbTest("stream() checks its arguments before anything is sent", async (cluster) => {
  for (const batchSize of [0, -1, 1.5, Number.NaN, "10"]) {
    assert.throws(
      () => cluster.stream("select 1", [], { batchSize: batchSize as number }),
      (err) =>
        err instanceof RangeError && err.message.includes("'options.batchSize'") &&
        err.message.includes("current value is"),
      `batchSize ${String(batchSize)}`,
    );
  }
  assert.throws(
    () => cluster.readStream(42 as unknown as string),
    (err) => err instanceof TypeError && /readStream\(\).*'sql'.*42/.test(err.message),
  );
  assert.throws(
    () => cluster.stream("select 1", [], { timeoutMs: -5 }),
    (err) => err instanceof RangeError && err.message.includes("'options.timeoutMs'"),
  );
  // An iterable is lazy: nothing runs until it is iterated, and each iteration runs anew.
  const rows = cluster.stream<{ v: number }>("select 7 as v");
  assert.equal(cluster.stats().totals.queries, 0);
  for (let i = 0; i < 2; i++) {
    const got = [];
    for await (const row of rows) got.push(row);
    assert.deepEqual(got, [{ v: 7 }]);
  }
});

Deno.test({
  name: named("readStream() on a replica that died before the first row is retried elsewhere"),
  ignore: noPostgres,
  async fn() {
    await using local = await startLocalCluster({ replicas: 1 });
    const retries: RetryEvent[] = [];
    // No background probe before the stream: the cluster still believes the replica is up.
    await using cluster = await connect({
      master: local.masterUrl,
      replicas: local.replicaUrls,
      healthCheck: { intervalMs: 600_000 },
      metrics: { onRetry: (e) => void retries.push(e) },
    });
    const replica = cluster.stats().nodes[1]!;
    assert.equal(replica.healthy, true);
    await local.stop("replica1");

    const rows = [];
    for await (
      const row of cluster.readStream<{ r: boolean; g: number }>(
        "select pg_is_in_recovery() as r, g from generate_series(1, 3) g",
      )
    ) {
      rows.push(row);
    }
    assert.deepEqual(rows, [1, 2, 3].map((g) => ({ r: false, g })), "read on the primary");
    assert.equal(retries.length, 1, JSON.stringify(retries));
    assert.equal(retries[0]!.node, replica.name);
    assert.equal(cluster.stats().nodes[1]!.healthy, false);
  },
});

dbTest("stream() on a closed cluster throws ClusterClosedError at once", async () => {
  const closed = await testCluster();
  await closed.close();
  assert.throws(() => closed.stream("select 1"), ClusterClosedError);
  assert.throws(() => closed.readStream("select 1"), ClusterClosedError);
});
