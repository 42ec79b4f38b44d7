/**
 * What Drizzle's node-postgres integration test (`integration-tests/tests/pg/
 * node-postgres.test.ts`) is patched to call for its client when
 * `drizzle_suite.ts` runs it: by `DBX_DRIZZLE_MODE`, the test's own
 * `pg.Client` (`pg`), or `cluster.pgPool()` (`pgpool`) on a cluster of its
 * own (`DBX_MASTER_URL`, `DBX_REPLICA_URLS`) whose `end()` closes the cluster.
 * Bundled for Node with esbuild, npm packages resolved from the suite.
 *
 * @module
 */

import process from "node:process";
import { Cluster } from "../../mod.ts";

/** The client the suite's `drizzle(client)` gets. */
export interface SuiteClient {
  connect?(): Promise<unknown>;
  end(): Promise<void>;
}

/**
 * Makes the suite's client.
 *
 * @param stock Builds the suite's own `pg.Client`.
 * @returns The client, connected.
 */
export async function suiteClient(stock: () => SuiteClient): Promise<SuiteClient> {
  if ((process.env.DBX_DRIZZLE_MODE ?? "pg") === "pg") {
    const client = stock();
    await client.connect?.();
    return client;
  }
  const master = process.env.DBX_MASTER_URL;
  if (master === undefined) throw new Error("DBX_MASTER_URL is not set");
  const replicas = (process.env.DBX_REPLICA_URLS ?? "").split(",").filter((u) => u !== "");
  const cluster = new Cluster({ master, replicas });
  await cluster.start();
  const pool = cluster.pgPool();
  const end = pool.end.bind(pool);
  return Object.assign(pool, {
    end: async () => {
      await end();
      await cluster.close();
    },
  });
}
