/**
 * `cluster.subscribe()` through a failover on PostgreSQL 18, under a writer: a planned one
 * (`pg_ctl stop -m fast`, then promote) and an unplanned one (the primary's WAL stream to
 * the standby frozen, the primary killed with `-m immediate`, then promote). Every row on
 * the new primary must be delivered at least once, none it lacks, each transaction in
 * order; duplicates are counted and printed.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import type { ChangeReconnectInfo } from "../mod.ts";
import {
  logicalCluster,
  named18,
  noPg18,
  Recorder,
  ROWS_PER_TX,
  slotSynced,
  verifyDelivery,
  waitFor,
  Writer,
} from "./subscribe_harness.ts";

async function rows(url: string): Promise<Set<number>> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ id: number }>("select id from items");
    return new Set(rows.map((row) => row.id));
  } finally {
    await client.end();
  }
}

/**
 * The pid of the primary's WAL sender streaming to `replica`: the one holding its physical
 * slot (the replica's slot sync worker has a WAL sender too, under the same
 * application_name).
 */
async function walSenderPid(url: string, replica: string): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ pid: number | null }>(
      "select active_pid as pid from pg_replication_slots where slot_name = $1",
      [replica],
    );
    assert.ok(typeof rows[0]?.pid === "number", `no WAL sender for ${replica}`);
    return rows[0].pid;
  } finally {
    await client.end();
  }
}

/** Whether `pid` has SIGQUIT pending (Linux `/proc`), i.e. it dies as soon as it runs. */
async function quitPending(pid: number): Promise<boolean> {
  // Through `cat`: Deno reads /proc only with --allow-all.
  const { stdout } = await new Deno.Command("cat", {
    args: [`/proc/${pid}/status`],
    stderr: "null",
  })
    .output();
  const status = new TextDecoder().decode(stdout);
  const pending = [...status.matchAll(/^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)$/gm)]
    .reduce((bits, m) => bits | BigInt(`0x${m[1]}`), 0n);
  return status === "" || (pending & (1n << 2n)) !== 0n; // SIGQUIT is 3: bit 2
}

for (const kind of ["planned", "unplanned"] as const) {
  Deno.test({
    name: named18(
      `subscribe() delivers every committed change at least once through ${
        kind === "planned" ? "a planned" : "an unplanned"
      } failover under a writer`,
    ),
    ignore: noPg18,
    async fn() {
      await using db = await logicalCluster();
      const { cluster, local } = db;
      // Slower than the writer: at the failover, changes are received and not yet handled.
      const recorder = new Recorder(8);
      const reconnects: ChangeReconnectInfo[] = [];
      await using sub = await cluster.subscribe("items_pub", recorder.handler, {
        slot: "orders",
        create: true,
        onReconnect: (info) => reconnects.push(info),
      });
      const writer = new Writer(cluster);
      try {
        await waitFor(
          "the first 20 transactions are delivered",
          () => recorder.changes.length >= 20 * ROWS_PER_TX || undefined,
          () => recorder.summary(),
        );
        await slotSynced(local, "orders");

        let onOld: Set<number> | undefined;
        if (kind === "planned") {
          await local.stop("primary");
        } else {
          // The standby stops receiving WAL: the primary goes on committing (asynchronous
          // replication), but synchronized_standby_slots holds those changes back from the
          // stream, so the consumer never sees what the failover is about to lose.
          const sender = await walSenderPid(local.masterUrl, "replica1");
          Deno.kill(sender, "SIGSTOP");
          const before = writer.committed;
          await waitFor(
            "the writer commits 20 more transactions",
            () => writer.committed >= before + 20 || undefined,
            () => `${writer.committed} committed`,
          );
          onOld = await rows(local.masterUrl);
          // The stopped sender gets the postmaster's SIGQUIT while stopped and dies the moment
          // it runs again, sending nothing more.
          const killing = local.kill("primary");
          await waitFor(
            "the stopped WAL sender has SIGQUIT pending",
            async () => await quitPending(sender) || undefined,
            () => "not yet",
            10_000,
          ).catch(() => {});
          Deno.kill(sender, "SIGCONT");
          await killing;
        }
        await local.promote("replica1");
        const afterPromote = writer.committed;
        await waitFor(
          "the writer commits 20 transactions on the new primary",
          () => writer.committed >= afterPromote + 20 || undefined,
          () => `${writer.committed} committed, ${writer.failed} failed`,
        );
        await writer.stop();

        const onNew = await rows(local.replicaUrls[0]!);
        await waitFor(
          "every row on the new primary is delivered",
          () => {
            const counts = recorder.counts();
            return [...onNew].every((id) => counts.has(id)) || undefined;
          },
          () => {
            const counts = recorder.counts();
            const missing = [...onNew].filter((id) => !counts.has(id));
            return `${missing.length} missing (${missing.slice(0, 5)}), ${recorder.summary()}, ` +
              `stream on ${sub.node}, reconnects ${JSON.stringify(reconnects)}`;
          },
        );
        const result = verifyDelivery(recorder, onNew);
        assert.deepEqual(result.problems, []);
        const lostWrites = onOld === undefined
          ? 0
          : [...onOld].filter((id) => !onNew.has(id)).length;
        if (kind === "unplanned") {
          assert.ok(lostWrites > 0, "the failover should have lost the writes the standby missed");
        }
        assert.equal(sub.node, `127.0.0.1:${local.nodes[1]!.port}`);
        assert.ok(reconnects.length >= 1, "onReconnect was told of the failover");
        assert.equal(reconnects.at(-1)!.reason, "connection_lost");
        console.log(
          `${kind} failover: ${onNew.size} rows on the new primary, ${result.delivered} ` +
            `deliveries, ${result.duplicates} duplicates, ${lostWrites} rows lost with the old ` +
            `primary (none delivered), ${writer.failed} failed writes, reconnects: ` +
            reconnects.map((r) => `${r.previousNode} -> ${r.node} after ${r.downMs} ms`).join(", "),
        );
      } finally {
        await writer.stop();
      }
    },
  });
}
