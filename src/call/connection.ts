/**
 * `cluster.withConnection(fn)`: one session of the caller's own, for work
 * that needs it (session advisory locks, temporary tables, `SET`). The
 * connection is leased where the route says (taking it is retried like a
 * read), every statement on it runs once through the attempt runner, and
 * the lease is reset (`DISCARD ALL`) or destroyed when `fn` settles, so
 * nothing it changed reaches another caller.
 *
 * @module
 */

import type { Executor, QueryOptions } from "../executor.ts";
import type { Lease } from "../node/lease.ts";
import type { Node } from "../node/node.ts";
import { asIs, type Dispatcher, nodeExecutor, routedWork } from "./dispatch.ts";
import { pin } from "./pinned.ts";
import { currentSession } from "./session.ts";
import { withCall } from "./signal.ts";
import { checkCall, checkCallOptions, checkRoute, describe } from "./validate.ts";

/**
 * Options of `cluster.withConnection()`.
 *
 * @example
 * ```ts
 * import { connect, type ConnectionOptions } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const options: ConnectionOptions = { route: "replica", timeoutMs: 5_000 };
 * await cluster.withConnection((conn) => conn.query("select 1"), options);
 * ```
 */
export interface ConnectionOptions extends QueryOptions {
  /**
   * `"primary"`: the current primary. `"replica"`: where a read would go
   * (a healthy replica, else the primary).
   * @default "primary"
   */
  route?: "primary" | "replica" | undefined;
}

/**
 * Runs `fn` with an {@linkcode Executor} on one dedicated connection.
 *
 * @param d The cluster's statement path.
 * @param fn The work; its statements share one session.
 * @param options Route, cancellation and a deadline for the whole call.
 * @returns What `fn` returned.
 * @throws {TypeError} when `fn` is not a function or an option has the wrong type.
 * @throws {RangeError} when `route` is unknown.
 */
export function withConnection<T>(
  d: Dispatcher,
  fn: (conn: Executor) => Promise<T>,
  options: ConnectionOptions | undefined,
): Promise<T> {
  try {
    d.assertOpen("withConnection");
    if (typeof fn !== "function") {
      throw new TypeError(
        `Cannot run withConnection() as 'fn' must be a function: current value is ${describe(fn)}`,
      );
    }
    checkCallOptions("withConnection", options);
    checkRoute("run withConnection()", "route", options?.route);
  } catch (err) {
    return Promise.reject(err);
  }
  const session = currentSession(d.sessions);
  const read = options?.route === "replica";
  return withCall(options, async (signal) => {
    const lease: Lease<Node> = read
      ? await routedWork(
        d,
        true,
        undefined,
        signal,
        { send: (node) => node.acquire(signal) },
        undefined,
        session,
        false,
        asIs,
      )
      : await pin(d, undefined, signal);
    lease.resetOnRelease();
    const conn = nodeExecutor((method, sql, args, opts) => {
      try {
        d.assertOpen(method);
        checkCall(method, sql, args, opts);
      } catch (err) {
        return Promise.reject(err);
      }
      const info = { sql, argCount: args?.length ?? 0, attempt: 1 };
      const own = opts?.signal;
      const call = signal === undefined || own === undefined
        ? { signal: own ?? signal, timeoutMs: opts?.timeoutMs }
        : { signal: AbortSignal.any([own, signal]), timeoutMs: opts?.timeoutMs };
      return withCall(
        call,
        (s) => d.runner.run(lease.node, info, s, () => lease.run(sql, args, s)),
      );
    });
    try {
      return await fn(conn);
    } finally {
      lease.release();
      if (!read) session?.noteWrite();
    }
  });
}
