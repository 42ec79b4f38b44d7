/**
 * The clients of the `pgPool` facade's `connect()`, as node-postgres pool
 * clients: one on a pinned connection (statements run there once, never
 * retried), and one inside the ambient transaction (statements join it; an
 * ORM's BEGIN / COMMIT / ROLLBACK become a savepoint, so its transaction
 * nests). Both pass a Submittable (a cursor, a stream) to pg's client.
 *
 * @module
 */

import { EventEmitter } from "node:events";
// @ts-types="@types/pg"
import pg from "pg";
import type { ClusterCore } from "../cluster/core.ts";
import type { Lease } from "../node/lease.ts";
import type { Node } from "../node/node.ts";
import { driverError, inTx, runPinned } from "./pg_run.ts";
import { currentSession, type SessionState } from "../call/session.ts";
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
  /** Sends a Submittable (a cursor, a stream) on the connection, behind what runs there. */
  protected abstract submit(submittable: pg.Submittable): void;
  /** Runs one query config. */
  protected abstract run(config: pg.QueryConfig): Promise<pg.QueryResult>;

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

/** A leased connection as a node-postgres pool client. */
export class PinnedClient extends FacadeClient {
  readonly #core: ClusterCore;
  readonly #lease: Lease<Node>;
  readonly #unwatch: () => void;
  /** The read-your-writes session that took it: what ran on the primary may have written. */
  readonly #session: SessionState | undefined;

  constructor(core: ClusterCore, lease: Lease<Node>) {
    super();
    this.#core = core;
    this.#lease = lease;
    this.#session = currentSession(core.d.sessions);
    this.#unwatch = lease.watchErrors((err) => {
      if (this.listenerCount("error") > 0) this.emit("error", err);
    });
  }

  /** The backend's process id (Kysely reads it). */
  get processID(): number | null {
    return this.#lease.processID;
  }

  protected get released(): boolean {
    return this.#lease.released;
  }

  protected submit(submittable: pg.Submittable): void {
    // Sent at once (pg queues it); the lease sees it running until it ends.
    void this.#lease.use(undefined, (client) => Promise.resolve(void client.query(submittable)));
  }

  protected run(config: pg.QueryConfig): Promise<pg.QueryResult> {
    return runPinned(this.#core, this.#lease, config, undefined);
  }

  release(err?: unknown): void {
    if (this.#lease.released) return;
    this.#unwatch();
    // The lease's rule: a statement still running (a BEGIN not yet
    // answered), an open transaction or a broken connection is destroyed;
    // changed session state is reset.
    this.#lease.release(Boolean(err));
    if (this.#lease.node.role === "primary") this.#session?.noteWrite();
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

  protected submit(submittable: pg.Submittable): void {
    // pg's client queues it behind the transaction's earlier statements.
    this.#tx.enqueue(
      { sql: "submittable", argCount: 0, attempt: 1 },
      undefined,
      (lease) => lease.use(undefined, (client) => Promise.resolve(void client.query(submittable))),
    ).catch(() => {});
  }

  protected async run(config: pg.QueryConfig): Promise<pg.QueryResult> {
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
