/**
 * Pipelined batches for `cluster.sendBatch`: every statement is written to
 * one connection before any answer is read (one round trip), using
 * node-postgres' pipeline mode on the pinned connection for the duration of
 * the batch.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { DbxError } from "./errors.ts";
import type { Row } from "./executor.ts";

/**
 * One statement of a batch.
 *
 * @example
 * ```ts
 * import type { BatchQuery } from "@codelab/dbx";
 *
 * const batch: BatchQuery[] = [
 *   { sql: "insert into audit(kind) values ($1)", args: ["login"] },
 *   { sql: "select count(*) from audit" },
 * ];
 * ```
 */
export interface BatchQuery {
  /** Statement text with `$1`, `$2` ... placeholders. */
  readonly sql: string;
  /** Values for the placeholders. @default [] */
  readonly args?: readonly unknown[];
}

/**
 * What one statement of a batch returned.
 *
 * @example
 * ```ts
 * import { connect, type BatchResult } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const results: BatchResult[] = await cluster.sendBatch([{ sql: "select 1 as one" }]);
 * console.log(results[0]?.rows); // [{ one: 1 }]
 * ```
 */
export interface BatchResult<T = Row> {
  /** The command tag's verb. */
  readonly command: string;
  /** Rows affected or returned. */
  readonly rowCount: number;
  /** Rows returned (empty for statements without a result set). */
  readonly rows: T[];
}

/**
 * Options of `sendBatch`.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const settled = await cluster.sendBatch([{ sql: "select 1" }, { sql: "select broken" }], { atomic: false });
 * console.log(settled.map((r) => r.status)); // ["fulfilled", "rejected"]
 * ```
 */
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
 * The error of one statement of a batch: a {@linkcode DbxError} with the
 * statement's position. When an atomic batch fails at COMMIT (a deferred
 * constraint, a serialization failure), `batchIndex` equals the number of
 * statements.
 *
 * @example
 * ```ts
 * import { BatchError } from "@codelab/dbx";
 *
 * function failedAt(err: unknown): number | undefined {
 *   return err instanceof BatchError ? err.batchIndex : undefined;
 * }
 * ```
 */
export class BatchError extends DbxError {
  /** Index of the failing statement in the batch. */
  readonly batchIndex: number;

  /**
   * Creates a BatchError.
   *
   * @param batchIndex Index of the failing statement.
   * @param cause The statement's error.
   * @param node Node name.
   */
  constructor(batchIndex: number, cause: unknown, node: string) {
    const message = cause instanceof Error ? cause.message : String(cause);
    super(`batch statement ${batchIndex} failed: ${message} (node ${node})`, { cause, node });
    this.name = "BatchError";
    this.batchIndex = batchIndex;
  }
}

/**
 * Validates a batch before anything is sent.
 *
 * @param queries The statements.
 * @throws {TypeError} naming the first bad entry.
 */
export function checkBatch(queries: unknown): void {
  if (!Array.isArray(queries)) {
    throw new TypeError(
      `Cannot run sendBatch() as 'queries' must be an array: current value is ${
        queries === null ? "null" : typeof queries
      }`,
    );
  }
  queries.forEach((q: unknown, i) => {
    if (q === null || typeof q !== "object") {
      throw new TypeError(`Cannot run sendBatch() as 'queries[${i}]' must be an object with 'sql'`);
    }
    const { sql, args } = q as { sql?: unknown; args?: unknown };
    if (typeof sql !== "string") {
      throw new TypeError(
        `Cannot run sendBatch() as 'queries[${i}].sql' must be a string: current value is ${
          sql === null ? "null" : typeof sql
        }`,
      );
    }
    if (args !== undefined && !Array.isArray(args)) {
      throw new TypeError(`Cannot run sendBatch() as 'queries[${i}].args' must be an array`);
    }
  });
}

function toResult(r: pg.QueryResult): BatchResult {
  return { command: r.command, rowCount: r.rowCount ?? 0, rows: r.rows };
}

/** Sends every statement before reading any answer; settles each. */
async function pipelined(
  client: pg.PoolClient,
  statements: readonly BatchQuery[],
): Promise<PromiseSettledResult<pg.QueryResult>[]> {
  const raw = client as unknown as { pipeline: boolean };
  // Pipeline mode writes each queued statement at once instead of waiting
  // for the previous answer. The client is idle here (just taken from the
  // pool), so switching the mode on and back off around the batch is safe:
  // once every statement settled, nothing is in flight.
  raw.pipeline = true;
  try {
    return await Promise.allSettled(
      statements.map((q) => client.query(q.sql, q.args as unknown[] | undefined)),
    );
  } finally {
    raw.pipeline = false;
  }
}

/**
 * Runs the statements pipelined on `client`.
 *
 * @param client A connection taken from the primary's pool (idle).
 * @param queries The statements.
 * @param atomic Wrap them in one transaction.
 * @param node Node name for errors.
 * @returns Results, or settled results when not atomic.
 * @throws {BatchError} when an atomic batch fails.
 */
export async function runBatch(
  client: pg.PoolClient,
  queries: readonly BatchQuery[],
  atomic: boolean,
  node: string,
): Promise<BatchResult[] | PromiseSettledResult<BatchResult>[]> {
  if (!atomic) {
    const settled = await pipelined(client, queries);
    return settled.map((r, i): PromiseSettledResult<BatchResult> =>
      r.status === "fulfilled"
        ? { status: "fulfilled", value: toResult(r.value) }
        : { status: "rejected", reason: new BatchError(i, r.reason, node) }
    );
  }
  const settled = await pipelined(client, [{ sql: "begin" }, ...queries, { sql: "commit" }]);
  const begin = settled[0]!;
  if (begin.status === "rejected") throw new BatchError(0, begin.reason, node);
  // After the first failure the rest fail with 25P02 and COMMIT answers
  // ROLLBACK: the first rejection is the statement to report.
  for (let i = 1; i <= queries.length; i++) {
    const r = settled[i]!;
    if (r.status === "rejected") throw new BatchError(i - 1, r.reason, node);
  }
  const commit = settled[queries.length + 1]!;
  if (commit.status === "rejected") throw new BatchError(queries.length, commit.reason, node);
  if (commit.value.command === "ROLLBACK") {
    throw new BatchError(queries.length, new Error("the transaction was rolled back"), node);
  }
  return settled.slice(1, queries.length + 1).map((r) =>
    toResult((r as PromiseFulfilledResult<pg.QueryResult>).value)
  );
}
