/**
 * A Kysely dialect over a dbx {@linkcode Cluster}: `@codelab/dbx/kysely`.
 *
 * Kysely's own Postgres adapter, introspector and query compiler, with a
 * driver whose statements go through the cluster: each statement outside a
 * transaction is routed and retried like the cluster's own calls (a plain
 * SELECT to a replica with `reads: "replica"`), transactions are pinned
 * with `cluster.begin`, streams use a server-side cursor, and a query's
 * abort signal cancels it on the server.
 *
 * @example Set up Kysely on a cluster
 * ```ts
 * import { Kysely } from "kysely";
 * import { connect } from "@codelab/dbx";
 * import { dbxDialect } from "@codelab/dbx/kysely";
 *
 * interface DB {
 *   users: { id: number; email: string };
 * }
 *
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app"],
 * });
 * const db = new Kysely<DB>({ dialect: dbxDialect(cluster, { reads: "replica" }) });
 * const users = await db.selectFrom("users").selectAll().execute();
 * ```
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import {
  AbortedTransactionError,
  CompiledQuery,
  type DatabaseConnection,
  type DatabaseIntrospector,
  type Dialect,
  type DialectAdapter,
  type Driver,
  type Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryCompiler,
  type QueryResult,
  type TransactionSettings,
} from "kysely";
import { checkRoute } from "../call/validate.ts";
import { type Cluster, clusterCore } from "../cluster/cluster.ts";
import type { ClusterCore } from "../cluster/core.ts";
import { DbxError } from "../errors.ts";
import { isPlainRead } from "./kysely_route.ts";
import { driverError, inTx, type PgRoute, pinFor, runConfig, runPinned } from "./pg_run.ts";
import { Transaction } from "../tx/tx.ts";

/**
 * Kysely's `Dialect` type: what {@linkcode dbxDialect} returns, for
 * `new Kysely({ dialect })`.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 * import { dbxDialect, type KyselyDialect } from "@codelab/dbx/kysely";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const dialect: KyselyDialect = dbxDialect(cluster);
 * ```
 */
export type KyselyDialect = Dialect;

/** Options of {@linkcode dbxDialect}. */
export interface DbxDialectOptions {
  /**
   * Where plain reads go: `"replica"` sends each SELECT outside a transaction
   * that has no locking clause (`FOR UPDATE`, `FOR SHARE`, ...) and no
   * data-modifying CTE to a healthy replica (falling back to the primary);
   * raw `sql` statements always go to the primary. `"primary"` sends every
   * statement to the primary.
   * @default "primary"
   */
  readonly reads?: PgRoute | undefined;
}

/**
 * A Kysely `Dialect` whose statements run on a dbx cluster, with its
 * routing and retries (see the module doc). `db.destroy()` leaves the
 * cluster open: close the cluster on its own.
 *
 * @param cluster The cluster.
 * @param options Where plain reads go.
 * @returns The dialect, for `new Kysely({ dialect })`.
 * @throws {RangeError} when `reads` is neither `"primary"` nor `"replica"`.
 *
 * @example Reads on replicas, writes and transactions on the primary
 * ```ts
 * import { Kysely } from "kysely";
 * import { connect } from "@codelab/dbx";
 * import { dbxDialect } from "@codelab/dbx/kysely";
 *
 * interface DB {
 *   events: { id: number; kind: string };
 * }
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const db = new Kysely<DB>({ dialect: dbxDialect(cluster, { reads: "replica" }) });
 * await db.transaction().execute((trx) =>
 *   trx.insertInto("events").values({ id: 1, kind: "login" }).execute()
 * );
 * const latest = await db.selectFrom("events").select("kind").orderBy("id", "desc").limit(1)
 *   .executeTakeFirst();
 * ```
 */
export function dbxDialect(cluster: Cluster, options?: DbxDialectOptions): KyselyDialect {
  const reads = checkRoute("create dbxDialect()", "reads", options?.reads);
  return {
    createAdapter: (): DialectAdapter => new PostgresAdapter(),
    createDriver: (): Driver => new DbxDriver(cluster, reads),
    createQueryCompiler: (): QueryCompiler => new PostgresQueryCompiler(),
    // deno-lint-ignore no-explicit-any
    createIntrospector: (db: Kysely<any>): DatabaseIntrospector => new PostgresIntrospector(db),
  };
}

function configOf(query: CompiledQuery): pg.QueryConfig {
  return { text: query.sql, values: [...query.parameters] };
}

/** pg's result as Kysely's Postgres driver reports it. */
function toKysely<R>(result: pg.QueryResult): QueryResult<R> {
  const { command, rowCount, rows } = result;
  if (command === "ROLLBACK" || command === "COMMIT") return { rows: [{ command } as R] };
  const changed = command === "INSERT" || command === "UPDATE" || command === "DELETE" ||
    command === "MERGE";
  return {
    ...(changed ? { numAffectedRows: BigInt(rowCount ?? 0) } : {}),
    rows: (rows ?? []) as R[],
  };
}

/** Runs a statement, throwing pg's own error. */
async function kyselyRun(run: Promise<pg.QueryResult>): Promise<pg.QueryResult> {
  try {
    return await run;
  } catch (err) {
    throw driverError(err);
  }
}

/** Kysely's isolation levels as dbx's ("read uncommitted" is "read committed" in PostgreSQL). */
function isolationOf(
  level: TransactionSettings["isolationLevel"],
): "read committed" | "repeatable read" | "serializable" | undefined {
  switch (level) {
    case undefined:
      return undefined;
    case "read uncommitted":
    case "read committed":
      return "read committed";
    case "repeatable read":
    case "serializable":
      return level;
    default:
      throw new RangeError(
        `Cannot begin a transaction as 'isolationLevel' is not one PostgreSQL has: current value is ${
          JSON.stringify(level)
        }`,
      );
  }
}

