/**
 * The stream behind a {@linkcode ChangeSubscription}: a `replication:
 * "database"` connection to the primary running `START_REPLICATION ... LOGICAL`
 * (CopyBoth), found and waited for like a write (`retryOptions(d, "pin")`).
 *
 * Everything the server sends goes through one queue, in order: each change,
 * then its transaction's end LSN to acknowledge, and a keepalive's position
 * when no transaction is open. One loop empties it, calling the handler for a
 * change and acknowledging a position only when every change before it was
 * handled: exactly the end LSN, never + 1. Status updates carry it; they
 * answer reply requests and go out even while a full queue pauses the socket.
 * A lost connection, a node the checker no longer sees as the healthy primary,
 * or a handler that threw drops the queue and restarts from the acknowledged
 * position, on whatever node is primary then.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import type { Dispatcher } from "../call/dispatch.ts";
import { formatLsn } from "../call/route.ts";
import { isConnectionError } from "../failure.ts";
import type { Node } from "../node/node.ts";
import { discardClient } from "../node/pg_internals.ts";
import { type CopyBoth, startCopyBoth } from "../node/pg_copy_both.ts";
import { ChangeDecoder, type StreamStep } from "./change_decoder.ts";
import * as follow from "./follow_primary.ts";
import * as wire from "./pgoutput.ts";
import type {
  Change,
  ChangeHandler,
  ChangeReconnectInfo,
  ChangeSubscription,
} from "./subscribe.ts";

/** How often the stream reports a moved position and checks its node's role, in ms. */
const TICK_MS = 1_000;
/** How often a status update goes out when nothing else sends one (wal_sender_timeout is 60 s). */
const STATUS_INTERVAL_MS = 10_000;
/** Ticks in a row on which the checker saw another primary before the stream moves. */
const NOT_PRIMARY_TICKS = 2;
/** Queued changes above which the socket is paused, and below which it reads again. */
const HIGH_WATER = 2_000;
const LOW_WATER = 500;
/** How long close() waits for the server to end the copy before cutting the connection. */
const CLOSE_GRACE_MS = 2_000;
/** How long close() waits for the change in the handler before it closes regardless. */
const HANDLER_GRACE_MS = 5_000;

/** One replication connection. */
interface Conn {
  readonly client: pg.Client;
  readonly node: Node;
  readonly copy: CopyBoth;
  readonly decoder: ChangeDecoder;
  /** Why it is being cut on purpose, if it is. */
  cut?: "handler_failed" | "unreadable" | "not_primary" | "closed";
  /** Ticks in a row on which the checker did not see its node as the healthy primary. */
  notPrimary: number;
}

/** A change to hand over, or a position to acknowledge once everything before it was. */
type Item =
  | { readonly conn: Conn; readonly change: Change }
  | { readonly conn: Conn; readonly ack: bigint };

/** What a {@linkcode ChangeStream} is for. */
export interface ChangeStreamParts {
  readonly resources: Set<AsyncDisposable>;
  readonly publication: string;
  readonly slot: string;
  readonly handler: ChangeHandler;
  readonly onReconnect: ((info: ChangeReconnectInfo) => void) | undefined;
  /** Where to start: the slot's confirmed position, or `from` when later. */
  readonly position: bigint;
}

/** The subscription behind {@linkcode ChangeSubscription}. Internal. */
export class ChangeStream implements ChangeSubscription {
  readonly publication: string;
  readonly slot: string;
  readonly #d: Dispatcher;
  readonly #parts: ChangeStreamParts;
  readonly #parserOf: (oid: number) => (text: string) => unknown;
  readonly #closed = new AbortController();
  #acked: bigint;
  /** Where the current connection's stream started. */
  #startedAt = 0n;
  /** The furthest WAL position the server said it sent. */
  #received = 0n;
  #current: Conn | undefined;
  #queue: Item[] = [];
  #draining: Promise<void> | undefined;
  #failures = 0;
  #reported = -1n;
  #reportedAt = 0;
  #ticker: ReturnType<typeof setInterval> | undefined;
  /** Restarts and connections until they ended: close() waits for them. */
  readonly #tasks = new follow.Tasks();
  #closing: Promise<void> | undefined;
  #stopSignal: (() => void) | undefined;

  /**
   * Registers the subscription with the cluster; nothing connects before {@linkcode open}.
   *
   * @param d The cluster's statement path.
   * @param parts Publication, slot, handler, start position and the cluster's resources.
   */
  constructor(d: Dispatcher, parts: ChangeStreamParts) {
    this.#d = d;
    this.#parts = parts;
    this.publication = parts.publication;
    this.slot = parts.slot;
    this.#acked = parts.position;
    const types = d.config.types ?? pg.types;
    this.#parserOf = (oid) => types.getTypeParser(oid, "text") as (text: string) => unknown;
    parts.resources.add(this);
  }

