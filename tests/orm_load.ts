/** What the ORM tests share: a read loop counting failures, and a cluster of their own to break. */

import assert from "node:assert/strict";
import { type Cluster, connect } from "../mod.ts";
import { startLocalCluster } from "../src/testing/mod.ts";
import { readLoop, until } from "./helpers.ts";

/**
 * Starts a cluster of its own (1 primary, 2 replicas), runs `setUp` and then a
 * read loop over what it returns, kills replica2 under it, and asserts that
 * reads went on with none failed and that the killed replica is marked down.
 */
export async function replicaKilledUnderReads(
  setUp: (cluster: Cluster) => Promise<() => Promise<unknown>>,
): Promise<void> {
  await using local = await startLocalCluster({ replicas: 2 });
  await using cluster = await connect({
    master: local.masterUrl,
    replicas: local.replicaUrls,
    healthCheck: { intervalMs: 500, timeoutMs: 500 },
  });
  const read = await setUp(cluster);
  // The schema setUp made must have reached both replicas before reads go there.
  const lsn = await cluster.writeToken();
  for (const node of cluster.stats().nodes.slice(1)) {
    await until(`${node.name} replayed ${lsn}`, async () => {
      const { ok } = await cluster.node(node.name).queryRow<{ ok: boolean }>(
        "select pg_last_wal_replay_lsn() >= $1::pg_lsn as ok",
        [lsn],
      );
      return ok;
    }, 60_000);
  }
  const load = readLoop(read);
  await until("reads flow", () => load.reads > 200, 60_000);
  const replica2 = cluster.stats().nodes[2]!;
  assert.ok(replica2.queries > 0, "replica2 served reads before the kill");
  await local.kill("replica2");
  const atKill = load.reads;
  await until("reads go on", () => load.reads > atKill + 500, 60_000);
  await load.stop();
  assert.deepEqual(load.failures, [], "zero failed reads");
  assert.equal(cluster.stats().nodes[2]!.healthy, false, "the killed replica is marked down");
  const servedBy = cluster.stats().nodes.map((n) => n.queries);
  assert.ok(servedBy[1]! > 0, `replica1 served reads: ${servedBy}`);
}
