/**
 * The `pgPool` facade: an object that is `instanceof pg.Pool`, so ORMs and
 * query builders written for node-postgres (Drizzle, Prisma's `PrismaPg`,
 * Kysely's `PostgresDialect`) run on a dbx cluster unchanged.
 *
 * - `query()` goes through the cluster's one statement path (`routedWork`
 *   in `dispatch.ts`): routed by the facade's route ("primary": write
 *   rules, "replica": read rules), retried, counted and observed; the
 *   query config's `name`, `rowMode` and `types` reach pg as they are.
 * - A `query()` that changes session state (`SET`, a temporary table, a
 *   session advisory lock: `session_state.ts`) pins a session to this
 *   facade object, as a `connect()` client's does (`lazy_session.ts`):
 *   that statement and every later `query()` of the facade run on its one
 *   connection, in order, never retried, like a single `pg.Client`, until
 *   `end()` hands it back by the lease's rule (reset with `DISCARD ALL`) or
 *   the cluster closes. Other facades and the cluster's own methods never
 *   share that connection; logged once per facade at "warn".
 * - `connect()` returns a client whose statements take the same path until
 *   one needs a connection of its own (BEGIN, a session change, a cursor):
 *   then a connection on the route's node is pinned (taking it is retried)
 *   and what follows runs there, never retried, as on a pg client.
 * - `Client` is a control client for Kysely's `inflightQueryAbortStrategy`:
 *   `pg_cancel_backend` / `pg_terminate_backend` of a client's `processID`
 *   cancel its statement on the server or terminate its backend; anything
 *   else it runs like `query()`. It opens no connection of its own.
 * - "error" is emitted, as pg.Pool does, when a connection dies idle (or
 *   after its client was released): for every pooled connection of the
 *   cluster. Listening changes nothing in dbx's own handling.
 * - Inside a transaction of the cluster bound to the async context
 *   (`runTx`), both run in that transaction; a client's BEGIN / COMMIT /
 *   ROLLBACK become a savepoint, so an ORM transaction nests.
 * - Errors are the driver's own (`code`, `constraint`, `detail`): the
 *   server's error under dbx's wrapping. dbx's own conditions (no healthy
 *   node, closed cluster, canceled, timed out) stay {@linkcode DbxError}s.
 *
 * @module
 */

import type { EventEmitter } from "node:events";
// @ts-types="@types/pg"
import pg from "pg";
import type { ClusterCore } from "../cluster/core.ts";
import {
  ClientIds,
  isSubmittable,
  queryArgs,
  SessionClient,
  settle,
  toConfig,
  TxClient,
} from "./pg_client.ts";
import { checkRoute } from "../call/validate.ts";
import { currentSession } from "../call/session.ts";
import { sessionEffect } from "../node/session_state.ts";
import { LazySession } from "./lazy_session.ts";
import { driverError, type PgRoute, runConfig } from "./pg_run.ts";

const noop = (): void => {};

export type { PgRoute } from "./pg_run.ts";

/**
 * What `cluster.pgPool()` returns: node-postgres's `Pool` type (the object
 * is `instanceof pg.Pool`), for `drizzle({ client })`, `new PrismaPg(pool)`
 * and `new PostgresDialect({ pool })`.
 *
 * @example
 * ```ts
 * import { connect, type PgPool } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const pool: PgPool = cluster.pgPool();
 * const { rows } = await pool.query("select 1 as one");
 * ```
 */
export type PgPool = pg.Pool;

/**
 * Options of `cluster.pgPool()`.
 *
 * @example
 * ```ts
 * import { connect, type PgPoolOptions } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const options: PgPoolOptions = { route: "replica" };
 * const reads = cluster.pgPool(options);
 * ```
 */
export interface PgPoolOptions {
  /**
   * `"primary"`: statements follow the write rules (the current primary;
   * re-sent only when nothing reached a server). `"replica"`: the read
   * rules (a healthy replica, else the primary; re-sent on another node
   * after a connection failure).
   * @default "primary"
   */
  readonly route?: PgRoute | undefined;
}

