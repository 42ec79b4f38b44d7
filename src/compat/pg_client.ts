/**
 * The clients of the `pgPool` facade's `connect()`, as node-postgres pool
 * clients (the Kysely dialect's connections run on them too): one outside
 * any transaction, whose statements take the shared path until one needs a
 * connection of its own (then they run there once, never retried), and one
 * inside the ambient transaction (statements join it; an ORM's BEGIN /
 * COMMIT / ROLLBACK become a savepoint, so its transaction nests). Both pass
 * a Submittable (a cursor, a stream) to pg's client.
 *
 * @module
 */

import { EventEmitter } from "node:events";
// @ts-types="@types/pg"
import pg from "pg";
import type { ClusterCore } from "../cluster/core.ts";
import { LazySession } from "./lazy_session.ts";
import { driverError, inTx, type PgRoute } from "./pg_run.ts";
import type { Transaction } from "../tx/tx.ts";

type Callback = (err: Error | undefined, result?: pg.QueryResult) => void;

/**
 * Whether a query argument is a Submittable (pg-cursor, pg-query-stream).
 *
 * @param arg The first argument of `query()`.
 * @returns `true` when it has a `submit` method.
 */
export function isSubmittable(arg: unknown): arg is pg.Submittable {
  return typeof arg === "object" && arg !== null &&
    typeof (arg as { submit?: unknown }).submit === "function";
}

/**
 * A query's arguments as one query config, as `pg.Client#query` reads them.
 *
 * @param text Statement text, or a query config.
 * @param values Bind parameters (they replace the config's).
 * @returns A fresh query config.
 * @throws {TypeError} when `text` is neither a string nor a config with a string `text`.
 */
export function toConfig(text: unknown, values: unknown): pg.QueryConfig {
  const config: pg.QueryConfig = typeof text === "string"
    ? { text }
    : typeof text === "object" && text !== null &&
        typeof (text as { text?: unknown }).text === "string"
    ? { ...(text as pg.QueryConfig) }
    : (() => {
      throw new TypeError(
        `Cannot query() as 'text' must be a string or a query config with a 'text': current value is ${
          typeof text === "object" ? JSON.stringify(text) : String(text)
        }`,
      );
    })();
  if (Array.isArray(values)) config.values = values;
  return config;
}

/**
 * Settles a promise into a node-style callback when one is given.
 *
 * @param promise The call.
 * @param cb The caller's callback, if any.
 * @returns The promise, or undefined when a callback takes the outcome.
 */
export function settle<R>(promise: Promise<R>, cb: unknown): Promise<R> | undefined {
  if (typeof cb !== "function") return promise;
  promise.then((r) => (cb as Callback)(undefined, r as pg.QueryResult), (e) => (cb as Callback)(e));
  return undefined;
}

/**
 * Splits `query(text, values?, cb?)` / `query(text, cb)`.
 *
 * @param args The arguments of `query()`.
 * @returns Text (or config), values and callback.
 */
export function queryArgs(args: unknown[]): { text: unknown; values: unknown; cb: unknown } {
  const [text, values, cb] = args;
  return typeof values === "function"
    ? { text, values: undefined, cb: values }
    : { text, values, cb };
}

/**
 * What both facade clients share: pg's escaping, and `query()` in every
 * form pg accepts (text or config, values, callback, a Submittable), over
 * what each does with a statement.
 */
abstract class FacadeClient extends EventEmitter {
  escapeIdentifier(s: string): string {
    return pg.escapeIdentifier(s);
  }

  escapeLiteral(s: string): string {
    return pg.escapeLiteral(s);
  }

  /** Whether `release()` was called. */
  protected abstract get released(): boolean;

  /**
   * Sends a Submittable (a cursor, a stream) on the client's connection,
   * behind what runs there.
   *
   * @param submittable The cursor or stream.
   */
  abstract submit(submittable: pg.Submittable): void;

  /**
   * Runs one query config.
   *
   * @param config The statement.
   * @param cancellable A cancel may be asked for while it runs (Kysely's abort strategies).
   * @param route Where it goes when it runs on the shared path.
   * @returns pg's result.
   */
  abstract run(
    config: pg.QueryConfig,
    cancellable?: boolean,
    route?: PgRoute,
  ): Promise<pg.QueryResult>;

  query(...args: unknown[]): unknown {
    const { text, values, cb } = queryArgs(args);
    const released = this.released
      ? new Error("Cannot query() as the client was released")
      : undefined;
    if (isSubmittable(text)) {
      if (released !== undefined) throw released;
      this.submit(text);
      return text;
    }
    let run: Promise<pg.QueryResult>;
    try {
      if (released !== undefined) throw released;
      run = this.run(toConfig(text, values)).catch((err) => {
        throw driverError(err);
      });
    } catch (err) {
      run = Promise.reject(err);
    }
    return settle(run, cb);
  }
}

/**
 * The facade's handles on its clients, for its control client (Kysely's
 * `controlClient`): a client's `processID` is one of these, never a
 * backend's pid (negative), as its statements may run on several backends.
 */
export class ClientIds {
  #next = 0;
  readonly #clients = new Map<number, SessionClient>();

  /** Registers a client; returns its id. */
  add(client: SessionClient): number {
    const id = -++this.#next;
    this.#clients.set(id, client);
    return id;
  }

