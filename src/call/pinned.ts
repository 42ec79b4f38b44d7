/**
 * Work on a connection taken from the primary's pool, through the one
 * statement path's parts: taken with retries (`withRetry`, the retry
 * contract's `pin` rules), each attempt through the attempt runner.
 * Transactions, COPY, batches, cursors and `pgPool().connect()` start here.
 *
 * @module
 */

import type { AttemptInfo } from "./attempt.ts";
import type { Dispatcher } from "./dispatch.ts";
import type { Lease } from "../node/lease.ts";
import type { Node } from "../node/node.ts";
import { withRetry } from "./retry.ts";
import { retryOptions } from "./retry_contract.ts";
import { currentSession } from "./session.ts";

/**
 * Takes a connection on the primary, with retries; given a BEGIN statement,
 * opens a transaction on it (through the attempt runner).
 *
 * @param d The cluster.
 * @param begin The BEGIN statement, or undefined for a bare connection.
 * @param signal The call's signal.
 * @returns The lease; hand it back with `lease.release()`.
 */
export function pin(
  d: Dispatcher,
  begin: string | undefined,
  signal: AbortSignal | undefined,
): Promise<Lease<Node>> {
  return withRetry(async (node, attempt) => {
    if (begin === undefined) {
      return await d.runner.run(node, undefined, signal, () => node.acquire(signal));
    }
    return await openOn(d, node, begin, attempt, signal);
  }, retryOptions(d, "pin", undefined, signal, undefined));
}

/**
 * One attempt at opening a transaction on `node`: takes a connection and
 * runs `begin` on it through the attempt runner; the connection is
 * destroyed when BEGIN fails.
 *
 * @param d The cluster.
 * @param node Where.
 * @param begin The BEGIN statement.
 * @param attempt Which attempt of the call this is.
 * @param signal The call's signal.
 * @returns The lease, inside the transaction.
 */
export function openOn(
  d: Dispatcher,
  node: Node,
  begin: string,
  attempt: number,
  signal: AbortSignal | undefined,
): Promise<Lease<Node>> {
  return d.runner.run(node, { sql: begin, argCount: 0, attempt }, signal, async () => {
    const lease = await node.acquire(signal);
    try {
      await lease.run(begin, undefined, signal);
    } catch (err) {
      lease.release(true);
      throw err;
    }
    return lease;
  });
}

/**
 * Runs work (a COPY, a batch) on a connection pinned to the primary: the
 * connection is taken with retries, the work runs once through the attempt
 * runner, and the connection is handed back.
 *
 * @param d The cluster.
 * @param info What the work is, for hooks and tracers.
 * @param signal The call's signal.
 * @param work The work.
 * @returns What `work` returned.
 */
export async function onPinned<R>(
  d: Dispatcher,
  info: AttemptInfo,
  signal: AbortSignal | undefined,
  work: (lease: Lease<Node>) => Promise<R>,
): Promise<R> {
  const session = currentSession(d.sessions);
  const lease = await pin(d, undefined, signal);
  try {
    return await d.runner.run(lease.node, info, signal, () => work(lease));
  } finally {
    lease.release();
    session?.noteWrite();
  }
}
