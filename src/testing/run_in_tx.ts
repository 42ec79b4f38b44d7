/**
 * {@linkcode runInTx}: run test code in a transaction that is always rolled
 * back, so tests leave no data behind.
 *
 * @module
 */

import type { Cluster } from "../cluster/cluster.ts";
import { withExecutor } from "../cluster/context.ts";
import type { Tx } from "../executor.ts";
import type { TxOptions } from "../tx/run_tx.ts";

/**
 * Runs `fn(tx)` in a transaction that is always rolled back, whatever `fn`
 * does. The transaction is bound to the async context, so code under test
 * that calls `cluster.getExecutor()` runs inside it.
 *
 * @param cluster The cluster to open the transaction on.
 * @param fn The test body.
 * @param options Transaction characteristics.
 * @returns What `fn` returned.
 * @throws Whatever `fn` threw (after the rollback).
 *
 * @example
 * ```ts
 * import { dbTest, runInTx } from "@codelab/dbx/testing";
 * import assert from "node:assert/strict";
 *
 * dbTest("insert is visible inside, gone after", async (cluster) => {
 *   await runInTx(cluster, async (tx) => {
 *     await tx.exec("create table t(id int)");
 *     assert.equal((await tx.query("select * from t")).length, 0);
 *   });
 * });
 * ```
 */
export async function runInTx<T>(
  cluster: Cluster,
  fn: (tx: Tx) => Promise<T>,
  options?: TxOptions,
): Promise<T> {
  const tx = await cluster.begin(options);
  try {
    return await withExecutor(tx, () => fn(tx));
  } finally {
    if (tx.active) await tx.rollback();
  }
}
