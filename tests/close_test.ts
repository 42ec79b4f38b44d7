/**
 * Clusters opened and closed inside each test, the way an application's own
 * tests do it, with Deno's sanitizers on (the default): a timer, socket or
 * promise left behind by `close()` fails the test that leaked it.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { connect } from "../mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { within } from "./helpers.ts";

const urls = testDatabaseUrls();
const why = urls === undefined ? " (ignored: DBX_TEST_MASTER_URL is not set)" : "";

/** Server connections dbx opened (pools and probes) to `url`'s server, by application_name. */
async function dbxBackends(url: string): Promise<number> {
  const client = new pg.Client({ connectionString: url, application_name: "close_test" });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: number }>(
      "select count(*)::int as n from pg_stat_activity where application_name in ('dbx', 'dbx-health')",
    );
    return rows[0]!.n;
  } finally {
    await client.end();
  }
}

for (let cycle = 1; cycle <= 20; cycle++) {
  Deno.test({
    name:
      `await using connect() + a query + a read, cycle ${cycle} of 20, leaves no timer or socket` +
      why,
    ignore: urls === undefined,
    async fn() {
      await using cluster = await connect({ master: urls!.master, replicas: urls!.replicas });
      assert.deepEqual(await cluster.query("select $1::int as n", [cycle]), [{ n: cycle }]);
      assert.deepEqual(await cluster.readQuery("select $1::int as n", [cycle]), [{ n: cycle }]);
    },
  });
}

Deno.test({
  name: "close() leaves no server connection behind (pg_stat_activity)" + why,
  ignore: urls === undefined,
  async fn() {
    const before = await dbxBackends(urls!.master);
    {
      await using cluster = await connect({
        master: urls!.master,
        replicas: urls!.replicas,
        pool: { min: 2 },
      });
      // Several pooled connections, a transaction and the probe connection.
      await Promise.all(Array.from({ length: 5 }, () => cluster.query("select pg_sleep(0.05)")));
      await cluster.runTx((tx) => tx.exec("select 1"));
      await cluster.health();
      assert.ok(
        (await dbxBackends(urls!.master)) > before,
        "the cluster had connections open on the primary",
      );
    }
    // Terminate is asynchronous on the server side: a closed socket is gone
    // from pg_stat_activity once its backend exited.
    const deadline = Date.now() + 15_000;
    let now = await dbxBackends(urls!.master);
    while (now > before && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      now = await dbxBackends(urls!.master);
    }
    assert.equal(now, before, "every dbx connection to the primary is gone after close()");
  },
});

Deno.test({
  name: "close() finishes when a facade client holding a connection is never released" + why,
  ignore: urls === undefined,
  async fn() {
    const cluster = await connect({ master: urls!.master, replicas: urls!.replicas });
    const client = await cluster.pgPool().connect();
    await client.query("begin"); // Pins a pooled connection, never handed back.
    await within("close() with a client that is never released", cluster.close(), 60_000);
    await assert.rejects(async () => await client.query("select 1"));
  },
});
