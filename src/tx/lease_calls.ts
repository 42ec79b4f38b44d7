/**
 * COPY and pipelined batches: each call is checked once and becomes work on
 * a lease ({@linkcode LeaseCall}), run in a transaction's queue (`tx.ts`)
 * or, called on the cluster outside a transaction, on a connection leased
 * on the primary ({@linkcode onPrimary}: taking it is retried like a read,
 * the work is a write and runs once), through the attempt runner.
 *
 * @module
 */

import type { AttemptInfo } from "../call/attempt.ts";
import type { Dispatcher } from "../call/dispatch.ts";
import { onPinned } from "../call/pinned.ts";
import { type CallOptions, withCall } from "../call/signal.ts";
import { checkCallOptions } from "../call/validate.ts";
import type { Lease } from "../node/lease.ts";
import {
  batchInfo,
  type BatchOptions,
  type BatchQuery,
  type BatchResult,
  runBatch,
} from "./batch.ts";
import { checkBatchOptions } from "./batch_check.ts";
import { checkCopyArgs, copyIn, copyInfo, type CopyOptions, type CopyRows } from "./copy.ts";

/** One checked call of COPY or a batch: what it is for hooks, and the work on a lease. */
export interface LeaseCall<R> {
  readonly info: AttemptInfo;
  work(lease: Lease, signal: AbortSignal | undefined): Promise<R>;
}

/**
 * A `copyFrom()` call, its arguments checked.
 *
 * @param table Table name.
 * @param columns Column names.
 * @param rows The rows.
 * @param options Cancellation and deadline.
 * @returns The call.
 * @throws {TypeError} / {RangeError} naming the bad argument.
 */
export function copyCall(
  table: string,
  columns: readonly string[],
  rows: CopyRows,
  options: CopyOptions | undefined,
): LeaseCall<number> {
  checkCopyArgs("copyFrom", table, columns, rows);
  checkCallOptions("copyFrom", options);
  return {
    info: copyInfo(table),
    // COPY answers an abort with CopyFail itself: no cancel request.
    work: (lease, signal) =>
      lease.use(undefined, (client) => copyIn(client, table, columns, rows, signal)),
  };
}

/**
 * A `sendBatch()` call, its arguments checked.
 *
 * @param queries The statements.
 * @param options `atomic`, cancellation and deadline.
 * @param inTransaction Whether it runs inside an open transaction.
 * @returns The call; its work resolves `[]` at once for no statements.
 * @throws {TypeError} / {RangeError} naming the bad argument.
 */
export function batchCall(
  queries: readonly BatchQuery[],
  options: BatchOptions | undefined,
  inTransaction: boolean,
): LeaseCall<BatchResult[] | PromiseSettledResult<BatchResult>[]> {
  const atomic = checkBatchOptions(queries, options);
  return {
    info: batchInfo(queries),
    work: (lease, signal) =>
      queries.length === 0
        ? Promise.resolve([])
        : runBatch(lease, signal, queries, { atomic, inTransaction }),
  };
}

/**
 * Runs a checked COPY or batch call on a leased primary connection.
 *
 * @param d The cluster's statement path.
 * @param call The call (from `copyCall` or `batchCall`).
 * @param options Cancellation and deadline.
 * @returns What the call's work returned.
 */
export async function onPrimary<R>(
  d: Dispatcher,
  call: LeaseCall<R>,
  options: CallOptions | undefined,
): Promise<R> {
  d.assertOpen();
  return await withCall(
    options,
    (signal) => onPinned(d, call.info, signal, (lease) => call.work(lease, signal)),
  );
}
