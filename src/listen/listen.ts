/**
 * LISTEN/NOTIFY across failovers: `cluster.listen()` keeps one dedicated
 * connection to whatever node is the primary, re-issues LISTEN after any
 * reconnect or failover and tells the caller about the gap; `cluster.notify()`
 * is `pg_notify` through the ordinary write path.
 *
 * The connection is made like the node's pooled ones (same URL, TLS, value
 * parsers and application name) but lives outside the pool, so a
 * subscription never takes a slot from statements. Finding the primary,
 * waiting for one during a failover and backing off are the statement
 * path's (`retryOptions(d, "pin")` with `withRetry`), and the LISTEN itself
 * runs through the attempt runner: counted, observed, classified.
 *
 * @module
 */

import type { ClusterCore } from "../cluster/core.ts";
import { type QueryOptions, toCommandResult } from "../executor.ts";
import { Listener } from "./listener.ts";
import { withCall } from "../call/signal.ts";
import { checkCallOptions, describe } from "../call/validate.ts";

/**
 * Where a notification came from, as passed to a {@linkcode NotificationHandler}.
 *
 * @example
 * ```ts
 * import type { NotificationInfo } from "@codelab/dbx";
 *
 * const show = (info: NotificationInfo) => `${info.channel} from backend ${info.processId}`;
 * ```
 */
export interface NotificationInfo {
  /** The channel it was sent on. */
  readonly channel: string;
  /** The process id of the server backend that sent it. */
  readonly processId: number;
}

/**
 * Called for each notification of a subscription. What it throws (or the
 * promise it returns rejects with) is logged and never ends the subscription.
 *
 * @example
 * ```ts
 * import type { NotificationHandler } from "@codelab/dbx";
 *
 * const handler: NotificationHandler = (payload, { channel }) => console.log(channel, payload);
 * ```
 */
export type NotificationHandler = (
  payload: string,
  info: NotificationInfo,
) => void | Promise<void>;

/**
 * What `onReconnect` is told after a subscription's connection came back.
 *
 * @example
 * ```ts
 * import type { ReconnectInfo } from "@codelab/dbx";
 *
 * const onReconnect = ({ downMs, node }: ReconnectInfo) =>
 *   console.warn(`listening again on ${node} after ${downMs} ms: re-read what may have changed`);
 * ```
 */
export interface ReconnectInfo {
  /** How long no connection was listening, in ms: notifications sent then were missed. */
  readonly downMs: number;
  /** The node listening now (the primary at the time of the reconnect). */
  readonly node: string;
}

/**
 * Options of `cluster.listen()`.
 *
 * @example
 * ```ts
 * import type { ListenOptions } from "@codelab/dbx";
 *
 * const options: ListenOptions = {
 *   onReconnect: ({ downMs }) => console.warn(`missed up to ${downMs} ms of notifications`),
 *   timeoutMs: 10_000,
 * };
 * ```
 */
export interface ListenOptions {
  /**
   * Called (once per reconnect) when LISTEN is active again after the
   * connection was lost: a server restart, a failover, a network cut.
   * Notifications sent in between were missed; a throwing callback is logged.
   * @default undefined
   */
  onReconnect?: ((info: ReconnectInfo) => void) | undefined;
  /**
   * Ends the subscription when it aborts (like `unlisten()`); aborting
   * while `listen()` is still connecting rejects it.
   * @default undefined
   */
  signal?: AbortSignal | undefined;
  /** Deadline in ms for the first LISTEN to be active (not for the subscription). @default undefined */
  timeoutMs?: number | undefined;
}

/**
 * A live LISTEN on a dedicated connection to the primary. Dispose of it with
 * `await using`, `unlisten()`, or by closing the cluster.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * await using sub = await cluster.listen("jobs", (payload) => console.log("job", payload));
 * console.log(sub.channel, sub.node);
 * ```
 */
