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

// @ts-types="@types/pg"
import type pg from "pg";
import { discardClient } from "./_pg.ts";
import type { ClusterInternals } from "./cluster_base.ts";
import { type Dispatcher, retryOptions, statement } from "./dispatch.ts";
import type { QueryOptions } from "./executor.ts";
import { isConnectionError } from "./failure.ts";
import type { Node } from "./node.ts";
import { backoffDelay, delay, withRetry } from "./retry.ts";
import { withCall } from "./signal.ts";
import { checkCallOptions, describe } from "./validate.ts";

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
  onReconnect?: (info: ReconnectInfo) => void;
  /**
   * Ends the subscription when it aborts (like `unlisten()`); aborting
   * while `listen()` is still connecting rejects it.
   * @default undefined
   */
  signal?: AbortSignal;
  /** Deadline in ms for the first LISTEN to be active (not for the subscription). @default undefined */
  timeoutMs?: number;
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

/** Floor of the wait between two rounds of reconnect attempts, in ms: never a busy loop. */
const MIN_RECONNECT_DELAY_MS = 100;

/** Cap of the wait between two rounds of reconnect attempts, in ms. */
const MAX_RECONNECT_DELAY_MS = 5_000;

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

/** A quoted identifier: `"` doubled, so any channel name is one identifier. */
function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/**
 * Opens a subscription: resolves once LISTEN is active on the primary.
 *
 * @param i The cluster's internals.
 * @param channel The channel.
 * @param handler Called for each notification.
 * @param options Reconnect callback, signal and deadline.
 * @returns The subscription.
 */
