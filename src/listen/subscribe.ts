/**
 * Change streams that survive a failover: `cluster.subscribe(publication,
 * handler, { slot })` reads the logical replication stream (`pgoutput`) of a
 * publication from whatever node is the primary, hands each change to
 * `handler` in commit order, and acknowledges a transaction only once the
 * handler has resolved for all its changes (at-least-once). After a lost
 * connection or a failover it resumes on the new primary from the last
 * acknowledged position, through a slot made with `failover = true` that
 * PostgreSQL 17+ copies to replicas running `sync_replication_slots = on`.
 *
 * The public types and the entry point live here; the stream itself is
 * `change_stream.ts`, the server checks `slot_check.ts`, the bytes
 * `pgoutput.ts` and `change_decoder.ts`.
 *
 * @module
 */

import type { ClusterCore } from "../cluster/core.ts";
import { parseLsn } from "../call/route.ts";
import { withCall } from "../call/signal.ts";
import { checkCallOptions, describe } from "../call/validate.ts";
import type { Row } from "../executor.ts";
import { ChangeStream } from "./change_stream.ts";
import { checkSetup } from "./slot_check.ts";

/**
 * One row change of a logical change stream, as handed to a
 * {@linkcode ChangeHandler}. Values went through the cluster's type parsers
 * (`int4` as `number`, `timestamptz` as `Date`, ...), exactly as `query()`
 * returns them.
 *
 * @example
 * ```ts
 * import type { Change } from "@codelab/dbx";
 *
 * const describeChange = (c: Change) => `${c.op} ${c.schema}.${c.table} ${JSON.stringify(c.key)}`;
 * ```
 */
export interface Change {
  /** What happened to the row; `truncate` empties the whole table. */
  readonly op: "insert" | "update" | "delete" | "truncate";
  /** Schema of the table. */
  readonly schema: string;
  /** Table name. */
  readonly table: string;
  /**
   * The row after an insert or update. A TOASTed column that the update did not change
   * is absent unless the table has `REPLICA IDENTITY FULL`.
   */
  readonly new?: Row | undefined;
  /** The whole row before an update or delete: only with `REPLICA IDENTITY FULL`. */
  readonly old?: Row | undefined;
  /**
   * The replica identity (primary key by default) of the row: for a delete or an update,
   * its value before the change. Absent for `truncate` and tables without one.
   */
  readonly key?: Row | undefined;
  /** WAL position of this change (`pg_lsn` text, e.g. `"0/3000A10"`). */
  readonly lsn: string;
  /** WAL position of its transaction's commit record: the same for every change of it. */
  readonly commitLsn: string;
  /** When its transaction committed. */
  readonly commitTime: Date;
  /** Its transaction's id. */
  readonly xid: number;
}

/**
 * Called for each change, in commit order, one at a time: the next change is handed over
 * once the promise it returns resolved. A handler that throws (or rejects) stops the
 * stream at that transaction: nothing from it on is acknowledged, and after a backoff
 * the stream restarts from the last acknowledged position, so the whole transaction is
 * delivered again from its first change (make the handler idempotent).
 *
 * @example
 * ```ts
 * import type { ChangeHandler } from "@codelab/dbx";
 *
 * const handler: ChangeHandler = async (change) => {
 *   if (change.op === "delete") console.log("gone", change.key);
 * };
 * ```
 */
export type ChangeHandler = (change: Change) => void | Promise<void>;

/**
 * What `onReconnect` of {@linkcode SubscribeOptions} is told once a change stream runs
 * again. Nothing was missed: the stream resumed at the last acknowledged position, so
 * changes received but not yet acknowledged before the break are delivered again.
 *
 * @example
 * ```ts
 * import type { ChangeReconnectInfo } from "@codelab/dbx";
 *
 * const onReconnect = (info: ChangeReconnectInfo) =>
 *   console.warn(`stream back on ${info.node} at ${info.position} after ${info.downMs} ms`);
 * ```
 */
export interface ChangeReconnectInfo {
  /** How long the stream was down, in ms. */
  readonly downMs: number;
  /** The node streaming now (the primary when it reconnected). */
  readonly node: string;
  /** The node that streamed before the break. */
  readonly previousNode: string;
  /** The acknowledged position the stream resumed from (`pg_lsn` text). */
  readonly position: string;
  /** Why it broke: the connection (or its node) was lost, or the handler threw. */
  readonly reason: "connection_lost" | "handler_failed";
}

/**
 * Options of `cluster.subscribe()`.
 *
 * @example
 * ```ts
 * import type { SubscribeOptions } from "@codelab/dbx";
 *
 * const options: SubscribeOptions = { slot: "search_index", create: true };
 * ```
 */
