/**
 * A Kysely dialect over a dbx {@linkcode Cluster}: `@codelab/dbx/kysely`.
 *
 * Kysely's own Postgres adapter, introspector, query compiler and driver
 * (`PostgresDriver`: its BEGIN, COMMIT, SAVEPOINT statements go through the
 * connection, so Kysely's `log` and plugins see them), over dbx sessions
 * instead of a pg pool (`lazy_session.ts`): each statement outside a
 * transaction is routed, retried and pipelined like the cluster's own calls
 * (a plain SELECT to a replica with `reads: "replica"`); BEGIN pins the
 * session to a primary connection, as does a statement that needs a session
 * (`SET`, temporary tables, advisory locks); streams use pg-cursor on the
 * session's connection. Kysely 0.29's `inflightQueryAbortStrategy` works as
 * on pg: "ignore query" lets an aborted query run on, "cancel query" cancels
 * it on the server, "kill session" terminates its backend.
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
// @ts-types="@types/pg-cursor"
import Cursor from "pg-cursor";
import {
  CompiledQuery,
  type DatabaseConnection,
  type DatabaseIntrospector,
  type Dialect,
  type DialectAdapter,
  type Driver,
  type Kysely,
  PostgresAdapter,
  PostgresDriver,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryCompiler,
  type QueryResult,
} from "kysely";
import { checkRoute } from "../call/validate.ts";
import { type Cluster, clusterCore } from "../cluster/cluster.ts";
import type { ClusterCore } from "../cluster/core.ts";
import { isPlainRead } from "./kysely_route.ts";
import { LazySession } from "./lazy_session.ts";
import { TxClient } from "./pg_client.ts";
import { driverError, type PgRoute, pinFor } from "./pg_run.ts";

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

/** Adds the caller's stack to an error, as Kysely's own drivers do. */
function withCallerStack(err: unknown, caller: Error): unknown {
  if (typeof err === "object" && err !== null && typeof (err as Error).stack === "string") {
    (err as Error).stack += `\n${(caller.stack ?? "").split("\n").slice(1).join("\n")}`;
  }
  return err;
}

/**
 * A Kysely connection: a session that takes a connection only when it needs
 * one (`lazy_session.ts`), or, inside an ambient transaction, that
 * transaction (BEGIN becomes a savepoint).
 */
class DbxConnection implements DatabaseConnection {
  readonly #client: LazySession | TxClient;
  readonly #reads: PgRoute;
  #discarded = false;

  readonly #core: ClusterCore;

  constructor(core: ClusterCore, reads: PgRoute) {
    this.#core = core;
    const tx = core.ambient();
    this.#client = tx === undefined ? new LazySession(core, "primary") : new TxClient(tx.root);
    this.#reads = reads;
  }

  #route(query: CompiledQuery): PgRoute {
    return this.#reads === "replica" && isPlainRead(query) ? "replica" : "primary";
  }

  #assertNotDiscarded(): void {
    if (this.#discarded) throw new Error("Postgres connection has been discarded");
  }

  async executeQuery<R>(
    query: CompiledQuery,
    options?: { readonly signal?: AbortSignal | undefined },
  ): Promise<QueryResult<R>> {
    this.#assertNotDiscarded();
    try {
      // A signal means Kysely may ask for a cancel (cancelQuery, killSession):
      // the statement runs alone on a connection. The signal itself cancels
      // nothing: with "ignore query" the statement runs on, as on pg.
      const cancellable = options?.signal !== undefined;
      return toKysely<R>(
        await this.#client.run(configOf(query), cancellable, this.#route(query)),
      );
    } catch (err) {
      throw withCallerStack(driverError(err), new Error());
    }
  }

  /** Kysely's "cancel query": the running statement is cancelled on the server. */
  async cancelQuery(): Promise<void> {
    if (this.#client instanceof LazySession) await this.#client.cancel();
  }

  /** Kysely's "kill session": the backend running the statement is terminated. */
  async killSession(): Promise<void> {
    if (this.#client instanceof LazySession) await this.#client.kill();
  }

  async *streamQuery<R>(
    query: CompiledQuery,
    chunkSize: number,
  ): AsyncIterableIterator<QueryResult<R>> {
    if (!Number.isInteger(chunkSize) || chunkSize <= 0) {
      throw new RangeError(
        `Cannot stream() as 'chunkSize' must be a positive integer: current value is ${chunkSize}`,
      );
    }
    this.#assertNotDiscarded();
    // pg-cursor on the session's connection, as Kysely's PostgresDriver streams.
    const cursor = new Cursor<R>(query.sql, [...query.parameters]);
    const client = this.#client;
    // A plain read of a session without a connection yet streams from a replica
    // (`reads: "replica"`), on a connection of its own for the stream's length.
    const own = client instanceof LazySession && !client.connected &&
        this.#route(query) === "replica"
      ? await pinFor(this.#core, "replica")
      : undefined;
    if (client instanceof LazySession) {
      const lease = own ?? await client.pinned();
      lease.use(undefined, (c) => Promise.resolve(void c.query(cursor))).catch((err) =>
        (cursor as unknown as { handleError(err: unknown): void }).handleError(err)
      );
    } else {
      client.submit(cursor as unknown as pg.Submittable);
    }
    try {
      while (true) {
        const rows = await cursor.read(chunkSize);
        if (rows.length === 0) break;
        yield { rows };
      }
    } finally {
      await cursor.close().finally(() => own?.release());
    }
  }

  /** Marks the connection broken (a ROLLBACK that failed): released as destroyed. */
  discard(): void {
    this.#discarded = true;
  }

  /** Hands the connection back (destroyed when discarded). */
  release(): void {
    if (this.#client instanceof LazySession) this.#client.release(this.#discarded);
    else this.#client.release();
  }
}

/**
 * The driver: Kysely's own PostgresDriver (its BEGIN / START TRANSACTION,
 * COMMIT, SAVEPOINT statements, sent through the connection so Kysely's
 * `log` and plugins see them) over dbx sessions instead of a pg pool. BEGIN
 * pins the session to a primary connection.
 */
class DbxDriver extends PostgresDriver {
  readonly #cluster: Cluster;
  #core: ClusterCore | undefined;
  readonly #reads: PgRoute;

  constructor(cluster: Cluster, reads: PgRoute) {
    // PostgresDriver's pool is never used: connections are dbx sessions.
    super({ pool: () => Promise.reject(new Error("dbxDialect has no pg pool")) });
    this.#cluster = cluster;
    this.#reads = reads;
  }

  /** Kysely calls it before the first query: the cluster is checked here, not when the dialect is built. */
  override init(): Promise<void> {
    try {
      this.#core = clusterCore(this.#cluster);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  override acquireConnection(): Promise<DatabaseConnection> {
    try {
      this.#core!.d.assertOpen("acquireConnection");
      return Promise.resolve(new DbxConnection(this.#core!, this.#reads));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** As PostgresDriver's: a ROLLBACK that failed leaves the connection to be destroyed. */
  override async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    try {
      await connection.executeQuery(CompiledQuery.raw("rollback"));
    } catch (err) {
      (connection as DbxConnection).discard();
      throw err;
    }
  }

  override releaseConnection(connection: DatabaseConnection): Promise<void> {
    (connection as DbxConnection).release();
    return Promise.resolve();
  }

  /** The cluster is closed on its own. */
  override destroy(): Promise<void> {
    return Promise.resolve();
  }
}
