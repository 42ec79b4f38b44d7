/**
 * Streaming large results: `cluster.stream()` and `cluster.readStream()`
 * iterate over a server-side cursor (`DECLARE ... NO SCROLL CURSOR`, then
 * `FETCH n` batches) inside a transaction on one pinned connection, so memory
 * stays bounded by `batchSize` rows whatever the result's size.
 *
 * The transaction is an ordinary {@linkcode Transaction}: every statement
 * (BEGIN, DECLARE, each FETCH, COMMIT) is counted, observed and classified
 * by the attempt runner. Opening it, the DECLARE and the first FETCH form one
 * attempt, retried (on another node for `readStream`) by the statement
 * path's rules; once a row was handed out nothing is retried: a lost
 * connection ends the iteration with its error. Inside an ambient
 * transaction, the cursor lives in that transaction.
 *
 * @module
 */

import type { ClusterCore } from "../cluster/core.ts";
import { openOn } from "../call/pinned.ts";
import { retryOptions } from "../call/retry_contract.ts";
import type { QueryOptions, ReadOptions } from "../executor.ts";
import { withRetry } from "../call/retry.ts";
import { currentSession } from "../call/session.ts";
import { type Savepoint, Transaction } from "./tx.ts";
import { checkCallOptions, checkStatement, describe } from "../call/validate.ts";

/**
 * Options of `cluster.stream()`.
 *
 * @example
 * ```ts
 * import type { StreamOptions } from "@codelab/dbx";
 *
 * const options: StreamOptions = { batchSize: 500, timeoutMs: 60_000 };
 * ```
 */
export interface StreamOptions extends QueryOptions {
  /** Rows fetched per round trip (`FETCH n`): what is held in memory at most. @default 1000 */
  batchSize?: number | undefined;
}

/**
 * Options of `cluster.readStream()`.
 *
 * @example
 * ```ts
 * import type { ReadStreamOptions } from "@codelab/dbx";
 *
 * const options: ReadStreamOptions = { batchSize: 500, maxLagMs: 5_000 };
 * ```
 */
export interface ReadStreamOptions extends ReadOptions {
  /** Rows fetched per round trip (`FETCH n`): what is held in memory at most. @default 1000 */
  batchSize?: number | undefined;
}

/** Default rows per FETCH. */
const DEFAULT_BATCH_SIZE = 1_000;

/** Cursors opened per top-level transaction, for their names. */
const cursors = new WeakMap<Transaction, number>();

/** A cursor name unique in its transaction and repeated across transactions. */
function cursorName(tx: Transaction): string {
  const n = (cursors.get(tx) ?? 0) + 1;
  cursors.set(tx, n);
  return `dbx_stream_${n}`;
}

/**
 * Checks a stream call eagerly: statement, options and `batchSize`.
 *
 * @returns The batch size.
 */
function check(method: string, sql: unknown, args: unknown, options: unknown): number {
  checkStatement(method, sql, args);
  checkCallOptions(method, options);
  const batchSize = (options as StreamOptions | undefined)?.batchSize;
  if (batchSize === undefined) return DEFAULT_BATCH_SIZE;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
    throw new RangeError(
      `Cannot run ${method}() as 'options.batchSize' must be a positive integer: current value is ${
        describe(batchSize)
      }`,
    );
  }
  return batchSize;
}

/** The call's signal and deadline for a whole iteration (a generator cannot use withCall). */
function callSignal(
  options: QueryOptions | undefined,
): { signal: AbortSignal | undefined; clear(): void } {
  const own = options?.signal;
  const timeoutMs = options?.timeoutMs;
  if (timeoutMs === undefined) return { signal: own, clear() {} };
  const deadline = new AbortController();
  const timer = setTimeout(
    () => deadline.abort(new DOMException(`timed out after ${timeoutMs} ms`, "TimeoutError")),
    timeoutMs,
  );
  return {
    signal: own === undefined ? deadline.signal : AbortSignal.any([own, deadline.signal]),
    clear: () => clearTimeout(timer),
  };
}

