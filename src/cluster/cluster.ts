/**
 * {@linkcode Cluster} and {@linkcode connect}. The statement methods are in
 * `cluster_statements.ts`, lifecycle, transactions and node views in
 * `cluster_base.ts`; this file adds what builds on them: read-your-writes
 * tokens and sessions, LISTEN/NOTIFY, streams.
 *
 * @module
 */
import { type ClusterInternals, internalsOf } from "./cluster_base.ts";
import { ClusterStatements } from "./cluster_statements.ts";
import type { Component } from "./component.ts";
import { type ConnectionOptions, withConnection } from "../call/connection.ts";
import type { ClusterConfig } from "../config/config.ts";
import { currentExecutor } from "./context.ts";
import type { Executor, QueryOptions, Row } from "../executor.ts";
import {
  listen,
  type ListenOptions,
  type NotificationHandler,
  notify,
  type Subscription,
} from "../listen/listen.ts";
import { createPgPool, type PgPool, type PgPoolOptions } from "../compat/pg_pool.ts";
import { runSession, type Session, type SessionOptions } from "../call/session.ts";
import { type ReadStreamOptions, stream, type StreamOptions } from "../tx/stream.ts";

/**
 * A primary and its read replicas behind one {@linkcode Executor}. Create it
 * with {@linkcode connect}; dispose of it with `await using` or `close()`.
 *
 * @example Route writes and reads
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app"],
 * });
 * await cluster.exec("insert into events(kind) values ($1)", ["login"]);
 * const recent = await cluster.readQuery<{ kind: string }>("select kind from events limit 10");
 * ```
 */
export class Cluster extends ClusterStatements implements Component {
  readonly #i: ClusterInternals;

  /**
   * Builds the cluster without connecting. Use {@linkcode connect}, which
   * also verifies the primary and starts the health checker.
   *
   * @param config A config, or a (multi-host) connection string; validated here.
   * @throws {ConfigError} when a setting is invalid.
   */
  constructor(config: ClusterConfig | string) {
    super(config);
    this.#i = internalsOf(this);
  }

  /**
   * A read-your-writes token: the primary's current WAL position. Pass it as
   * `consistentWith` to a later read (in this process or another one, e.g.
   * carried in a cookie or a response header) and that read only uses
   * replicas that have replayed at least this far, else the primary. Take it
   * after the write (or `runTx`) has returned.
   *
   * @param options Cancellation and deadline.
   * @returns An opaque token (today the LSN text, e.g. `"0/3000148"`).
   * @throws {DbxError} when the primary cannot be reached.
   *
   * @example Read your own write from a replica
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({
   *   master: "postgres://app@db1:5432/app",
   *   replicas: ["postgres://app@db2:5432/app"],
   * });
   * await cluster.runTx((tx) => tx.exec("update users set name = $1 where id = $2", ["Ada", 1]));
   * const token = await cluster.writeToken();
   * const [user] = await cluster.readQuery("select name from users where id = $1", [1], {
   *   consistentWith: token,
   * });
   * ```
   */
  async writeToken(options?: QueryOptions): Promise<string> {
    const row = await this.queryRow<{ lsn: string }>(
      "select pg_current_wal_lsn()::text as lsn",
      undefined,
      options,
    );
    return row.lsn;
  }

