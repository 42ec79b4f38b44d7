/**
 * What Kysely's own test setup (`test/node/src/test-setup.ts`) is patched to
 * call for its `postgres` dialect when `kysely_suite.ts` runs the suite.
 * Bundled for Node with esbuild (npm packages left as imports, resolved from
 * the Kysely checkout), so Kysely, pg and pg-cursor are the suite's own copies.
 *
 * `DBX_KYSELY_MODE` picks one of three set-ups:
 *
 * - `pg`: Kysely's own set-up, unchanged (stock `pg.Pool`).
 * - `pgpool`: `new PostgresDialect({ pool: cluster.pgPool(), cursor })`.
 * - `dialect`: `dbxDialect(cluster)`.
 *
 * Each Kysely instance gets a cluster of its own (`DBX_MASTER_URL`,
 * `DBX_REPLICA_URLS`), closed when the instance is destroyed.
 *
 * @module
 */

import process from "node:process";
import {
  type Dialect,
  type Driver,
  type Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
} from "kysely";
import { Cluster, type ClusterConfig } from "../../mod.ts";
import { dbxDialect } from "../../src/compat/kysely.ts";

/** What test-setup.ts hands over: its own copies of Kysely's dialect, pg and pg-cursor. */
export interface SuiteParts {
  // deno-lint-ignore no-explicit-any
  PostgresDialect: new (config: any) => Dialect;
  // deno-lint-ignore no-explicit-any
  Pool: new (config: any) => { on(event: "error", listener: (err: Error) => void): unknown };
  // deno-lint-ignore no-explicit-any
  Client: new (config: any) => unknown;
  Cursor: unknown;
  /** test-setup's pool config (database, user, port, `max`). */
  config: { max?: number };
  /** Where test-setup collects the pool's "error" events (`PG_ERRORS`). */
  errors: Error[];
}

function clusterConfig(max: number): ClusterConfig {
  const master = process.env.DBX_MASTER_URL;
  if (master === undefined) throw new Error("DBX_MASTER_URL is not set");
  const replicas = (process.env.DBX_REPLICA_URLS ?? "").split(",").filter((u) => u !== "");
  return { master, replicas, pool: { max } };
}

/**
 * A driver that opens its own cluster in `init()` and closes it in
 * `destroy()`; the cluster's idle-connection errors are collected like the
 * stock pool's (through a `pgPool()` facade's "error" event).
 */
function ownCluster(max: number, errors: Error[]): Driver {
  const cluster = new Cluster(clusterConfig(max));
  const driver = dbxDialect(cluster).createDriver();
  return new Proxy(driver, {
    get(target, key, receiver) {
      if (key === "init") {
        return async () => {
          await cluster.start();
          cluster.pgPool().on("error", (err) => errors.push(err));
          await target.init();
        };
      }
      if (key === "destroy") {
        return async () => {
          await target.destroy();
          await cluster.close();
        };
      }
      const value = Reflect.get(target, key, receiver);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/**
 * The `postgres` dialect of Kysely's suite, by `DBX_KYSELY_MODE`.
 *
 * @param parts Kysely's, pg's and pg-cursor's exports as the suite has them.
 * @returns The dialect for `DB_CONFIGS.postgres`.
 */
export function postgresDialect(parts: SuiteParts): Dialect {
  const { PostgresDialect, Pool, Client, Cursor, config, errors } = parts;
  const max = config.max ?? 10;
  const mode = process.env.DBX_KYSELY_MODE ?? "pg";
  switch (mode) {
    case "pg":
      return new PostgresDialect({
        controlClient: Client,
        pool: () => Promise.resolve(new Pool(config).on("error", (err) => errors.push(err))),
        cursor: Cursor,
      });
    case "pgpool":
      return new PostgresDialect({
        pool: async () => {
          const cluster = new Cluster(clusterConfig(max));
          await cluster.start();
          const pool = cluster.pgPool();
          pool.on("error", (err) => errors.push(err));
          const end = pool.end.bind(pool);
          // Kysely's destroy() ends the pool: the cluster behind it goes too.
          return Object.assign(pool, {
            end: async () => {
              await end();
              await cluster.close();
            },
          });
        },
        cursor: Cursor,
      });
    case "dialect":
      return {
        createAdapter: () => new PostgresAdapter(),
        createQueryCompiler: () => new PostgresQueryCompiler(),
        // deno-lint-ignore no-explicit-any
        createIntrospector: (db: Kysely<any>) => new PostgresIntrospector(db),
        createDriver: () => ownCluster(max, errors),
      };
    default:
      throw new Error(`DBX_KYSELY_MODE must be pg, pgpool or dialect: current value is ${mode}`);
  }
}
