/**
 * Test helpers for code built on dbx: a throwaway local primary + replicas
 * cluster from the PostgreSQL binaries on the machine (no Docker), database
 * tests ({@linkcode dbTest}, {@linkcode testCluster}) against the cluster
 * named by `DBX_TEST_MASTER_URL` / `DBX_TEST_REPLICA_URLS` or, without those
 * variables, a local cluster started once per test process, a fault proxy and
 * a recording logger.
 *
 * Importing this module has no side effect: it opens no connection, starts
 * nothing and loads no npm PostgreSQL binaries; those are fetched only when a
 * local cluster is started from them.
 *
 * @example A database test
 * ```ts
 * import { dbTest } from "@codelab/dbx/testing";
 * import assert from "node:assert/strict";
 *
 * dbTest("reads go to a replica", async (cluster) => {
 *   const [row] = await cluster.readQuery<{ r: boolean }>("select pg_is_in_recovery() as r");
 *   assert.equal(row?.r, true);
 * });
 * ```
 *
 * @module
 */

export { dbTest, testCluster } from "./db_test.ts";
export type { DbTestOptions } from "./db_test.ts";
export { faultProxy } from "./fault_proxy.ts";
export type { FaultProxy, FaultProxyOptions } from "./fault_proxy.ts";
export { runInTx } from "./run_in_tx.ts";
export { testLogger } from "./test_logger.ts";
export type { LogEntry, TestLogger } from "./test_logger.ts";
export { findPgBinaries, findPgBinDir, startLocalCluster } from "./local_cluster.ts";
export type {
  FindPgBinariesOptions,
  LocalCluster,
  LocalClusterOptions,
  LocalNode,
  PgBinaries,
  PgBinariesSource,
} from "./local_cluster.ts";
