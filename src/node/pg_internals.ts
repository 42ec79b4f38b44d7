/**
 * The few node-postgres internals dbx has to touch, in one place: the
 * CancelRequest (pg has no public cancel), the socket under a client (to cut
 * a connection to a hung host), the Terminate message, pg's message for a
 * client that refuses statements, the `end` of a pooled client (pg-pool
 * clears its per-client lifetime timer only then), pg-pool's queue of
 * callers waiting for a client (one that gives up must leave it), and the
 * password of a client (pg lets a URL's replace the option), a client's
 * queues of queries (`fifo.ts`). The CopyBoth mode of
 * replication connections: `pg_copy_both.ts`.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import process from "node:process";
import { Buffer } from "node:buffer";
import { markNotSent } from "../failure.ts";
import type { PgTarget } from "../config/tls.ts";
import { forgetDescribed } from "./lean_query.ts";
import { Fifo } from "./fifo.ts";

/** Longest wait for a CancelRequest to be delivered. */
const CANCEL_TIMEOUT_MS = 2_000;

/** The protocol's Terminate message ('X', length 4). */
const TERMINATE = new Uint8Array([0x58, 0, 0, 0, 4]);

/** The parts of pg's Client that its types leave out. */
interface RawClient {
  password: unknown;
  processID: number | null;
  secretKey: number | null;
  _ended: boolean;
  _connected: boolean;
  _queryable: boolean;
  readyForQuery: boolean;
  _ending: boolean;
  _activeQuery: unknown;
  _queryQueue: { length: number };
  _sentQueryQueue: { length: number };
  connection: {
    parsedStatements: Record<string, string>;
    submittedNamedStatements: Record<string, string>;
    once(event: "end" | "error", listener: () => void): void;
    stream: {
      write(data: Uint8Array, cb: () => void): void;
      destroy(): void;
    };
  };
}

const raw = (client: pg.ClientBase): RawClient => client as unknown as RawClient;

/** Connections on which a cancel was sent that no statement consumed. */
const strayCancel = new WeakSet<object>();

/**
 * Cancels the statement running on a client's backend by sending a
 * CancelRequest on a fresh connection, as libpq's PQcancel does. Resolves once
 * the server closed the cancel connection (or after {@linkcode CANCEL_TIMEOUT_MS}).
 */
