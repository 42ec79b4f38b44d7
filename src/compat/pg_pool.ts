/**
 * The `pgPool` facade: an object that is `instanceof pg.Pool`, so ORMs and
 * query builders written for node-postgres (Drizzle, Prisma's `PrismaPg`,
 * Kysely's `PostgresDialect`) run on a dbx cluster unchanged.
 *
 * - `query()` goes through the cluster's one statement path (`routedWork`
 *   in `dispatch.ts`): routed by the facade's route ("primary": write
 *   rules, "replica": read rules), retried, counted and observed; the
 *   query config's `name`, `rowMode` and `types` reach pg as they are.
 * - `connect()` pins a connection on the route's node (taking it is
 *   retried); its statements run there, never retried, as on a pg client.
 * - Inside a transaction of the cluster bound to the async context
 *   (`runTx`), both run in that transaction; a client's BEGIN / COMMIT /
 *   ROLLBACK become a savepoint, so an ORM transaction nests.
 * - Errors are the driver's own (`code`, `constraint`, `detail`): the
 *   server's error under dbx's wrapping. dbx's own conditions (no healthy
 *   node, closed cluster, canceled, timed out) stay {@linkcode DbxError}s.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import type { ClusterCore } from "../cluster/core.ts";
import { isSubmittable, PinnedClient, queryArgs, settle, toConfig, TxClient } from "./pg_client.ts";
import { checkRoute } from "../call/validate.ts";
import { driverError, type PgRoute, pinFor, runConfig } from "./pg_run.ts";

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
  #ended = false;

  constructor(core: ClusterCore, route: PgRoute) {
    super({ max: Number.MAX_SAFE_INTEGER, application_name: "dbx" });
    this.#core = core;
    this.#route = route;
  }

  // pg.Pool's overloads (submittable, array rows, callbacks) all land here.
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
      run = runConfig(this.#core, this.#route, toConfig(text, values), undefined)
        .catch((err) => {
          throw driverError(err);
        });
    } catch (err) {
      run = Promise.reject(err);
    }
    return settle(run, cb);
  }

  // deno-lint-ignore no-explicit-any
  override connect(cb?: any): any {
    return settle(this.#connect(), cb);
  }

  async #connect(): Promise<pg.PoolClient> {
    if (this.#ended) throw new Error("Cannot use a pool after calling end on the pool");
    const tx = this.#core.ambient();
    if (tx !== undefined) return new TxClient(tx.root) as unknown as pg.PoolClient;
    try {
      return new PinnedClient(
        this.#core,
        await pinFor(this.#core, this.#route),
      ) as unknown as pg.PoolClient;
    } catch (err) {
      throw driverError(err);
    }
  }

  /** Ends the facade only: the cluster stays open (close it on its own). */
  // deno-lint-ignore no-explicit-any
  override end(cb?: any): any {
    if (this.#ended) {
      return settle(Promise.reject(new Error("Called end on pool more than once")), cb);
    }
    this.#ended = true;
    Object.assign(this, { ending: true, ended: true });
    return settle(Promise.resolve(), cb);
  }
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
