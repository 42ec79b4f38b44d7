/**
 * How the `pgPool` facade and the Kysely dialect run node-postgres query
 * configs (`text`, `values`, `name`, `rowMode`, `types`) on the cluster:
 * routed and retried through the one statement path (`routedWork` in
 * `dispatch.ts`), in the ambient transaction, or on a pinned connection,
 * every attempt through the attempt runner. And the error node-postgres
 * callers expect: the driver's own, under dbx's wrapping.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import type { ClusterCore } from "../cluster/core.ts";
import { asIs, routedWork, StatementWork } from "../call/dispatch.ts";
import { pin } from "../call/pinned.ts";
import { checkShared } from "../call/validate.ts";
import { DbxError } from "../errors.ts";
import type { Lease } from "../node/lease.ts";
import type { Node } from "../node/node.ts";
import { currentSession } from "../call/session.ts";
import type { Transaction } from "../tx/tx.ts";

/** Which rules a statement follows: the write rules, or the read rules. */
export type PgRoute = "primary" | "replica";

/**
 * The error an ORM expects: the driver's own under dbx's wrapping (a
 * DbxError naming the node, a RetryExhaustedError around it). dbx's own
 * conditions stay as they are.
 *
 * @param err What the statement path threw.
 * @returns The error to throw to node-postgres callers.
 */
export function driverError(err: unknown): unknown {
  let e = err;
  while (
    e instanceof DbxError && (e.name === "DbxError" || e.name === "RetryExhaustedError") &&
    e.kind !== "canceled" && e.kind !== "timeout" && e.cause instanceof Error
  ) {
    e = e.cause;
  }
  return e;
}

/** What hooks and tracers see of a query config. */
export function infoOf(config: pg.QueryConfig): { sql: string; argCount: number } {
  return { sql: config.text, argCount: config.values?.length ?? 0 };
}

/**
 * Runs a query config through the cluster's statement path: in the ambient
 * transaction when there is one, else routed by `route`, with retries,
 * pipelined and through the statement cache like `cluster.query` (on a
 * pooled connection of its own when it has a `signal`).
 * Rejections are the raw {@linkcode DbxError}s; callers that speak pg map
 * them with {@linkcode driverError}.
 *
 * @param core The cluster's core.
 * @param route Which rules the statement follows.
 * @param config The query config, passed to pg as it is.
 * @param signal Cancels the call (a running statement on the server).
 * @param checked The caller found that `config.text` changes no session
 * state (`sessionEffect`): the shared path's check is not made twice.
 * @returns pg's result (`command`, `rowCount`, `rows`, `fields`).
 */
export function runConfig(
  core: ClusterCore,
  route: PgRoute,
  config: pg.QueryConfig,
  signal: AbortSignal | undefined,
  checked = false,
): Promise<pg.QueryResult> {
  const tx = core.ambient();
  try {
    core.d.assertOpen("pool.query");
    if (tx === undefined && !checked) checkShared("query", config.text);
  } catch (err) {
    return Promise.reject(err);
  }
  if (tx !== undefined) return inTx(tx.root, config, signal);
  const work = new StatementWork(config.text, config.values, config);
  const session = currentSession(core.d.sessions);
  return routedWork(
    core.d,
    route === "replica",
    work,
    signal,
    work,
    undefined,
    session,
    false,
    asIs,
  );
}

/**
 * Runs a query config in a transaction, after its earlier statements.
 *
 * @param tx The transaction.
 * @param config The query config.
 * @param signal Cancels it on the server.
 * @returns pg's result.
 */
export function inTx(
  tx: Transaction,
  config: pg.QueryConfig,
  signal: AbortSignal | undefined,
): Promise<pg.QueryResult> {
  return tx.enqueue(
    { ...infoOf(config), attempt: 1 },
    { signal },
    (lease, s) => lease.send(config, s),
  );
}

/**
 * Takes a connection for the facade's `connect()`: on the primary (the
 * pin of `begin`), or where a read would go.
 *
 * @param core The cluster's core.
 * @param route Which node.
 * @returns The lease.
 */
export function pinFor(core: ClusterCore, route: PgRoute): Promise<Lease<Node>> {
  core.d.assertOpen("pool.connect");
  if (route === "primary") return pin(core.d, undefined, undefined);
  return routedWork(
    core.d,
    true,
    undefined,
    undefined,
    { send: (node) => node.acquire() },
    undefined,
    undefined,
    false,
    asIs,
  );
}

/**
 * Runs a query config on a pinned connection, once, through the attempt
 * runner (counted and observed like any statement).
 *
 * @param core The cluster's core.
 * @param lease The connection.
 * @param config The query config.
 * @param signal Cancels it on the server.
 * @returns pg's result.
 */
export function runPinned(
  core: ClusterCore,
  lease: Lease<Node>,
  config: pg.QueryConfig,
  signal: AbortSignal | undefined,
): Promise<pg.QueryResult> {
  return core.d.runner.run(
    lease.node,
    { ...infoOf(config), attempt: 1 },
    signal,
    () => lease.send(config, signal),
  );
}