/**
 * The facade: a `pg.Pool` whose statements and connections are the
 * cluster's. Internal: users get it as `pg.Pool` from `cluster.pgPool()`.
 */
class DbxPgPool extends pg.Pool {
  readonly #core: ClusterCore;
  readonly #route: PgRoute;
  readonly #ids = new ClientIds();
  #ended = false;
  /** The session a session-changing `query()` pinned (see the module doc), until `end()`. */
  #pinned: LazySession | undefined;
  /** Settles after the last statement sent on the pinned session. */
  #tail: Promise<void> = Promise.resolve();
  /** Hands the pinned session back (`end()`, or the cluster's close destroying it). */
  #unpin: ((destroy: boolean) => void) | undefined;

  constructor(core: ClusterCore, route: PgRoute) {
    super({ max: Number.MAX_SAFE_INTEGER, application_name: "dbx" });
    this.#core = core;
    this.#route = route;
    Object.defineProperty(this, "Client", { value: controlClient(this, this.#ids) });
    // Subscribed to the cluster's idle-connection errors only while someone listens.
    const forward = (err: Error) => {
      try {
        this.emit("error", err);
      } catch (thrown) {
        core.d.observer.log("warn", "dbx: a pgPool 'error' listener threw", {
          error: thrown instanceof Error ? thrown.message : String(thrown),
        });
      }
    };
    const events = this as EventEmitter;
    events.on("newListener", (event: string | symbol) => {
      if (event === "error" && !this.#ended) core.idleErrors.add(forward);
    });
    events.on("removeListener", (event: string | symbol) => {
      if (event === "error" && this.listenerCount("error") === 0) core.idleErrors.delete(forward);
    });
    this.#unsubscribe = () => core.idleErrors.delete(forward);
  }

  readonly #unsubscribe: () => void;

  /**
   * Runs one statement: routed and retried on the shared path; once a
   * statement changed session state, on the facade's pinned connection
   * (see the module doc); in the ambient `runTx` when there is one.
   * pg.Pool's overloads (submittable, array rows, callbacks) all land here.
   */
  // deno-lint-ignore no-explicit-any
  override query(...args: any[]): any {
    const { text, values, cb } = queryArgs(args);
    let run: Promise<pg.QueryResult>;
    try {
      if (this.#ended) throw new Error("Cannot use a pool after calling end on the pool");
      if (isSubmittable(text)) {
        throw new TypeError(
          "Cannot query() a Submittable (cursor, stream) on the pool: take a client with connect()",
        );
      }
      const config = toConfig(text, values);
      run = this.#pinned === undefined && sessionEffect(config.text) === undefined
        ? runConfig(this.#core, this.#route, config, undefined, true)
        : this.#core.ambient() === undefined
        ? this.#inSession(config)
        : runConfig(this.#core, this.#route, config, undefined);
      run = run.catch((err) => {
        throw driverError(err);
      });
    } catch (err) {
      run = Promise.reject(err);
    }
    return settle(run, cb);
  }

  /** Runs a statement on the facade's pinned session, pinning it first when there is none. */
  #inSession(config: pg.QueryConfig): Promise<pg.QueryResult> {
    const core = this.#core;
    core.d.assertOpen("pool.query");
    const session = this.#pinned ??= this.#pin(config.text);
    // What runs on the primary may write: a read-your-writes session's reads must see it.
    const writer = this.#route === "primary" ? currentSession(core.d.sessions) : undefined;
    const run = session.run(config, false);
    this.#tail = run.then(noop, noop);
    return writer === undefined ? run : run.finally(() => writer.noteWrite());
  }

  #pin(sql: string): LazySession {
    const core = this.#core;
    core.d.observer.log(
      "warn",
      "dbx: a statement that changes session state, sent through pgPool().query(), pinned " +
        "this facade to one connection until its end(): its statements are no longer " +
        "pipelined or retried; prefer connect({ session }) for settings on every connection, " +
        "SET LOCAL inside runTx(), or pool.connect() for a session of your own",
      { route: this.#route, sql: sql.length > 80 ? `${sql.slice(0, 80)}…` : sql },
    );
    const session = new LazySession(core, this.#route, (err) => {
      if (this.listenerCount("error") > 0) this.emit("error", err);
    });
    // The cluster's close hands it back without waiting for end(): once its
    // last statement settled (a running one gets close()'s grace), destroyed.
    const closing: AsyncDisposable = {
      [Symbol.asyncDispose]: () => {
        this.#tail.then(() => session.release(true));
        return Promise.resolve();
      },
    };
    core.resources.add(closing);
    this.#unpin = (destroy) => {
      core.resources.delete(closing);
      session.release(destroy);
    };
    return session;
  }

  // deno-lint-ignore no-explicit-any
  override connect(cb?: any): any {
    return settle(this.#connect(), cb);
  }

  async #connect(): Promise<pg.PoolClient> {
    if (this.#ended) throw new Error("Cannot use a pool after calling end on the pool");
    this.#core.d.assertOpen("pool.connect");
    const tx = this.#core.ambient();
    if (tx !== undefined) return new TxClient(tx.root) as unknown as pg.PoolClient;
    return await Promise.resolve(
      new SessionClient(this.#core, this.#route, this.#ids) as unknown as pg.PoolClient,
    );
  }

  /**
   * Ends the facade only: the cluster stays open (close it on its own). A
   * session a `query()` pinned is handed back once its statements settled,
   * by the lease's rule (reset with `DISCARD ALL`).
   */
  // deno-lint-ignore no-explicit-any
  override end(cb?: any): any {
    if (this.#ended) {
      return settle(Promise.reject(new Error("Called end on pool more than once")), cb);
    }
    this.#ended = true;
    this.#unsubscribe();
    Object.assign(this, { ending: true, ended: true });
    const unpin = this.#unpin;
    return settle(
      unpin === undefined ? Promise.resolve() : this.#tail.then(() => unpin(false)),
      cb,
    );
  }
}

/** `select pg_cancel_backend(-1)` / `select pg_terminate_backend(-1)`: a facade client's handle. */
const CONTROL_CALL = /^\s*select\s+pg_(cancel|terminate)_backend\s*\(\s*(-\d+)\s*\)\s*;?\s*$/i;

/**
 * The facade's `Client`: what Kysely's PostgresDriver builds to cancel a
 * query or kill a session from outside the pool. It acts on the facade's
 * clients by their `processID` handles and connects nowhere.
 */
function controlClient(pool: pg.Pool, ids: ClientIds): new (options?: unknown) => object {
  return class DbxControlClient {
    connect(): Promise<this> {
      return Promise.resolve(this);
    }

    async query(text: unknown, values?: unknown): Promise<pg.QueryResult> {
      const call = typeof text === "string" ? CONTROL_CALL.exec(text) : null;
      if (call === null) return await pool.query(text as string, values as unknown[]);
      const [, action, id] = call;
      const client = ids.get(Number(id));
      if (client !== undefined) await (action === "cancel" ? client.cancel() : client.kill());
      const column = `pg_${action}_backend`;
      return {
        command: "SELECT",
        rowCount: 1,
        oid: 0,
        rows: [{ [column]: client !== undefined }],
        fields: [],
      } as unknown as pg.QueryResult;
    }

    end(): Promise<void> {
      return Promise.resolve();
    }
  };
}

/**
 * A `pg.Pool` over a cluster (see the module doc); `cluster.pgPool()`.
 *
 * @param core The cluster's core.
 * @param options The route.
 * @returns The facade.
 * @throws {RangeError} for an unknown route.
 */
export function createPgPool(core: ClusterCore, options?: PgPoolOptions): PgPool {
  return new DbxPgPool(core, checkRoute("create pgPool()", "route", options?.route));
}