export async function listen(
  i: ClusterInternals,
  channel: string,
  handler: NotificationHandler,
  options: ListenOptions | undefined,
): Promise<Subscription> {
  i.d.assertOpen();
  checkChannel("listen", channel);
  if (typeof handler !== "function") {
    throw new TypeError(
      `Cannot run listen() as 'handler' must be a function: current value is ${describe(handler)}`,
    );
  }
  checkListenOptions(options);
  const sub = new Listener(i.d, i.resources, channel, handler, options?.onReconnect);
  try {
    await withCall(options, (signal) => sub.open(signal));
  } catch (err) {
    await sub.unlisten();
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
 * @param i The cluster's internals.
 * @param channel The channel.
 * @param payload The payload.
 * @param options Signal and deadline.
 * @returns Resolves when the server accepted it.
 */
export async function notify(
  i: ClusterInternals,
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
  const tx = i.ambient();
  if (tx !== undefined) await tx.exec(sql, [channel, payload], options);
  else await statement(i.d, "notify", false, sql, [channel, payload], options);
}

/** The subscription behind {@linkcode Subscription}. */
class Listener implements Subscription {
  readonly channel: string;
  readonly #d: Dispatcher;
  readonly #resources: Set<AsyncDisposable>;
  readonly #handler: NotificationHandler;
  readonly #onReconnect: ((info: ReconnectInfo) => void) | undefined;
  readonly #sql: string;
  /** Aborted by unlisten(): ends connecting, reconnecting and waiting. */
  readonly #closed = new AbortController();
  /** The listening connection and its node, while there is one. */
  #current: { client: pg.Client; node: Node } | undefined;
  /** Every client opened, until its connection ended. */
  readonly #ending = new Set<Promise<void>>();
  /** Reconnects and connection checks in flight: unlisten() waits for them. */
  readonly #tasks = new Set<Promise<void>>();
  #watchdog: ReturnType<typeof setTimeout> | undefined;
  #closing: Promise<void> | undefined;
  #stopSignal: (() => void) | undefined;

  constructor(
    d: Dispatcher,
    resources: Set<AsyncDisposable>,
    channel: string,
    handler: NotificationHandler,
    onReconnect: ((info: ReconnectInfo) => void) | undefined,
  ) {
    this.#d = d;
    this.#resources = resources;
    this.channel = channel;
    this.#handler = handler;
    this.#onReconnect = onReconnect;
    this.#sql = `LISTEN ${quoteIdent(channel)}`;
    resources.add(this);
  }

  get node(): string | undefined {
    return this.#current?.node.name;
  }

  /**
   * Connects to the primary and LISTENs, with the statement path's retries.
   *
   * @param signal The call's signal (the first open), else none.
   */
  open(signal: AbortSignal | undefined): Promise<void> {
    const closed = this.#closed.signal;
    const s = signal === undefined ? closed : AbortSignal.any([signal, closed]);
    const d = this.#d;
    return withRetry(
      (node, attempt) =>
        d.runner.run(
          node,
          { sql: this.#sql, argCount: 0, attempt },
          s,
          () => this.#attach(node, s),
        ),
      retryOptions(d, "pin", undefined, s),
    );
  }

  /** Ends the subscription when `signal` aborts. */
  endOn(signal: AbortSignal): void {
    const onAbort = () => void this.unlisten();
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    this.#stopSignal = () => signal.removeEventListener("abort", onAbort);
  }

  /** One connection attempt on `node`: connect, LISTEN, then watch the connection. */
  async #attach(node: Node, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const client = node.dedicatedClient();
    let lost: unknown;
    // Without a listener a lost connection would be an unhandled 'error'.
    client.on("error", (err) => lost ??= err);
    const ended = new Promise<void>((resolve) => client.once("end", () => resolve()));
    this.#ending.add(ended);
    void ended.then(() => {
      this.#ending.delete(ended);
      this.#dropped(client, node, lost);
    });
    const onAbort = () => void discardClient(client);
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      await client.connect();
      await client.query(this.#sql);
    } catch (err) {
      discardClient(client);
      throw err;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
    client.on("notification", (msg) => {
      if (msg.channel === this.channel) this.#deliver(msg.payload ?? "", msg.processId);
    });
    this.#current = { client, node };
    this.#watch();
  }

  #deliver(payload: string, processId: number): void {
    const report = (error: unknown) =>
      this.#d.observer.log("error", "dbx: notification handler threw", {
        channel: this.channel,
        error,
      });
    try {
      const result = this.#handler(payload, { channel: this.channel, processId });
      if (result instanceof Promise) result.catch(report);
    } catch (error) {
      report(error);
    }
  }

  /** The listening connection ended: unless on purpose, reconnect. */
  #dropped(client: pg.Client, node: Node, err: unknown): void {
    if (this.#current?.client !== client) return;
    this.#current = undefined;
    clearTimeout(this.#watchdog);
    if (this.#closed.signal.aborted) return;
    const downAt = performance.now();
    this.#d.observer.log("warn", "dbx: listen connection lost; reconnecting", {
      channel: this.channel,
      node: node.name,
      error: err instanceof Error ? err.message : err === undefined ? "connection ended" : err,
    });
    // As for a pooled connection that died: the probe decides about the node.
    if (err === undefined || isConnectionError(err)) this.#d.checker.recheck(node);
    this.#track(this.#reconnect(downAt));
  }

  #track(task: Promise<void>): void {
    const tracked = task.finally(() => this.#tasks.delete(tracked));
    this.#tasks.add(tracked);
  }

  /** Reconnects until LISTEN is active again or the subscription is closed. */
  async #reconnect(downAt: number): Promise<void> {
    const closed = this.#closed.signal;
    for (let round = 1;; round++) {
      try {
        await this.open(undefined);
        break;
      } catch (error) {
        if (closed.aborted) return;
        this.#d.observer.log("warn", "dbx: listen could not reconnect yet", {
          channel: this.channel,
          error: error instanceof Error ? error.message : String(error),
        });
      }
      const { baseDelayMs } = this.#d.config.retry;
      const wait = MIN_RECONNECT_DELAY_MS +
        backoffDelay(round, { baseDelayMs, maxDelayMs: MAX_RECONNECT_DELAY_MS });
      try {
        await delay(wait, closed);
      } catch {
        return;
      }
    }
    const node = this.#current?.node.name;
    if (node === undefined) return;
    const downMs = Math.round(performance.now() - downAt);
    this.#d.observer.log("info", "dbx: listening again", { channel: this.channel, node, downMs });
    try {
      this.#onReconnect?.({ downMs, node });
    } catch (error) {
      this.#d.observer.log("error", "dbx: onReconnect threw", { channel: this.channel, error });
    }
  }

  /**
   * Every health-check interval, while the checker no longer sees this
   * connection's node as the healthy primary, asks the connection itself:
   * a hung host or a cut network never closes a socket, and notifications
   * would silently stop.
   */
  #watch(): void {
    const { intervalMs, timeoutMs } = this.#d.config.healthCheck;
    this.#watchdog = setTimeout(() => {
      const current = this.#current;
      if (current === undefined) return;
      if (this.#d.checker.topology.primary === current.node) return this.#watch();
      this.#track(
        this.#answers(current.client, timeoutMs).then((ok) => {
          if (this.#current !== current) return;
          if (ok) this.#watch();
          else discardClient(current.client);
        }),
      );
    }, intervalMs);
  }

  /** Whether the connection answers, as a primary, within `timeoutMs`. */
  async #answers(client: pg.Client, timeoutMs: number): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<false>((resolve) => {
      timer = setTimeout(resolve, timeoutMs, false);
    });
    const answer = client.query("select pg_is_in_recovery() as r").then(
      (res) => (res.rows[0] as { r: boolean } | undefined)?.r === false,
      () => false,
    );
    try {
      return await Promise.race([answer, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  unlisten(): Promise<void> {
    return this.#closing ??= this.#close();
  }

  async #close(): Promise<void> {
    this.#closed.abort();
    this.#stopSignal?.();
    clearTimeout(this.#watchdog);
    this.#resources.delete(this);
    const current = this.#current;
    this.#current = undefined;
    if (current !== undefined) discardClient(current.client);
    while (this.#tasks.size > 0 || this.#ending.size > 0) {
      await Promise.all([...this.#tasks, ...this.#ending]);
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.unlisten();
  }
}
