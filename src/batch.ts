/**
 * Pipelined batches for `cluster.sendBatch`. (Being implemented.)
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import type { Row } from "./executor.ts";

/** One statement of a batch. */
export interface BatchQuery {
  /** Statement text with `$1`, `$2` ... placeholders. */
  readonly sql: string;
  /** Values for the placeholders. @default [] */
  readonly args?: readonly unknown[];
}

/** What one statement of a batch returned. */
export interface BatchResult<T = Row> {
  /** The command tag's verb. */
  readonly command: string;
  /** Rows affected or returned. */
  readonly rowCount: number;
  /** Rows returned (empty for statements without a result set). */
  readonly rows: T[];
}

/** Options of `sendBatch`. */
export interface BatchOptions {
  /**
   * Run the batch in one transaction: a failure rolls every statement back
   * and rejects with that statement's error (index in `batchIndex`).
   * `false` runs each statement on its own and settles each separately.
   * @default true
   */
  atomic?: boolean;
}

/**
 * Validates a batch before anything is sent.
 *
 * @param queries The statements.
 */
export function checkBatch(queries: unknown): void {
  void queries;
  throw new Error("not implemented");
}

/**
 * Runs the statements pipelined on `client`.
 *
 * @param client A connection taken from the primary's pool.
 * @param queries The statements.
 * @param atomic Wrap them in one transaction.
 * @param nodeName Node name for errors.
 * @returns Results, or settled results when not atomic.
 */
export function runBatch(
  client: pg.PoolClient,
  queries: readonly BatchQuery[],
  atomic: boolean,
  nodeName: string,
): Promise<BatchResult[] | PromiseSettledResult<BatchResult>[]> {
  void client;
  void queries;
  void atomic;
  void nodeName;
  return Promise.reject(new Error("not implemented"));
}
