import assert from "node:assert/strict";
import { type Cluster, connect } from "../mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { faultProxy } from "../src/testing/fault_proxy.ts";
import { readLoop, sleep } from "./helpers.ts";

const urls = testDatabaseUrls();
const twoReplicas = urls !== undefined && urls.replicas.length >= 2;
/** Appended to the names of tests that need the database, when it is not configured. */
const why = twoReplicas ? "" : " (ignored: needs DBX_TEST_MASTER_URL and two replicas)";

/** Statements run so far on the replicas named "slow" and "fast". */
function counts(cluster: Cluster): { slow: number; fast: number } {
  const of = (name: string) => cluster.stats().nodes.find((n) => n.name === name)!.queries;
  return { slow: of("slow"), fast: of("fast") };
}

Deno.test({
  name:
    "the default balancer sends few reads to a replica 30 ms slower, and more once it recovers" +
    why,
  ignore: !twoReplicas,
  async fn() {
    const [slowUrl, fastUrl] = urls!.replicas as [string, string];
    // Both behind a proxy, so that once healed they are alike.
    await using proxy = await faultProxy(slowUrl);
    await using other = await faultProxy(fastUrl);
    proxy.delay(15); // ~30 ms more per round trip
    await using cluster = await connect({
      master: urls!.master,
      replicas: [
        { name: "slow", url: proxy.url(slowUrl) },
        { name: "fast", url: other.url(fastUrl) },
      ],
    });
    const start = counts(cluster);
    const readers = readLoop(() => cluster.readQuery("select 1"), 4);
    try {
      // Counted by statements, not timed: a loaded machine only makes this take longer.
      const deadline = Date.now() + 60_000;
      while (readers.reads < 2_000 && Date.now() < deadline) await sleep(20);
      const first = counts(cluster);
      const slow = first.slow - start.slow;
      const all = slow + first.fast - start.fast;
      assert.ok(all >= 2_000, `only ${all} reads in 60 s`);
      assert.ok(slow <= all * 0.1, `the slow replica got ${slow} of ${all} reads (at most 10 %)`);

      proxy.heal();
      // Once it answers as fast as the other, the recovered replica gets its share back:
      // some 200 ms window sees at least a fifth of the reads on it.
      const seen: string[] = [];
      let last = counts(cluster);
      let recovered = false;
      for (const end = Date.now() + 30_000; !recovered && Date.now() < end;) {
        await sleep(200);
        const now = counts(cluster);
        const s = now.slow - last.slow;
        const f = now.fast - last.fast;
        last = now;
        seen.push(`${s}/${s + f}`);
        recovered = s + f >= 20 && s >= (s + f) * 0.2;
      }
      console.log(
        `slow replica: ${slow} of ${all} reads while slow; after healing, per 200 ms: ` +
          seen.join(" "),
      );
      assert.ok(
        recovered,
        `within 30 s no 200 ms window had a fifth of the reads on the recovered replica ` +
          `(its reads/all per window: ${seen.join(" ")})`,
      );
    } finally {
      await readers.stop();
    }
    assert.deepEqual(readers.failures, [], "no read failed");
  },
});
