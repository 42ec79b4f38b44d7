/**
 * Test helpers that need a database: {@linkcode testCluster} connects to the
 * cluster named by `DBX_TEST_MASTER_URL` / `DBX_TEST_REPLICA_URLS`, and
 * {@linkcode dbTest} registers a `Deno.test` that is reported as ignored,
 * with the reason in its name, when that database is not reachable.
 *
 * @module
 */

import { connect as tcpConnect } from "node:net";
import process from "node:process";
import { type Cluster, connect } from "../cluster.ts";
import type { ClusterConfig } from "../config.ts";
import { isConnectionError } from "../failure.ts";

/** The test database's URLs from the environment, or undefined when unset. */
export function testDatabaseUrls(): { master: string; replicas: string[] } | undefined {
  let master: string | undefined;
  let replicas: string | undefined;
  try {
    master = process.env.DBX_TEST_MASTER_URL;
    replicas = process.env.DBX_TEST_REPLICA_URLS;
  } catch {
    // Deno without --allow-env: treat as unset.
    return undefined;
  }
  if (master === undefined || master.trim() === "") return undefined;
  const list = (replicas ?? "").split(",").map((s) => s.trim()).filter((s) => s !== "");
  return { master: master.trim(), replicas: list };
}

/** Whether a TCP connection to the URL's host and port opens within `timeoutMs`. */
function reachable(url: string, timeoutMs: number): Promise<string | undefined> {
  let host: string;
  let port: number;
  try {
    const u = new URL(url);
    host = u.hostname || "localhost";
    port = u.port === "" ? 5432 : Number(u.port);
  } catch {
    return Promise.resolve("DBX_TEST_MASTER_URL is not a valid URL");
  }
  return new Promise((resolve) => {
    const socket = tcpConnect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(`${host}:${port} did not answer within ${timeoutMs} ms`);
    }, timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.end();
      socket.once("close", () => resolve(undefined));
    });
    socket.once("error", (err) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(`${host}:${port} is unreachable (${err.message})`);
    });
  });
}

const urls = testDatabaseUrls();
/** Why database tests cannot run, or undefined when they can. Decided once, at load. */
const unavailable: string | undefined = urls === undefined
  ? "no database: DBX_TEST_MASTER_URL is not set (`deno task test` starts a local cluster)"
  : await reachable(urls.master, 2_000);

/**
 * Connects to the test cluster named by `DBX_TEST_MASTER_URL` (primary) and
 * `DBX_TEST_REPLICA_URLS` (comma-separated replicas).
 *
 * @param config Settings merged over the URLs from the environment.
 * @returns A connected cluster, or `undefined` when the variables are unset
 * or the database is unreachable.
 * @throws {ConfigError} when `config` is invalid.
 *
 * @example
 * ```ts
 * import { testCluster } from "@codelab/dbx/testing";
 *
 * await using cluster = await testCluster();
 * if (cluster) console.log(await cluster.query("select 1 as one"));
 * ```
 */
export async function testCluster(
  config: Partial<ClusterConfig> = {},
): Promise<Cluster | undefined> {
  const env = testDatabaseUrls();
  if (env === undefined) return undefined;
  try {
    return await connect({ master: env.master, replicas: env.replicas, ...config });
  } catch (err) {
    if (isConnectionError(err)) return undefined;
    throw err;
  }
}

/**
 * Options of {@linkcode dbTest}.
 *
 * @example
 * ```ts
 * import { dbTest } from "@codelab/dbx/testing";
 *
 * dbTest("slow queries are logged", async (cluster) => {
 *   await cluster.query("select pg_sleep(0.2)");
 * }, { config: { slowQueryThresholdMs: 100 } });
 * ```
 */
export interface DbTestOptions {
  /** Settings merged over the URLs from the environment. @default {} */
  config?: Partial<ClusterConfig>;
}

/**
 * Registers a `Deno.test` that gets a connected test cluster and closes it
 * afterwards. When no database is reachable the test is reported as ignored,
 * with the reason in its name.
 *
 * @param name Test name.
 * @param fn The test body.
 * @param options Cluster settings for this test.
 *
 * @example
 * ```ts
 * import { dbTest } from "@codelab/dbx/testing";
 * import assert from "node:assert/strict";
 *
 * dbTest("select 1 answers", async (cluster) => {
 *   assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
 * });
 * ```
 */
export function dbTest(
  name: string,
  fn: (cluster: Cluster, t: Deno.TestContext) => Promise<void> | void,
  options: DbTestOptions = {},
): void {
  Deno.test({
    name: unavailable === undefined ? name : `${name} (ignored: ${unavailable})`,
    ignore: unavailable !== undefined,
    async fn(t) {
      const cluster = await testCluster(options.config);
      if (cluster === undefined) {
        throw new Error(`test database became unreachable before "${name}"`);
      }
      try {
        await fn(cluster, t);
      } finally {
        await cluster.close();
      }
    },
  });
}