let cursors = 0;

/** A Kysely connection: unpinned until a transaction pins it. */
class DbxConnection implements DatabaseConnection {
  readonly #core: ClusterCore;
  readonly #reads: PgRoute;
  tx: Transaction | undefined;

  constructor(core: ClusterCore, reads: PgRoute) {
    this.#core = core;
    this.#reads = reads;
  }

  #route(query: CompiledQuery): PgRoute {
    return this.#reads === "replica" && isPlainRead(query) ? "replica" : "primary";
  }

  async executeQuery<R>(
    query: CompiledQuery,
    options?: { readonly signal?: AbortSignal | undefined },
  ): Promise<QueryResult<R>> {
    const config = configOf(query);
    const signal = options?.signal;
    const result = await kyselyRun(
      this.tx !== undefined
        ? inTx(this.tx, config, signal)
        : runConfig(this.#core, this.#route(query), config, signal),
    );
    return toKysely<R>(result);
  }

  /** The statement's own signal already cancels it on the server. */
  async cancelQuery(): Promise<void> {}

  async *streamQuery<R>(
    query: CompiledQuery,
    chunkSize: number,
    options?: { readonly signal?: AbortSignal | undefined },
  ): AsyncIterableIterator<QueryResult<R>> {
    if (!Number.isInteger(chunkSize) || chunkSize <= 0) {
      throw new RangeError(
        `Cannot stream() as 'chunkSize' must be a positive integer: current value is ${chunkSize}`,
      );
    }
    const signal = options?.signal;
    const tx = this.tx;
    const pinned = tx === undefined ? await pinFor(this.#core, this.#route(query)) : undefined;
    const run = (config: pg.QueryConfig) =>
      kyselyRun(
        pinned === undefined
          ? inTx(tx!, config, signal)
          : runPinned(this.#core, pinned, config, signal),
      );
    const cursor = `dbx_kysely_cursor_${++cursors}`;
    let broken = false;
    let closed = false;
    try {
      // A cursor lives in a transaction: a stream outside one opens its own.
      if (pinned !== undefined) await run({ text: "begin" });
      await run({
        text: `declare ${cursor} no scroll cursor for ${query.sql}`,
        values: [...query.parameters],
      });
      while (true) {
        const { rows } = await run({ text: `fetch ${chunkSize} from ${cursor}` });
        if (rows.length > 0) yield { rows: rows as R[] };
        if (rows.length < chunkSize) break;
      }
      closed = true;
      await run({ text: `close ${cursor}` });
      if (pinned !== undefined) await run({ text: "commit" });
    } catch (err) {
      broken = true;
      throw err;
    } finally {
      if (pinned !== undefined) {
        // Left early (a break, an error): the connection is still inside BEGIN and is destroyed.
        pinned.release(broken);
      } else if (!broken && !closed && tx!.active) {
        await inTx(tx!, { text: `close ${cursor}` }, undefined).catch(() => {});
      }
    }
  }
}

/** The driver: connections are cheap handles; transactions pin with `cluster.begin`. */
class DbxDriver implements Driver {
  readonly #cluster: Cluster;
  #core: ClusterCore | undefined;
  readonly #reads: PgRoute;

  constructor(cluster: Cluster, reads: PgRoute) {
    this.#cluster = cluster;
    this.#reads = reads;
  }

  /** Kysely calls it before the first query: the cluster is checked here, not when the dialect is built. */
  init(): Promise<void> {
    try {
      this.#core = clusterCore(this.#cluster);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  acquireConnection(): Promise<DatabaseConnection> {
    return Promise.resolve(new DbxConnection(this.#core!, this.#reads));
  }

  async beginTransaction(
    connection: DatabaseConnection,
    settings: TransactionSettings,
  ): Promise<void> {
    const isolation = isolationOf(settings.isolationLevel);
    let tx;
    try {
      tx = await this.#cluster.begin({
        ...(isolation === undefined ? {} : { isolation }),
        ...(settings.accessMode === "read only" ? { readOnly: true } : {}),
      });
    } catch (err) {
      throw driverError(err);
    }
    if (!(tx instanceof Transaction)) {
      throw new TypeError("cluster.begin() returned no transaction");
    }
    (connection as DbxConnection).tx = tx;
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    const c = connection as DbxConnection;
    const tx = c.tx!;
    c.tx = undefined;
    try {
      await tx.commit();
    } catch (err) {
      // COMMIT answered ROLLBACK: an earlier statement had failed.
      if (err instanceof DbxError && err.cause === undefined && !tx.active) {
        throw new AbortedTransactionError();
      }
      throw driverError(err);
    }
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    const c = connection as DbxConnection;
    const tx = c.tx!;
    c.tx = undefined;
    try {
      await tx.rollback();
    } catch (err) {
      throw driverError(err);
    }
  }

  async savepoint(connection: DatabaseConnection, name: string): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw(`savepoint ${quote(name)}`));
  }

  async rollbackToSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw(`rollback to savepoint ${quote(name)}`));
  }

  async releaseSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw(`release savepoint ${quote(name)}`));
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    const c = connection as DbxConnection;
    // A transaction Kysely did not end (it should not happen) must not hold its connection.
    const tx = c.tx;
    c.tx = undefined;
    if (tx?.active) await tx.rollback().catch(() => {});
  }

  /** The cluster is closed on its own. */
  async destroy(): Promise<void> {}
}

function quote(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}