export interface SubscribeOptions {
  /**
   * The logical replication slot to read through: lower-case letters, digits and `_`,
   * at most 63 characters. It keeps the position between runs and across failovers.
   */
  slot: string;
  /**
   * Create the slot (plugin `pgoutput`, `failover = true`) when it does not exist.
   * @default false
   */
  create?: boolean | undefined;
  /**
   * Start at this WAL position (`pg_lsn` text) when it is past the slot's confirmed
   * position: transactions that committed before it are skipped. The server never goes
   * back before the slot's confirmed position.
   * @default undefined (the slot's confirmed position)
   */
  from?: string | undefined;
  /** Ends the subscription when it aborts (like `close()`); aborting while subscribing rejects. @default undefined */
  signal?: AbortSignal | undefined;
  /** Deadline in ms for the checks and the first connection (not for the subscription). @default undefined */
  timeoutMs?: number | undefined;
  /** Called after the stream resumed following a break; a throwing callback is logged. @default undefined */
  onReconnect?: ((info: ChangeReconnectInfo) => void) | undefined;
}

/**
 * A running change stream. Dispose of it with `await using`, `close()`, or by closing
 * the cluster.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * await using sub = await cluster.subscribe("orders_pub", (c) => console.log(c.op), {
 *   slot: "orders_cache",
 * });
 * console.log(sub.position);
 * ```
 */
export interface ChangeSubscription extends AsyncDisposable {
  /** The publication streamed. */
  readonly publication: string;
  /** The slot read through. */
  readonly slot: string;
  /**
   * The last acknowledged WAL position (`pg_lsn` text): the end of the last transaction
   * whose changes the handler all resolved (or a later position the server reported with
   * nothing in between). A restart resumes after it.
   */
  readonly position: string;
  /** The node streaming now; `undefined` while reconnecting or after `close()`. */
  readonly node: string | undefined;
  /**
   * Stops the stream: waits for the change being handled (at most 5 s; a handler still
   * running then is left to finish and its transaction is not acknowledged), acknowledges
   * what was handled, and closes the connection. Every call returns the same promise; it never rejects.
   *
   * @returns Resolves when nothing of the subscription is left running.
   */
  close(): Promise<void>;
}

/** Slot names PostgreSQL accepts. */
const SLOT_NAME = /^[a-z0-9_]{1,63}$/;

function checkSubscribe(publication: unknown, handler: unknown, options: unknown): void {
  const fail = (field: string, rule: string, value: unknown): never => {
    throw new TypeError(
      `Cannot run subscribe() as '${field}' ${rule}: current value is ${describe(value)}`,
    );
  };
  if (typeof publication !== "string" || publication === "") {
    fail("publication", "must be a non-empty string", publication);
  }
  if (typeof handler !== "function") fail("handler", "must be a function", handler);
  if (typeof options !== "object" || options === null) {
    fail("options", "must be an object with 'slot'", options);
  }
  checkCallOptions("subscribe", options);
  const { slot, create, from, onReconnect } = options as SubscribeOptions;
  if (typeof slot !== "string" || !SLOT_NAME.test(slot)) {
    fail(
      "options.slot",
      "must be 1 to 63 lower-case letters, digits or underscores",
      slot,
    );
  }
  if (create !== undefined && typeof create !== "boolean") {
    fail("options.create", "must be a boolean", create);
  }
  if (from !== undefined && parseLsn(from) === undefined) {
    fail("options.from", 'must be a WAL position like "0/16B3748"', from);
  }
  if (onReconnect !== undefined && typeof onReconnect !== "function") {
    fail("options.onReconnect", "must be a function", onReconnect);
  }
}

/**
 * Checks the servers, then starts the stream: resolves once it runs on the primary.
 *
 * @param core The cluster's core.
 * @param publication The publication.
 * @param handler Called for each change.
 * @param options Slot, creation, start position, signal, deadline, reconnect callback.
 * @returns The subscription.
 */
export async function subscribe(
  core: ClusterCore,
  publication: string,
  handler: ChangeHandler,
  options: SubscribeOptions,
): Promise<ChangeSubscription> {
  core.d.assertOpen("subscribe");
  checkSubscribe(publication, handler, options);
  const { slot, create = false, from, onReconnect, signal } = options;
  const stream = await withCall(options, async (callSignal) => {
    const ready = await checkSetup(core.d, publication, slot, create, callSignal);
    const start = parseLsn(from) ?? 0n;
    const sub = new ChangeStream(core.d, {
      resources: core.resources,
      publication,
      slot,
      handler,
      onReconnect,
      position: start > ready.confirmed ? start : ready.confirmed,
    });
    try {
      await sub.open(callSignal);
    } catch (err) {
      await sub.close();
      core.d.assertOpen("subscribe");
      throw err;
    }
    return sub;
  });
  if (signal !== undefined) stream.endOn(signal);
  return stream;
}