/** One stream call, checked and bound to where it was made. */
interface StreamCall {
  readonly core: ClusterCore;
  readonly read: boolean;
  readonly sql: string;
  readonly args: readonly unknown[] | undefined;
  readonly options: ReadStreamOptions | undefined;
  readonly batchSize: number;
  /** The ambient transaction at the time of the call. */
  readonly ambient: Transaction | Savepoint | undefined;
}

/**
 * A stream over a server-side cursor. Each iteration runs the statement
 * anew; nothing happens before the first `next()`.
 *
 * @param core The cluster's core.
 * @param read `readStream` (a replica) rather than `stream` (the primary).
 * @param sql A SELECT or VALUES statement.
 * @param args Bind parameters.
 * @param options Batch size, signal, deadline and, for reads, lag bounds.
 * @returns The rows, in order.
 */
export function stream<T>(
  core: ClusterCore,
  read: boolean,
  sql: string,
  args: readonly unknown[] | undefined,
  options: ReadStreamOptions | undefined,
): AsyncIterable<T> {
  const method = read ? "readStream" : "stream";
  core.d.assertOpen(method);
  const batchSize = check(method, sql, args, options);
  const call: StreamCall = {
    core,
    read,
    sql,
    args,
    options,
    batchSize,
    ambient: core.ambient(),
  };
  return { [Symbol.asyncIterator]: () => iterate<T>(call) };
}

async function* iterate<T>(call: StreamCall): AsyncGenerator<T, void, undefined> {
  call.core.d.assertOpen(call.read ? "readStream" : "stream");
  const { signal, clear } = callSignal(call.options);
  try {
    if (call.ambient !== undefined) yield* inTransaction<T>(call, call.ambient, signal);
    else yield* pinned<T>(call, signal);
  } finally {
    clear();
  }
}

/** DECLARE and FETCH statements of one cursor. */
function statements(call: StreamCall, name: string): { declare: string; fetch: string } {
  return {
    declare: `declare ${name} no scroll cursor for ${call.sql}`,
    fetch: `fetch forward ${call.batchSize} from ${name}`,
  };
}

/** The cursor in the caller's transaction; closed when the iteration ends. */
async function* inTransaction<T>(
  call: StreamCall,
  tx: Transaction | Savepoint,
  signal: AbortSignal | undefined,
): AsyncGenerator<T, void, undefined> {
  const name = cursorName(tx.root);
  const { declare, fetch } = statements(call, name);
  const opts = signal === undefined ? undefined : { signal };
  await tx.exec(declare, call.args, opts);
  try {
    for (;;) {
      const batch = await tx.query<T>(fetch, undefined, opts);
      yield* batch;
      if (batch.length < call.batchSize) return;
    }
  } finally {
    // After a failed FETCH the transaction is aborted and the cursor gone with it.
    if (tx.active) await tx.exec(`close ${name}`).catch(() => {});
  }
}

/**
 * The cursor in a transaction of its own on a pinned connection: opened with
 * retries up to the first batch, committed at the end, rolled back (and the
 * connection released) when the loop is left early or fails.
 */
async function* pinned<T>(
  call: StreamCall,
  signal: AbortSignal | undefined,
): AsyncGenerator<T, void, undefined> {
  const { d } = call.core;
  const begin = call.read ? "begin read only" : "begin";
  const opts = signal === undefined ? undefined : { signal };
  const session = call.read ? currentSession(d.sessions) : undefined;
  const { tx, first, fetch } = await withRetry(
    async (node, attempt) => {
      const lease = await openOn(d, node, begin, attempt, signal);
      const tx = new Transaction(call.core.owner, lease, d.runner, { signal });
      try {
        const { declare, fetch } = statements(call, cursorName(tx));
        await tx.exec(declare, call.args, opts);
        return { tx, first: await tx.query<T>(fetch, undefined, opts), fetch };
      } catch (err) {
        if (tx.active) await tx.rollback().catch(() => {});
        throw err;
      }
    },
    retryOptions(
      d,
      call.read ? "read" : "pin",
      call.read ? call.options : undefined,
      signal,
      session,
    ),
  );
  try {
    let batch = first;
    for (;;) {
      yield* batch;
      if (batch.length < call.batchSize) break;
      batch = await tx.query<T>(fetch, undefined, opts);
    }
    await tx.commit();
  } finally {
    if (tx.active) await tx.rollback().catch(() => {});
  }
}