export interface Subscription extends AsyncDisposable {
  /** The channel listened on. */
  readonly channel: string;
  /** The node whose connection listens now; `undefined` while reconnecting or after `unlisten()`. */
  readonly node: string | undefined;
  /**
   * Closes the dedicated connection and stops reconnecting. Every call
   * returns the same promise; it never rejects.
   *
   * @returns Resolves when the connection is closed and nothing is left running.
   */
  unlisten(): Promise<void>;
}

/** Longest channel name: PostgreSQL identifiers are at most 63 bytes (NAMEDATALEN - 1). */
const MAX_CHANNEL_BYTES = 63;

/**
 * Checks a channel name.
 *
 * @param method The public method, for the message.
 * @param channel Must be a non-empty string of at most 63 bytes.
 * @throws {TypeError} when it is not a string or empty.
 * @throws {RangeError} when it is longer than an identifier can be.
 */
function checkChannel(method: string, channel: unknown): asserts channel is string {
  if (typeof channel !== "string" || channel === "") {
    throw new TypeError(
      `Cannot run ${method}() as 'channel' must be a non-empty string: current value is ${
        describe(channel)
      }`,
    );
  }
  const bytes = new TextEncoder().encode(channel).length;
  if (bytes > MAX_CHANNEL_BYTES) {
    throw new RangeError(
      `Cannot run ${method}() as 'channel' must be at most ${MAX_CHANNEL_BYTES} bytes (a PostgreSQL identifier): current value is ${
        describe(channel)
      } (${bytes} bytes)`,
    );
  }
}

function checkListenOptions(options: unknown): void {
  checkCallOptions("listen", options);
  const onReconnect = (options as ListenOptions | undefined)?.onReconnect;
  if (onReconnect !== undefined && typeof onReconnect !== "function") {
    throw new TypeError(
      `Cannot run listen() as 'options.onReconnect' must be a function: current value is ${
        describe(onReconnect)
      }`,
    );
  }
}

/**
 * Opens a subscription: resolves once LISTEN is active on the primary.
 *
 * @param core The cluster's core.
 * @param channel The channel.
 * @param handler Called for each notification.
 * @param options Reconnect callback, signal and deadline.
 * @returns The subscription.
 */
export async function listen(
  core: ClusterCore,
  channel: string,
  handler: NotificationHandler,
  options: ListenOptions | undefined,
): Promise<Subscription> {
  core.d.assertOpen("listen");
  checkChannel("listen", channel);
  if (typeof handler !== "function") {
    throw new TypeError(
      `Cannot run listen() as 'handler' must be a function: current value is ${describe(handler)}`,
    );
  }
  checkListenOptions(options);
  const sub = new Listener(core.d, {
    resources: core.resources,
    channel,
    handler,
    onReconnect: options?.onReconnect,
  });
  try {
    await withCall(options, (signal) => sub.open(signal));
  } catch (err) {
    await sub.unlisten();
    // Closing the cluster ended the attempt: say so rather than "canceled".
    core.d.assertOpen("listen");
    throw err;
  }
  const signal = options?.signal;
  if (signal !== undefined) sub.endOn(signal);
  return sub;
}

/**
 * Sends a notification (`select pg_notify($1, $2)`) through the write path,
 * or in the ambient transaction (delivered when it commits).
 *
 * @param core The cluster's core.
 * @param channel The channel.
 * @param payload The payload.
 * @param options Signal and deadline.
 * @returns Resolves when the server accepted it.
 */
export async function notify(
  core: ClusterCore,
  channel: string,
  payload: string,
  options: QueryOptions | undefined,
): Promise<void> {
  checkChannel("notify", channel);
  if (typeof payload !== "string") {
    throw new TypeError(
      `Cannot run notify() as 'payload' must be a string: current value is ${describe(payload)}`,
    );
  }
  const sql = "select pg_notify($1, $2)";
  // In the ambient transaction when there is one (delivered when it commits).
  await core.statement("notify", false, sql, [channel, payload], options, toCommandResult);
}
