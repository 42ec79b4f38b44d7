/**
 * The connection behind a {@linkcode Subscription}: connect to the primary
 * and LISTEN (with the statement path's retries and its wait for a primary),
 * reconnect with backoff after a loss and report the gap, watch a connection
 * the checker has doubts about, and close without leaving anything running.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { discardClient } from "../node/pg_internals.ts";
import type { Dispatcher } from "../call/dispatch.ts";
import { isConnectionError } from "../failure.ts";
import type { NotificationHandler, ReconnectInfo, Subscription } from "./listen.ts";
import type { Node } from "../node/node.ts";
import { endOnAbort, openOnPrimary, reconnect, Tasks } from "./follow_primary.ts";

/** A quoted identifier: `"` doubled, so any channel name is one identifier. */
function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** What a {@linkcode Listener} is for. */
export interface ListenerParts {
  /** The cluster's set of long-lived resources, which close() disposes of. */
  readonly resources: Set<AsyncDisposable>;
  /** The channel. */
  readonly channel: string;
  /** Called for each notification. */
  readonly handler: NotificationHandler;
  /** Called after each reconnect. */
  readonly onReconnect: ((info: ReconnectInfo) => void) | undefined;
}

/** The subscription behind {@linkcode Subscription}. Internal. */
export class Listener implements Subscription {
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
  /** Reconnects, connection checks and clients until they ended: unlisten() waits for them. */
  readonly #tasks = new Tasks();
  #watchdog: ReturnType<typeof setTimeout> | undefined;
  #closing: Promise<void> | undefined;
  #stopSignal: (() => void) | undefined;

  /**
   * Registers the subscription with the cluster; nothing connects before {@linkcode open}.
   *
   * @param d The cluster's statement path.
   * @param parts Channel, handler, reconnect callback and the cluster's resources.
   */
  constructor(d: Dispatcher, parts: ListenerParts) {
    this.#d = d;
    this.#resources = parts.resources;
    this.channel = parts.channel;
    this.#handler = parts.handler;
    this.#onReconnect = parts.onReconnect;
    this.#sql = `LISTEN ${quoteIdent(parts.channel)}`;
    parts.resources.add(this);
  }

  /** The node whose connection listens now. */
  get node(): string | undefined {
    return this.#current?.node.name;
  }

  /**
   * Connects to the primary and LISTENs, with the statement path's retries.
   *
   * @param signal The call's signal (the first open), else none.
   * @returns Resolves once LISTEN is active.
   */
  open(signal: AbortSignal | undefined): Promise<void> {
    const closed = this.#closed.signal;
    const s = signal === undefined ? closed : AbortSignal.any([signal, closed]);
    return openOnPrimary(this.#d, this.#sql, s, (node, s) => this.#attach(node, s));
  }

  /**
   * Ends the subscription when `signal` aborts.
   *
   * @param signal The caller's signal.
   */
  endOn(signal: AbortSignal): void {
    this.#stopSignal = endOnAbort(signal, () => void this.unlisten());
  }

  /** One connection attempt on `node`: connect, LISTEN, then watch the connection. */
  async #attach(node: Node, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const client = node.dedicatedClient();
    let lost: unknown;
    // Without a listener a lost connection would be an unhandled 'error'.
    client.on("error", (err) => lost ??= err);
    this.#tasks.track(
      new Promise<void>((resolve) => client.once("end", () => resolve())).then(() =>
        this.#dropped(client, node, lost)
      ),
    );
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
    // unlisten() may have run after LISTEN was answered: it saw no connection to close.
    if (signal.aborted) {
      discardClient(client);
      signal.throwIfAborted();
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
    this.#tasks.track(this.#reconnect(downAt));
  }

  /** Reconnects until LISTEN is active again or the subscription is closed. */
  async #reconnect(downAt: number): Promise<void> {
    const fields = { channel: this.channel };
    const what = "dbx: listen could not reconnect yet";
    if (!await reconnect(this.#d, what, fields, this.#closed.signal, () => this.open(undefined))) {
      return;
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
      this.#tasks.track(
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

  /**
   * Closes the connection and stops reconnecting (same promise every call).
   *
   * @returns Resolves when nothing of the subscription is left running.
   */
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
    await this.#tasks.idle();
  }

  /** Same as {@linkcode unlisten}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.unlisten();
  }
}