async function sendCancel(host: string, port: number, client: pg.ClientBase): Promise<void> {
  const { processID, secretKey } = raw(client);
  if (processID === null || secretKey === null) return;
  const { connect } = await import("node:net");
  const message = new DataView(new ArrayBuffer(16));
  message.setInt32(0, 16);
  message.setInt32(4, 80877102); // CancelRequest code: 1234 << 16 | 5678
  message.setInt32(8, processID);
  message.setInt32(12, secretKey);
  await new Promise<void>((resolve) => {
    const socket = connect({ host, port }, () => {
      // Written, not ended: as libpq does, the server (or a pooler) closes
      // first. PgBouncer 1.18 exits on a cancel connection that the client
      // closes while the cancel is still being forwarded.
      socket.write(new Uint8Array(message.buffer));
    });
    // A hung host would keep this connection (and the caller) waiting forever.
    const timer = setTimeout(() => socket.destroy(), CANCEL_TIMEOUT_MS);
    // The server never answers a CancelRequest; it just closes. An error only
    // means the cancel could not be delivered; the statement's own outcome
    // tells the caller what happened.
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Runs `work` (statements on `client`) so that aborting `signal` cancels what
 * runs on the server. A cancel that no statement consumed (the work ended some
 * other way than 57014) could hit a later statement: the connection is then
 * flagged so {@linkcode reusable} refuses it.
 *
 * @param client The connection the work runs on.
 * @param address Where to send the CancelRequest.
 * @param signal Cancels the work on the server.
 * @param work The statements.
 * @returns What `work` returned.
 */
export async function cancellable<R>(
  client: pg.ClientBase,
  address: { readonly host: string; readonly port: number },
  signal: AbortSignal | undefined,
  work: () => Promise<R>,
): Promise<R> {
  let cancel: Promise<void> | undefined;
  const onAbort = () => {
    cancel = sendCancel(address.host, address.port, client);
  };
  try {
    if (signal === undefined) return await work();
    if (signal.aborted) throw markNotSent(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      return await work();
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  } catch (err) {
    // A cancel is consumed by the statement only when it failed with 57014.
    if (cancel !== undefined && (err as { code?: unknown }).code === "57014") cancel = undefined;
    throw err;
  } finally {
    if (cancel !== undefined) {
      strayCancel.add(client);
      await cancel;
    }
  }
}

/**
 * Cancels whatever runs on a client's backend now (a CancelRequest, as
 * {@linkcode cancellable} sends on abort), for a cancel asked for from
 * outside the statement (Kysely's `inflightQueryAbortStrategy`). The
 * connection is flagged so {@linkcode connectionIdle} refuses it: the cancel
 * could reach a later statement.
 *
 * @param client The connection.
 * @param address Where to send the CancelRequest.
 * @returns Resolves once the request was delivered (or could not be).
 */
export function cancelBackend(
  client: pg.ClientBase,
  address: { readonly host: string; readonly port: number },
): Promise<void> {
  strayCancel.add(client);
  return sendCancel(address.host, address.port, client);
}

/**
 * Whether a client's connection has ended (pg emitted `end`, or is about to).
 *
 * @param client The client.
 * @returns `true` once its socket closed.
 */
export function clientEnded(client: pg.ClientBase): boolean {
  return raw(client)._ended;
}

/**
 * Whether a leased connection is idle: nothing sent and unanswered, nothing
 * queued (pg's `getTransactionStatus()` is the last ReadyForQuery's, not the
 * state of a statement still running), outside any transaction, usable, and
 * with no cancel in flight.
 *
 * @param client A pooled connection.
 * @returns `true` when it can serve the next caller as it is.
 */
export function connectionIdle(client: pg.ClientBase): boolean {
  const c = raw(client);
  return c._activeQuery == null && c._queryQueue.length === 0 && c._queryable && !c._ending &&
    client.getTransactionStatus() === "I" && !strayCancel.has(client);
}

/** A socket's writes gathered in the current tick. */
interface Gathered {
  /** The first chunk written since the tick began. */
  first: Uint8Array | undefined;
  /** The chunks after it, in order, once there are some (most ticks write one). */
  more: Uint8Array[] | undefined;
  /** Whether the tick's writes are being gathered now. */
  open: boolean;
  /** The socket's own write. */
  readonly write: (data: Uint8Array, encoding?: unknown, callback?: unknown) => boolean;
}

/** Sends what a socket gathered, as one buffer. */
function flushGathered(g: Gathered): void {
  g.open = false;
  const { first, more } = g;
  if (first === undefined) return;
  g.first = g.more = undefined;
  g.write(more === undefined ? first : Buffer.concat([first, ...more]));
}

/**
 * Gathers a client's writes until the current tick (its microtasks
 * included) ends, then sends them in one buffer with one socket write:
 * statements of many callers that are pipelined in the same tick cost one
 * write instead of one each. Corking the socket would do the same with a
 * stream request per message, each handled again when uncorked. A write
 * with more arguments (pg's Terminate, with a callback) first sends what was
 * gathered, in order.
 * A TLS socket, which pg puts in place while connecting, gets its own.
 *
 * @param client A pipelined client, connected (once per client).
 * @returns Starts gathering the client's writes until the current tick ends
 *   (nothing when they are gathered already): call it before each statement.
 */
export function tickGatherer(client: pg.ClientBase): () => void {
  const stream = raw(client).connection.stream as unknown as {
    write: (data: Uint8Array, encoding?: unknown, callback?: unknown) => boolean;
  };
  const tick: Gathered = {
    first: undefined,
    more: undefined,
    open: false,
    write: stream.write.bind(stream),
  };
  stream.write = (data: Uint8Array, encoding?: unknown, callback?: unknown): boolean => {
    if (tick.open && encoding === undefined && callback === undefined) {
      if (tick.first === undefined) tick.first = data;
      else (tick.more ??= []).push(data);
      return true;
    }
    flushGathered(tick);
    return tick.write(data, encoding, callback);
  };
  const flush = () => flushGathered(tick);
  return () => {
    if (tick.open) return;
    tick.open = true;
    // After every microtask queued so far (Node and Deno run the tick queue
    // once the microtasks are drained), before any I/O.
    process.nextTick(flush);
  };
}

/**
 * Gives a client, not used yet, queues of queries that keep their storage
 * when they empty ({@linkcode Fifo}): pg's arrays got a new backing store
 * for each statement on V8, where each empties after every statement at
 * light load (the queue of queries to send empties after every one at any load).
 *
 * @param client A client that has sent nothing.
 */
export function keepQueues(client: pg.ClientBase): void {
  const c = raw(client);
  c._queryQueue = new Fifo();
  c._sentQueryQueue = new Fifo();
}

/**
 * Gives a client, once built, its node's configured password: pg reads a
 * connection string's password over the `password` option (an empty one
 * when the URL has none), so the option cannot carry it. pg asks for it
 * only when the server wants a password. When asking fails, pg fails the
 * connect but leaves the socket open, the server waiting for a password
 * until its `authentication_timeout`: the socket is cut once pg has
 * reported the failure (its own listener runs first, so the connect fails
 * with the password's error, not with "Connection terminated").
 *
 * @param client A client not connected yet.
 * @param target Its node's target; nothing changes when it has no password.
 */
export function usePassword(client: pg.ClientBase, target: PgTarget): void {
  const ask = target.password;
  if (ask === undefined) return;
  const c = raw(client);
  // pg made `password` a non-enumerable property: printing a client shows none.
  c.password = async () => {
    try {
      return await ask();
    } catch (err) {
      c.connection.once("error", () => c.connection.stream.destroy());
      throw err;
    }
  };
}

/**
 * Cuts a client's socket now: its statements fail with a connection error.
 *
 * @param client The client.
 */
export function destroySocket(client: pg.ClientBase): void {
  raw(client).connection.stream.destroy();
}

/**
 * Closes a client without waiting on the server: an idle one is sent
 * Terminate, then its socket is destroyed; a busy or half-open one is cut.
 *
 * @param client The client.
 * @returns Resolves when its connection ended; `undefined` when it already had.
 */
export function discardClient(client: pg.ClientBase): Promise<void> | undefined {
  const c = raw(client);
  if (c._ended) return undefined;
  const conn = c.connection;
  const ended = new Promise<void>((resolve) => conn.once("end", resolve));
  const idle = c._connected && c._queryable && c.readyForQuery === true;
  if (idle) conn.stream.write(TERMINATE, () => conn.stream.destroy());
  else conn.stream.destroy();
  return ended;
}

/**
 * Resolves when a client emitted `end`: pg emits it a tick after its socket
 * closed, and pg-pool clears the client's `maxLifetimeSeconds` timer only
 * then, so a pool's `end()` resolving is not yet "nothing left".
 *
 * @param client A client of a pool, just connected.
 * @returns Resolves on the client's `end` event.
 */
export function clientEnd(client: pg.ClientBase): Promise<void> {
  return new Promise((resolve) => client.once("end", () => resolve()));
}

/**
 * Makes a client forget that it prepared `name`, so its next use parses it
 * again (the server lost it, or it must be re-planned under a new name).
 *
 * @param client The client.
 * @param name The statement name.
 */
export function forgetStatement(client: pg.ClientBase, name: string): void {
  const { connection } = raw(client);
  delete connection.parsedStatements[name];
  delete connection.submittedNamedStatements[name];
  forgetDescribed(connection, name);
}

/**
 * Makes a client forget every statement it prepared (the session ran
 * `DEALLOCATE ALL` or `DISCARD ALL`).
 *
 * @param client The client.
 */
export function forgetAllStatements(client: pg.ClientBase): void {
  const { connection } = raw(client);
  connection.parsedStatements = {};
  connection.submittedNamedStatements = {};
  forgetDescribed(connection);
}

/** The part of pg-pool's Pool that its types leave out: the callers waiting for a client. */
interface RawPool {
  _pendingQueue: unknown[];
}

/**
 * Waits for a pooled client, giving up (and returning the client later)
 * when `signal` aborts: pg-pool's `connect()` takes no signal. A caller that
 * gives up leaves pg-pool's queue of waiters at once (pg-pool drops a waiter
 * only at its own `connectionTimeoutMillis`, which dbx does not set), so it
 * is neither counted in `waitingCount` nor handed a client later.
 *
 * @param pool The pool.
 * @param signal Ends the wait.
 * @returns The client.
 */
export function connectPool(pool: pg.Pool, signal: AbortSignal): Promise<pg.PoolClient> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const queue = (pool as unknown as RawPool)._pendingQueue;
    let waiter: unknown;
    let done = false;
    let abandoned = false;
    const onAbort = () => {
      abandoned = true;
      const i = waiter === undefined ? -1 : queue.indexOf(waiter);
      if (i >= 0) queue.splice(i, 1);
      reject(signal.reason);
    };
    const queued = queue.length;
    pool.connect((err, client) => {
      done = true;
      signal.removeEventListener("abort", onAbort);
      if (client === undefined) {
        if (!abandoned) reject(err);
      } else if (abandoned) client.release();
      else resolve(client);
    });
    if (done) return;
    // When no client is free, pg-pool queues the waiter before connect() returns.
    if (queue.length > queued) waiter = queue.at(-1);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