  get position(): string {
    return formatLsn(this.#acked);
  }

  get node(): string | undefined {
    return this.#current?.node.name;
  }

  /**
   * Connects to the primary and starts streaming, with the statement path's retries and
   * its wait for a primary.
   *
   * @param signal The call's signal (the first open), else none.
   * @returns Resolves once the server streams.
   */
  open(signal: AbortSignal | undefined): Promise<void> {
    const closed = this.#closed.signal;
    const s = signal === undefined ? closed : AbortSignal.any([signal, closed]);
    const what = `START_REPLICATION SLOT ${this.slot} LOGICAL`;
    return follow.openOnPrimary(this.#d, what, s, (node, s) => this.#attach(node, s));
  }

  /**
   * Ends the subscription when `signal` aborts.
   *
   * @param signal The caller's signal.
   */
  endOn(signal: AbortSignal): void {
    this.#stopSignal = follow.endOnAbort(signal, () => void this.close());
  }

  /** One attempt on `node`: connect, make sure it is the primary, start streaming. */
  async #attach(node: Node, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const client = node.dedicatedClient({ replication: "database" });
    let lost: unknown;
    client.on("error", (err) => lost ??= err);
    let conn: Conn | undefined;
    this.#tasks.track(
      new Promise<void>((resolve) => client.once("end", () => resolve())).then(() => {
        if (conn !== undefined) this.#dropped(conn, lost);
      }),
    );
    const onAbort = () => void discardClient(client);
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      await client.connect();
      // The topology may be stale: a replica's copy of the slot cannot be streamed.
      const { rows } = await client.query("select pg_is_in_recovery() as r");
      if ((rows[0] as { r?: unknown } | undefined)?.r !== false) {
        throw Object.assign(new Error(`node ${node.name} is in recovery, not the primary`), {
          code: "25006",
        });
      }
      const from = this.#startedAt = this.#acked;
      const copy = startCopyBoth(
        client,
        wire.startReplication(this.slot, this.publication, from),
        (chunk) => this.#receive(conn!, chunk),
      );
      conn = { client, node, copy, decoder: new ChangeDecoder(this.#parserOf), notPrimary: 0 };
      // Current before the server's first message: it may come with the CopyBothResponse.
      this.#current = conn;
      await copy.started;
    } catch (err) {
      if (conn !== undefined && this.#current === conn) this.#current = undefined;
      conn = undefined;
      discardClient(client);
      throw err;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
    const live = conn;
    // close() may have run after the stream started: it saw no connection to end.
    if (signal.aborted) {
      live.cut = "closed";
      if (this.#current === live) this.#current = undefined;
      discardClient(client);
      signal.throwIfAborted();
    }
    // A copy the server ended by itself leaves an idle connection: cut it to reconnect.
    void live.copy.done.then(() => {
      if (this.#current === live) discardClient(client);
    }, () => {});
    clearInterval(this.#ticker);
    this.#reportedAt = performance.now();
    this.#ticker = setInterval(() => this.#tick(live), TICK_MS);
  }

  /**
   * Reports a moved position (and every {@linkcode STATUS_INTERVAL_MS} in any case), and
   * leaves a node the checker no longer sees as the healthy primary: a hung host or a cut
   * network never closes the socket, and a failover may leave the old primary running.
   */
  #tick(conn: Conn): void {
    this.#report(conn, performance.now() - this.#reportedAt >= STATUS_INTERVAL_MS);
    if (this.#d.checker.topology.primary === conn.node) {
      conn.notPrimary = 0;
    } else if (++conn.notPrimary >= NOT_PRIMARY_TICKS && conn.cut === undefined) {
      conn.cut = "not_primary";
      discardClient(conn.client);
    }
  }

  /** One CopyData message of `conn`, in order; never throws (pg calls it). */
  #receive(conn: Conn, chunk: Uint8Array): void {
    if (conn.cut !== undefined) return;
    let step: StreamStep;
    try {
      step = conn.decoder.read(chunk);
    } catch (error) {
      this.#d.observer.log("error", "dbx: unreadable change stream message; restarting", {
        slot: this.slot,
        error: error instanceof Error ? error.message : String(error),
      });
      conn.cut = "unreadable";
      discardClient(conn.client);
      return;
    }
    if (step.at > this.#received) this.#received = step.at;
    for (const change of step.changes) this.#queue.push({ conn, change });
    if (step.ack !== undefined) this.#queue.push({ conn, ack: step.ack });
    if (step.replyRequested) this.#report(conn, true);
    if (this.#queue.length > HIGH_WATER) conn.copy.pause();
    this.#draining ??= this.#drain();
  }

  /**
   * Hands the queue over in order: changes to the handler, positions to the server. Items
   * of a connection that was cut wait for nothing: the next one sends them again.
   */
  async #drain(): Promise<void> {
    // Never finishes within the call: `#draining` is set from its result, then cleared here.
    await undefined;
    for (let item = this.#queue.shift(); item !== undefined; item = this.#queue.shift()) {
      const { conn } = item;
      if (conn.cut !== undefined) continue;
      // Once closing, only positions whose changes were all handled still count.
      if (this.#closed.signal.aborted && !("ack" in item)) {
        this.#queue = [];
        break;
      }
      if (this.#queue.length < LOW_WATER) conn.copy.resume();
      if ("ack" in item) {
        if (item.ack > this.#acked) {
          this.#failures = 0;
          this.#acked = item.ack;
          if (this.#queue.length === 0) this.#report(conn, false);
        }
        continue;
      }
      try {
        await this.#parts.handler(item.change);
      } catch (error) {
        if (conn.cut !== undefined) continue;
        this.#failures++;
        const { xid, commitLsn } = item.change;
        const fields = { slot: this.slot, xid, commitLsn, failures: this.#failures, error };
        const message = "dbx: change handler threw; its transaction is delivered again";
        this.#d.observer.log("error", message, fields);
        conn.cut = "handler_failed";
        discardClient(conn.client);
      }
    }
    this.#draining = undefined;
  }

  /** Sends the acknowledged position (always when `force`, else when it moved). */
  #report(conn: Conn, force: boolean): void {
    if (conn.cut !== undefined || this.#current !== conn) return;
    if (!force && this.#acked === this.#reported) return;
    this.#reported = this.#acked;
    this.#reportedAt = performance.now();
    try {
      conn.copy.send(wire.encodeStatusUpdate(this.#acked, this.#received));
    } catch {
      // The connection is going away; the next one starts from the acknowledged position.
    }
  }

  /** The stream's connection ended: unless on purpose, restart from the acknowledged position. */
  #dropped(conn: Conn, err: unknown): void {
    const wasCurrent = this.#current === conn;
    if (wasCurrent) {
      this.#current = undefined;
      clearInterval(this.#ticker);
    }
    if (!wasCurrent || conn.cut === "closed" || this.#closed.signal.aborted) return;
    this.#queue = [];
    const reason = conn.cut === "handler_failed" ? "handler_failed" : "connection_lost";
    if (reason === "connection_lost") {
      this.#d.observer.log("warn", "dbx: change stream connection lost; resuming", {
        slot: this.slot,
        node: conn.node.name,
        position: this.position,
        notPrimary: conn.cut === "not_primary",
        error: err instanceof Error ? err.message : err === undefined ? "connection ended" : err,
      });
      const unexpected = conn.cut === undefined && (err === undefined || isConnectionError(err));
      if (unexpected) this.#d.checker.recheck(conn.node);
    }
    this.#tasks.track(this.#restart(conn.node.name, reason, performance.now()));
  }

  /** Reconnects until the stream runs again or the subscription is closed. */
  async #restart(
    previousNode: string,
    reason: ChangeReconnectInfo["reason"],
    downAt: number,
  ): Promise<void> {
    const closed = this.#closed.signal;
    try {
      // After a handler failure, back off before the transaction comes again.
      if (reason === "handler_failed") await follow.reconnectPause(this.#d, this.#failures, closed);
    } catch {
      return; // closed while waiting
    }
    // The change in the handler finishes first, so the restart starts after what it acks.
    while (this.#draining !== undefined) await this.#draining;
    const what = "dbx: change stream could not resume yet";
    const fields = { slot: this.slot };
    if (!await follow.reconnect(this.#d, what, fields, closed, () => this.open(undefined))) return;
    const node = this.#current?.node.name;
    if (node === undefined) return;
    const info = {
      downMs: Math.round(performance.now() - downAt),
      node,
      previousNode,
      position: formatLsn(this.#startedAt),
      reason,
    };
    this.#d.observer.log("info", "dbx: change stream resumed", { slot: this.slot, ...info });
    try {
      this.#parts.onReconnect?.(info);
    } catch (error) {
      this.#d.observer.log("error", "dbx: onReconnect threw", { slot: this.slot, error });
    }
  }

  /**
   * Closes the stream (same promise every call): the change being handled finishes (up to
   * 5 s), its position is acknowledged, then the server ends the copy.
   *
   * @returns Resolves when nothing of the subscription is left running.
   */
  close(): Promise<void> {
    return this.#closing ??= this.#close();
  }

  async #close(): Promise<void> {
    this.#closed.abort();
    this.#stopSignal?.();
    this.#parts.resources.delete(this);
    // A handler that never settles must not keep close() (and the cluster's) waiting.
    await follow.settled(() => this.#draining, HANDLER_GRACE_MS);
    const conn = this.#current;
    if (conn !== undefined) {
      this.#report(conn, true);
      conn.cut = "closed";
      this.#current = undefined;
      clearInterval(this.#ticker);
      try {
        conn.copy.end();
      } catch {
        // The connection was already gone.
      }
      await follow.settled(() => conn.copy.done.catch(() => {}), CLOSE_GRACE_MS, true);
      discardClient(conn.client);
    }
    await this.#tasks.idle();
  }

  /** Same as {@linkcode close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