  /** The client with this id, while it is not released. */
  get(id: number): SessionClient | undefined {
    return this.#clients.get(id);
  }

  /** Forgets a released client. */
  delete(id: number): void {
    this.#clients.delete(id);
  }
}

/**
 * A facade client outside any transaction: its statements take the shared
 * path until one needs a connection of its own (`lazy_session.ts`).
 */
export class SessionClient extends FacadeClient {
  readonly #session: LazySession;
  readonly #ids: ClientIds;
  #id: number | undefined;

  constructor(core: ClusterCore, route: PgRoute, ids: ClientIds) {
    super();
    this.#ids = ids;
    this.#session = new LazySession(core, route, (err) => {
      if (this.listenerCount("error") > 0) this.emit("error", err);
    });
  }

  /**
   * A handle of this client for the facade's control client (negative:
   * never a backend's pid). Kysely reads it before a query it may cancel:
   * from then on the client's statements run alone on a connection, so a
   * cancel reaches them and nothing else.
   */
  get processID(): number {
    return this.#id ??= this.#ids.add(this);
  }

  protected get released(): boolean {
    return this.#session.released;
  }

  submit(submittable: pg.Submittable): void {
    // Sent once the session has its connection (pg queues it behind what runs there).
    this.#session.pinned().then(
      (lease) => lease.use(undefined, (client) => Promise.resolve(void client.query(submittable))),
    ).catch((err) => (submittable as { handleError?(err: unknown): void }).handleError?.(err));
  }

  run(config: pg.QueryConfig, cancellable?: boolean, route?: PgRoute): Promise<pg.QueryResult> {
    return this.#session.run(config, cancellable ?? this.#id !== undefined, route);
  }

  /** Cancels the statement running now on the server (or keeps one not sent from being sent). */
  cancel(): Promise<void> {
    return this.#session.cancel();
  }

  /** Terminates the backend running the statement now. */
  kill(): Promise<void> {
    return this.#session.kill();
  }

  release(err?: unknown): void {
    if (this.#session.released) return;
    if (this.#id !== undefined) this.#ids.delete(this.#id);
    // The lease's rule: a statement still running (a BEGIN not yet
    // answered), an open transaction or a broken connection is destroyed;
    // changed session state is reset.
    this.#session.release(Boolean(err));
  }
}

/** What the facade client sends for an ORM's transaction control inside an ambient transaction. */
const CONTROL = {
  begin: /^\s*(begin|start\s+transaction)\b/i,
  commit: /^\s*(commit|end)(\s+(work|transaction))?\s*;?\s*$/i,
  rollback: /^\s*(rollback|abort)(\s+(work|transaction))?\s*;?\s*$/i,
};

function controlResult(command: string): pg.QueryResult {
  return { command, rowCount: null, oid: 0, rows: [], fields: [] } as unknown as pg.QueryResult;
}

/** A facade client inside an ambient transaction: statements join it, BEGIN nests. */
export class TxClient extends FacadeClient {
  readonly #tx: Transaction;
  readonly #savepoints: string[] = [];
  #released = false;
  static #next = 0;

  constructor(tx: Transaction) {
    super();
    this.#tx = tx;
  }

  get processID(): number | null {
    return null;
  }

  protected get released(): boolean {
    return this.#released;
  }

  submit(submittable: pg.Submittable): void {
    // pg's client queues it behind the transaction's earlier statements.
    this.#tx.enqueue(
      { sql: "submittable", argCount: 0, attempt: 1 },
      undefined,
      (lease) => lease.use(undefined, (client) => Promise.resolve(void client.query(submittable))),
    ).catch(() => {});
  }

  async run(config: pg.QueryConfig): Promise<pg.QueryResult> {
    const tx = this.#tx;
    const sql = (text: string) => inTx(tx, { text }, undefined);
    if (CONTROL.begin.test(config.text)) {
      const name = `dbx_pool_${++TxClient.#next}`;
      await sql(`savepoint ${name}`);
      this.#savepoints.push(name);
      return controlResult("BEGIN");
    }
    const top = this.#savepoints.at(-1);
    if (top !== undefined && CONTROL.commit.test(config.text)) {
      this.#savepoints.pop();
      try {
        await sql(`release savepoint ${top}`);
        return controlResult("COMMIT");
      } catch (err) {
        // The nested work failed (25P02): like COMMIT of a failed transaction, it rolls back.
        await sql(`rollback to savepoint ${top}`);
        await sql(`release savepoint ${top}`);
        if ((driverError(err) as { code?: unknown }).code === "25P02") {
          return controlResult("ROLLBACK");
        }
        throw err;
      }
    }
    if (top !== undefined && CONTROL.rollback.test(config.text)) {
      this.#savepoints.pop();
      await sql(`rollback to savepoint ${top}`);
      await sql(`release savepoint ${top}`);
      return controlResult("ROLLBACK");
    }
    return await inTx(tx, config, undefined);
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    // Released inside its own BEGIN: its work is undone, the ambient transaction goes on.
    const outer = this.#savepoints[0];
    this.#savepoints.length = 0;
    if (outer === undefined) return;
    const tx = this.#tx;
    inTx(tx, { text: `rollback to savepoint ${outer}` }, undefined)
      .then(() => inTx(tx, { text: `release savepoint ${outer}` }, undefined))
      .catch(() => {});
  }
}
