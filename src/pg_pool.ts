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

import { EventEmitter } from "node:events";
// @ts-types="@types/pg"
import pg from "pg";
import { cancellable } from "./_pg.ts";
import { failureOf } from "./attempt.ts";
import { type ClusterInternals, internalsOf } from "./cluster_base.ts";
import { pin, type Pinned, routedWork } from "./dispatch.ts";
import { DbxError } from "./errors.ts";
import { isConnectionError } from "./failure.ts";
import type { Node } from "./node.ts";
import type { Transaction } from "./tx.ts";

/** Which rules the facade's statements follow. */
export type PgRoute = "primary" | "replica";

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

/** A node-postgres query: text, or a config with `text`, `values`, `name`, `rowMode`, `types`. */
type QueryInput = string | pg.QueryConfig;

type Callback = (err: Error | undefined, result?: pg.QueryResult) => void;

function isSubmittable(arg: unknown): arg is pg.Submittable {
  return typeof arg === "object" && arg !== null &&
    typeof (arg as { submit?: unknown }).submit === "function";
}

/**
 * A query's arguments as one query config, as `pg.Client#query` reads them.
 *
 * @throws {TypeError} when `text` is neither a string nor a config with a string `text`.
 */
function toConfig(text: unknown, values: unknown): pg.QueryConfig {
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
 * The error an ORM expects: the driver's own under dbx's wrapping (a
 * DbxError naming the node, a RetryExhaustedError around it). dbx's own
 * conditions stay as they are.
 *
 * @param err What the statement path threw.
 * @returns The error to throw to node-postgres callers.
 */
export function driverError(err: unknown): unknown {
  let e = err;
  while (
    e instanceof DbxError && (e.name === "DbxError" || e.name === "RetryExhaustedError") &&
    e.kind !== "canceled" && e.kind !== "timeout" && e.cause instanceof Error
  ) {
    e = e.cause;
  }
  return e;
}

/** Sends one query config on a connection; aborting `signal` cancels it on the server. */
function send(
  client: pg.ClientBase,
  node: Node,
  config: pg.QueryConfig,
  signal: AbortSignal | undefined,
): Promise<pg.QueryResult> {
  return cancellable(client, node, signal, () => client.query(config));
}

/** One attempt of a query config on a connection taken from `node`'s pool. */
async function attemptOn(
  node: Node,
  config: pg.QueryConfig,
  signal: AbortSignal | undefined,
): Promise<pg.QueryResult> {
  const client = await node.acquire(signal);
  let result: pg.QueryResult;
  try {
    result = await send(client, node, config, signal);
  } catch (err) {
    node.release(client, isConnectionError(err));
    throw err;
  }
  node.release(client);
  return result;
}

function infoOf(config: pg.QueryConfig): { sql: string; argCount: number } {
  return { sql: config.text, argCount: config.values?.length ?? 0 };
}

/**
 * Runs a query config through the cluster's statement path: in the ambient
 * transaction when there is one, else routed by `route`, with retries.
 * Rejections are the raw {@linkcode DbxError}s; callers that speak pg map
 * them with {@linkcode driverError}.
 *
 * @param i The cluster's internals.
 * @param route Which rules the statement follows.
 * @param config The query config, passed to pg as it is.
 * @param signal Cancels the call (a running statement on the server).
 * @returns pg's result (`command`, `rowCount`, `rows`, `fields`).
 */
export function runConfig(
  i: ClusterInternals,
  route: PgRoute,
  config: pg.QueryConfig,
  signal: AbortSignal | undefined,
): Promise<pg.QueryResult> {
  try {
    i.d.assertOpen();
  } catch (err) {
    return Promise.reject(err);
  }
  const tx = i.ambient();
  if (tx !== undefined) return inTx(tx.root, config, signal);
  return routedWork(
    i.d,
    route === "replica",
    infoOf(config),
    signal,
    (node) => attemptOn(node, config, signal),
  );
}

/**
 * Runs a query config in a transaction, after its earlier statements.
 *
 * @param tx The transaction.
 * @param config The query config.
 * @param signal Cancels it on the server.
 * @returns pg's result.
 */
export function inTx(
  tx: Transaction,
  config: pg.QueryConfig,
  signal: AbortSignal | undefined,
): Promise<pg.QueryResult> {
  return tx.enqueue(
    { ...infoOf(config), attempt: 1 },
    { signal },
    (client, s) => send(client, tx.node, config, s),
  );
}

/**
 * Takes a connection for the facade's `connect()`: on the primary (the
 * pin of `begin`), or where a read would go.
 *
 * @param i The cluster's internals.
 * @param route Which node.
 * @returns The node and its connection.
 */
export function pinFor(i: ClusterInternals, route: PgRoute): Promise<Pinned> {
  i.d.assertOpen();
  if (route === "primary") return pin(i.d, undefined, undefined);
  return routedWork(
    i.d,
    true,
    undefined,
    undefined,
    async (node) => ({ node, client: await node.acquire() }),
  );
}

/**
 * Runs a query config on a pinned connection, once, through the attempt
 * runner (counted and observed like any statement).
 *
 * @param i The cluster's internals.
 * @param p The node and its connection.
 * @param config The query config.
 * @param signal Cancels it on the server.
 * @returns pg's result.
 */
export function runPinned(
  i: ClusterInternals,
  p: Pinned,
  config: pg.QueryConfig,
  signal: AbortSignal | undefined,
): Promise<pg.QueryResult> {
  return i.d.runner.run(
    p.node,
    { ...infoOf(config), attempt: 1 },
    signal,
    () => send(p.client, p.node, config, signal),
  );
}

/** Settles a promise into a node-style callback when one is given. */
function settle<R>(promise: Promise<R>, cb: unknown): Promise<R> | undefined {
  if (typeof cb !== "function") return promise;
  promise.then((r) => (cb as Callback)(undefined, r as pg.QueryResult), (e) => (cb as Callback)(e));
  return undefined;
}

/** Splits `query(text, values?, cb?)` / `query(text, cb)`. */
function queryArgs(args: unknown[]): { text: unknown; values: unknown; cb: unknown } {
  const [text, values, cb] = args;
  return typeof values === "function"
    ? { text, values: undefined, cb: values }
    : { text, values, cb };
}

/** A pinned connection as a node-postgres pool client. */
class PinnedClient extends EventEmitter {
  readonly #i: ClusterInternals;
  readonly #node: Node;
  readonly #client: pg.PoolClient;
  readonly #forward = (err: Error) => {
    if (this.listenerCount("error") > 0) this.emit("error", err);
  };
  #released = false;
  #broken = false;

  constructor(i: ClusterInternals, { node, client }: Pinned) {
    super();
    this.#i = i;
    this.#node = node;
    this.#client = client;
    client.on("error", this.#forward);
  }

  /** The backend's process id (Kysely reads it). */
  get processID(): number | null {
    return (this.#client as unknown as { processID: number | null }).processID;
  }

  escapeIdentifier(s: string): string {
    return this.#client.escapeIdentifier(s);
  }

  escapeLiteral(s: string): string {
    return this.#client.escapeLiteral(s);
  }

  query(...args: unknown[]): unknown {
    const { text, values, cb } = queryArgs(args);
    if (isSubmittable(text)) {
      if (this.#released) throw new Error("Cannot query() as the client was released");
      return this.#client.query(text);
    }
    let run: Promise<pg.QueryResult>;
    try {
      if (this.#released) throw new Error("Cannot query() as the client was released");
      const config = toConfig(text, values);
      run = runPinned(this.#i, { node: this.#node, client: this.#client }, config, undefined)
        .catch((err) => {
          if (failureOf(err).connectionLost) this.#broken = true;
          throw driverError(err);
        });
    } catch (err) {
      run = Promise.reject(err);
    }
    return settle(run, cb);
  }

  release(err?: unknown): void {
    if (this.#released) return;
    this.#released = true;
    this.#client.removeListener("error", this.#forward);
    // Not idle (inside a transaction, a statement running) or broken: destroyed.
    this.#node.release(this.#client, Boolean(err) || this.#broken);
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
class TxClient extends EventEmitter {
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

  escapeIdentifier(s: string): string {
    return pg.escapeIdentifier(s);
  }

  escapeLiteral(s: string): string {
    return pg.escapeLiteral(s);
  }

  query(...args: unknown[]): unknown {
    const { text, values, cb } = queryArgs(args);
    if (this.#released) {
      return settle(
        Promise.reject(new Error("Cannot query() as the client was released")),
        cb,
      );
    }
    if (isSubmittable(text)) {
      // pg's client queues it behind the transaction's earlier statements.
      this.#tx.enqueue(
        { sql: "submittable", argCount: 0, attempt: 1 },
        undefined,
        (client) => Promise.resolve(void client.query(text)),
      ).catch(() => {});
      return text;
    }
    let run: Promise<pg.QueryResult>;
    try {
      run = this.#run(toConfig(text, values)).catch((err) => {
        throw driverError(err);
      });
    } catch (err) {
      run = Promise.reject(err);
    }
    return settle(run, cb);
  }

  async #run(config: pg.QueryConfig): Promise<pg.QueryResult> {
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
    this.#released = true;
  }
}

/**
 * The facade: a `pg.Pool` whose statements and connections are the
 * cluster's. Internal: users get it as `pg.Pool` from `cluster.pgPool()`.
 */
class DbxPgPool extends pg.Pool {
  readonly #i: ClusterInternals;
  readonly #route: PgRoute;
  #ended = false;

  constructor(i: ClusterInternals, route: PgRoute) {
    super({ max: Number.MAX_SAFE_INTEGER, application_name: "dbx" });
    this.#i = i;
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
      run = runConfig(this.#i, this.#route, toConfig(text, values), undefined)
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
    const tx = this.#i.ambient();
    if (tx !== undefined) return new TxClient(tx.root) as unknown as pg.PoolClient;
    try {
      return new PinnedClient(
        this.#i,
        await pinFor(this.#i, this.#route),
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
 * @param cluster The cluster.
 * @param options The route.
 * @returns The facade.
 * @throws {RangeError} for an unknown route.
 */
export function createPgPool(cluster: object, options?: PgPoolOptions): pg.Pool {
  const route = options?.route ?? "primary";
  if (route !== "primary" && route !== "replica") {
    throw new RangeError(
      `Cannot create pgPool() as 'route' must be "primary" or "replica": current value is ${
        JSON.stringify(route)
      }`,
    );
  }
  return new DbxPgPool(internalsOf(cluster), route);
}