  /**
   * Listens on `channel` on a dedicated connection to the primary (outside
   * the pool). After the connection is lost (restart, failover, network) it
   * reconnects to whichever node is primary then, re-issues LISTEN and calls
   * `options.onReconnect` with the gap, during which notifications were missed.
   *
   * @param channel The channel (any name: it is quoted).
   * @param handler Called with each notification's payload; a throw is logged.
   * @param options `onReconnect`; `signal` ends the subscription; `timeoutMs` bounds the first LISTEN.
   * @returns The subscription, once LISTEN is active; close it with `await using` or `unlisten()`.
   * @throws {TypeError} naming `channel` or `handler` when it is not valid.
   * @throws {RangeError} for a channel longer than 63 bytes.
   * @throws {DbxError} when no primary could be reached.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * await using sub = await cluster.listen("orders", (payload) => console.log(payload), {
   *   onReconnect: ({ downMs }) => console.warn(`reconnected after ${downMs} ms`),
   * });
   * await cluster.notify("orders", "42");
   * ```
   */
  listen(
    channel: string,
    handler: NotificationHandler,
    options?: ListenOptions,
  ): Promise<Subscription> {
    return listen(this.#i, channel, handler, options);
  }

  /**
   * Sends a notification (`select pg_notify($1, $2)`) on the primary; inside
   * a transaction, in it (delivered when it commits).
   *
   * @param channel The channel.
   * @param payload The payload (under 8000 bytes).
   * @param options Cancellation and deadline.
   * @returns Resolves when the server accepted it.
   * @throws {TypeError} naming `channel` or `payload` when it is not valid.
   * @throws {DbxError} on failure.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * await cluster.notify("orders", JSON.stringify({ id: 42 }));
   * ```
   */
  notify(channel: string, payload: string, options?: QueryOptions): Promise<void> {
    return notify(this.#i, channel, payload, options);
  }

  /**
   * Streams a SELECT's rows from the primary through a server-side cursor,
   * `batchSize` rows per round trip, on one pinned connection. Retried only
   * before the first row; leaving the loop early closes the cursor and
   * releases the connection. Inside a transaction, the cursor lives in it.
   *
   * @param sql A SELECT (or VALUES) with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options `batchSize` (default 1000); `signal` / `timeoutMs` bound the whole iteration.
   * @returns The rows, in order; each iteration runs the statement anew.
   * @throws {RangeError} for a `batchSize` that is not a positive integer.
   * @throws {DbxError} from the iterator on failure (kind `connection` after a lost connection).
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * for await (const row of cluster.stream<{ id: number }>("select id from events", [], { batchSize: 500 })) {
   *   console.log(row.id);
   * }
   * ```
   */
  stream<T = Row>(
    sql: string,
    args?: readonly unknown[],
    options?: StreamOptions,
  ): AsyncIterable<T> {
    return stream<T>(this, this.#i, false, sql, args, options);
  }

  /**
   * Like {@linkcode stream}, on a healthy replica (falling back to the
   * primary), in a read-only transaction; before the first row, a failure is
   * retried on another node.
   *
   * @param sql A SELECT (or VALUES) with `$1`, `$2` ... placeholders.
   * @param args Values for the placeholders.
   * @param options `batchSize` (default 1000), lag bound, read-your-writes token, `signal`, `timeoutMs`.
   * @returns The rows, in order.
   * @throws {RangeError} for a `batchSize` that is not a positive integer.
   * @throws {DbxError} from the iterator on failure.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({
   *   master: "postgres://app@db1:5432/app",
   *   replicas: ["postgres://app@db2:5432/app"],
   * });
   * let total = 0;
   * for await (const { amount } of cluster.readStream<{ amount: number }>("select amount from orders")) {
   *   total += amount;
   * }
   * ```
   */
  readStream<T = Row>(
    sql: string,
    args?: readonly unknown[],
    options?: ReadStreamOptions,
  ): AsyncIterable<T> {
    return stream<T>(this, this.#i, true, sql, args, options);
  }

  /**
   * Runs `fn` in a read-your-writes session: after a write in it (`exec`,
   * `query`, `queryRow`, a committed transaction, `copyFrom`, `sendBatch`),
   * its `read*` calls use only replicas known to have replayed that write,
   * else the primary; before any write they use replicas as usual. The write
   * path gains no round trip: the health checker's samples tell which
   * replicas have caught up. Sessions hold no connection; a session inside
   * one of the same cluster joins it.
   *
   * @param fn The code to run (a request handler, a job).
   * @param options A token (`writeToken()`, `session.token()`) to start from.
   * @returns What `fn` returned.
   * @throws {RangeError} when `options.consistentWith` is not a token.
   *
   * @example Read your own writes from replicas
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({
   *   master: "postgres://app@db1:5432/app",
   *   replicas: ["postgres://app@db2:5432/app"],
   * });
   * const name = await cluster.session(async () => {
   *   await cluster.exec("update users set name = $1 where id = $2", ["Ada", 1]);
   *   // A replica that has not replayed the update is never used here.
   *   return await cluster.readQueryRow<{ name: string }>("select name from users where id = $1", [1]);
   * });
   * ```
   */
  session<T>(fn: (session: Session) => T, options?: SessionOptions): T {
    return runSession(this.#i.d.sessions, fn, options);
  }

  /**
   * Runs `fn` on one connection of its own: for work that needs a session
   * (session advisory locks, temporary tables, `SET`), which the other
   * methods refuse because they share connections. When `fn` settles the
   * connection is reset (`DISCARD ALL`: settings, temporary tables, locks,
   * prepared statements) or, if anything is left running or open, destroyed;
   * nothing `fn` changed reaches another caller. Statements on it are never
   * retried; taking the connection is.
   *
   * @param fn The work; `conn` runs its statements on the one connection.
   * @param options `route` (`"primary"`, the default, or `"replica"`), `signal` and `timeoutMs` for the whole call.
   * @returns What `fn` returned.
   * @throws {TypeError} when `fn` is not a function.
   * @throws {RangeError} for an unknown route.
   *
   * @example A session advisory lock around a job
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * await cluster.withConnection(async (conn) => {
   *   const { locked } = await conn.queryRow<{ locked: boolean }>(
   *     "select pg_try_advisory_lock($1) as locked",
   *     [42],
   *   );
   *   if (!locked) return;
   *   await conn.exec("set statement_timeout = '10min'");
   *   await conn.exec("refresh materialized view daily_totals");
   * });
   * ```
   */
  withConnection<T>(fn: (conn: Executor) => Promise<T>, options?: ConnectionOptions): Promise<T> {
    return withConnection(this.#i.d, fn, options);
  }

  /**
   * A `pg.Pool` (`instanceof pg.Pool`) over this cluster, for Drizzle,
   * Prisma's `PrismaPg` and Kysely's `PostgresDialect`: `query()` is routed
   * and retried by `route`; `connect()` pins a connection; both join the
   * ambient `runTx`; errors are pg's own. Its `end()` leaves the cluster open.
   *
   * @param options `route`: `"primary"` (write rules, the default) or `"replica"` (read rules).
   * @returns The pool facade.
   * @throws {RangeError} for an unknown route.
   *
   * @example Drizzle with replicas
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * const primary = cluster.pgPool();
   * const reads = cluster.pgPool({ route: "replica" });
   * const { rows } = await reads.query("select $1::int as n", [1]);
   * ```
   */
  pgPool(options?: PgPoolOptions): PgPool {
    return createPgPool(this, options);
  }

  /**
   * The executor bound to the current async context by the innermost
   * `runTx` / `withExecutor`, else this cluster.
   *
   * @returns The bound transaction or the cluster.
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
   * await cluster.getExecutor().exec("select 1");
   * ```
   */
  getExecutor(): Executor {
    return currentExecutor(this);
  }
}

/**
 * Creates a {@linkcode Cluster}: validates the config eagerly, creates one
 * pool per node, verifies that a primary answers (with retry) and starts the
 * background health checker.
 *
 * @param config Nodes, pool, retry, health-check and observability settings;
 * or a connection string, single- or multi-host (`postgres://app@db1,db2/app`),
 * which is `{ nodes: [url] }`: every host a node whose role the server tells.
 * @returns A connected cluster; dispose of it with `await using` or `close()`.
 * @throws {ConfigError} naming the invalid field and value.
 * @throws {NoHealthyNodeError} when no node reports primary after every attempt.
 * @throws {DbxError} (not retryable) at once when the nodes refused for a reason
 * no retry fixes: a certificate that does not verify, a refused login, no such database.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app", { name: "db3", url: "postgres://app@db3:5432/app" }],
 *   pool: { max: 20 },
 *   retry: { maxAttempts: 4 },
 * });
 * ```
 *
 * @example A multi-host URL: writes go to whichever host is primary
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect(
 *   "postgres://app@db1:5432,db2:5432,db3:5432/app?target_session_attrs=read-write",
 * );
 * ```
 */
export async function connect(config: ClusterConfig | string): Promise<Cluster> {
  const cluster = new Cluster(config);
  try {
    await cluster.start();
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return cluster;
}
