/**
 * {@linkcode connect}: builds a {@linkcode Cluster}, verifies that a primary
 * answers and starts the health checker.
 *
 * @module
 */

import type { ClusterConfig } from "../config/config.ts";
import { Cluster } from "./cluster.ts";

/**
 * Creates a {@linkcode Cluster}: validates the config eagerly, creates one
 * pool per node, verifies that a primary answers (with retry) and starts the
 * background health checker.
 *
 * @param config Nodes, pool, retry, health-check and observability settings;
 * or a connection string, single- or multi-host (`postgres://app@db1,db2/app`),
 * which is `{ nodes: [url] }`: every host a node whose role the server tells.
 * @returns A connected cluster; dispose of it with `await using` or `close()`.
 * @throws {ConfigError} naming the invalid field and value.
 * @throws {NoHealthyNodeError} when no node reports primary after every attempt.
 * @throws {DbxError} (not retryable) at once when the nodes refused for a reason
 * no retry fixes: a certificate that does not verify, a refused login, no such database.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app", { name: "db3", url: "postgres://app@db3:5432/app" }],
 *   pool: { max: 20 },
 *   retry: { maxAttempts: 4 },
 * });
 * ```
 *
 * @example A multi-host URL: writes go to whichever host is primary
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect(
 *   "postgres://app@db1:5432,db2:5432,db3:5432/app?target_session_attrs=read-write",
 * );
 * ```
 */
export async function connect(config: ClusterConfig | string): Promise<Cluster> {
  const cluster = new Cluster(config);
  try {
    await cluster.start();
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return cluster;
}
