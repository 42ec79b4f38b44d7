/**
 * One server behind the cluster: its `pg.Pool`, name, role, health state and
 * counters, and the single-attempt execution of a statement on it (acquire,
 * send, cancel, release). Routing and retries live in `cluster.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import type { BalancerNode } from "./balancer.ts";
import type { ResolvedNode } from "./config.ts";
import { DbxError } from "./errors.ts";
import type { NodeRole, Tracer } from "./observe.ts";

/** Errors raised before a statement was handed to a connection: safe to re-send anywhere. */
const notSent = new WeakSet<object>();

/**
 * Whether `err` was raised before the statement could reach any server
 * (pool acquire, connect refused, startup rejected, aborted while waiting).
 *
 * @param err An error thrown by {@linkcode Node.run}.
 * @returns `true` when re-sending cannot double the statement.
 */
export function wasNotSent(err: unknown): boolean {
  return typeof err === "object" && err !== null && notSent.has(err);
}

function markNotSent(err: unknown): unknown {
  if (typeof err === "object" && err !== null) notSent.add(err);
  return err;
}

function ignoreError(): void {}

/** How many recent attempts the latency percentiles of `stats()` cover. */
export const LATENCY_WINDOW = 1024;

/** Connections on which a cancel was sent that no statement consumed. */
const strayCancel = new WeakSet<object>();

/** Prefix of pg's error for a statement refused before sending on a dead client. */
const UNQUERYABLE = "Client has encountered a connection error and is not queryable";

/** Longest wait for a CancelRequest to be delivered. */
const CANCEL_TIMEOUT_MS = 2_000;

/** The parts of pg's client used for cancellation that its types leave out. */
interface BackendKey {
  processID: number | null;
  secretKey: number | null;
}

/**
 * Cancels the statement running on a backend by sending a CancelRequest on
 * a fresh connection, as libpq's PQcancel does. node-postgres has no public
 * API for this. Resolves once the server has closed the cancel connection.
 */
async function sendCancel(host: string, port: number, key: BackendKey): Promise<void> {
  if (key.processID === null || key.secretKey === null) return;
  const { connect } = await import("node:net");
  const message = new DataView(new ArrayBuffer(16));
  message.setInt32(0, 16);
  message.setInt32(4, 80877102); // CancelRequest code: 1234 << 16 | 5678
  message.setInt32(8, key.processID);
  message.setInt32(12, key.secretKey);
  await new Promise<void>((resolve) => {
    const socket = connect({ host, port }, () => {
      socket.end(new Uint8Array(message.buffer));
    });
    // A hung host would keep this connection (and the caller) waiting forever.
    const timer = setTimeout(() => socket.destroy(), CANCEL_TIMEOUT_MS);
    socket.on("close", () => clearTimeout(timer));
    // The server never answers a CancelRequest; it just closes. Errors only
    // mean the cancel could not be delivered, and the statement's own
    // outcome will tell the caller what happened.
    socket.on("error", () => {});
    socket.on("close", () => resolve());
  });
}

/** Waits for a pooled client, giving up (and returning the client later) when `signal` aborts. */
function acquire(pool: pg.Pool, signal: AbortSignal): Promise<pg.PoolClient> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    let abandoned = false;
    const onAbort = () => {
      abandoned = true;
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    pool.connect().then(
      (client) => {
        signal.removeEventListener("abort", onAbort);
        if (abandoned) client.release();
        else resolve(client);
      },
      (err) => {
        signal.removeEventListener("abort", onAbort);
        if (!abandoned) reject(err);
      },
    );
  });
}

/** Last successful probe of a node. */
export interface ProbeSample {
  /** Role the server reported. */
  readonly role: NodeRole;
  /** Round trip of the probe in ms. */
  readonly latencyMs: number;
  /** WAL position: current insert LSN on a primary, last replayed LSN on a replica. */
  readonly lsn: bigint | undefined;
  /** `now() - pg_last_xact_replay_timestamp()` on a replica, in ms. */
  readonly replayAgeMs: number | undefined;
  /** When the probe finished (performance.now()). */
  readonly at: number;
}

/**
 * A node of the cluster. Internal: users see nodes through `stats()` and
 * `health()`.
 */
export class Node implements BalancerNode {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly url: string;
  readonly redactedUrl: string;
  readonly configuredRole: NodeRole;
  readonly maxConns: number;
  readonly tracer: Tracer | undefined;
  readonly pool: pg.Pool;

  /** Role as last reported by the server (the config's until the first probe). */
  role: NodeRole;
  /** Whether queries may be routed here. */
  healthy = true;
  /** Consecutive failed probes. */
  probeFailures = 0;
  /** Last successful probe. */
  lastProbe: ProbeSample | undefined;
  /** The error that took the node down, cleared when it comes back. */
  lastError: unknown;
  /** While down: earliest time (performance.now()) for the next probe. */
  nextProbeAt = 0;

  readonly #connectTimeoutMs: number;

  /** Every open client, busy or idle, or being closed: what a forced close must cut. */
  readonly #clients = new Set<pg.PoolClient>();

  /** Durations (ms) of the last {@linkcode LATENCY_WINDOW} attempts, a ring buffer. */
  readonly #latencies = new Float64Array(LATENCY_WINDOW);
  #latencyCount = 0;

  queries = 0;
  errors = 0;
  retries = 0;
  inFlight = 0;

  /**
   * Creates the node and its pool (no connection is opened yet).
   *
   * @param config Resolved node settings.
   * @param onPoolError Called when an idle pooled connection dies.
   */
  constructor(config: ResolvedNode, onPoolError: (node: Node, err: Error) => void) {
    this.name = config.name;
    this.host = config.host;
    this.port = config.port;
    this.url = config.url;
    this.redactedUrl = config.redactedUrl;
    this.configuredRole = config.configuredRole;
    this.role = config.configuredRole;
    this.maxConns = config.pool.max;
    this.tracer = config.tracer;
    this.#connectTimeoutMs = config.pool.connectTimeoutMs;
    const connectTimeoutMs = config.pool.connectTimeoutMs;
    this.pool = new pg.Pool({
      connectionString: config.url,
      max: config.pool.max,
      min: config.pool.min,
      idleTimeoutMillis: config.pool.idleTimeoutMs,
      maxLifetimeSeconds: config.pool.maxLifetimeMs / 1000,
      fallback_application_name: "dbx",
      // Not pg-pool's connectionTimeoutMillis: it arms a timer on every
      // checkout, even when a connection is free (a measurable share of a
      // short query's cost). New connections get the timeout themselves, and
      // acquire() bounds the wait only when the pool is exhausted.
      Client: class extends pg.Client {
        constructor(options?: pg.ClientConfig) {
          super({ ...options, connectionTimeoutMillis: connectTimeoutMs });
        }
      },
    });
    // Without a listener, an idle connection dying (server restart, network
    // drop) emits an unhandled 'error' and takes the whole process down.
    this.pool.on("error", (err) => onPoolError(this, err));
    // pg-pool listens for a client's errors only while it is idle. A client
    // checked out (a statement or a transaction in progress) that loses its
    // connection would emit an unhandled 'error'; the statement's own
    // rejection already reports it, and release() drops the dead client.
    this.pool.on("connect", (client) => {
      client.on("error", ignoreError);
      this.#clients.add(client);
    });
    this.pool.on("remove", (client) => this.#clients.delete(client));
  }

  /**
   * Runs one statement once on this node, on a pooled connection. Errors
   * raised before the statement was handed to a connection are marked so
   * {@linkcode wasNotSent} is true. With a `signal`, aborting cancels the
   * wait for a connection, or the statement on the server.
   *
   * @param sql Statement text.
   * @param args Bind parameters.
   * @param signal Cancels the wait for a connection, or the running statement.
   * @returns The driver's result.
   */
  async run(
    sql: string,
    args: readonly unknown[] | undefined,
    signal?: AbortSignal,
  ): Promise<pg.QueryResult> {
    const client = await this.acquire(signal);
    try {
      return await this.runOn(client, sql, args, signal);
    } finally {
      this.release(client);
    }
  }

  /**
   * Takes a connection from the pool. A failure is marked as not sent.
   *
   * @param signal Gives up waiting when it aborts.
   * @returns A pooled client; hand it back with {@linkcode release}.
   */
  async acquire(signal?: AbortSignal): Promise<pg.PoolClient> {
    const pool = this.pool;
    const exhausted = pool.idleCount === 0 && pool.totalCount >= this.maxConns;
    try {
      if (!exhausted) {
        return signal === undefined ? await pool.connect() : await acquire(pool, signal);
      }
      // Every connection is busy: wait for one, but not longer than a connect may take.
      const wait = new AbortController();
      const timer = setTimeout(
        () =>
          wait.abort(
            new Error(`timeout exceeded when trying to connect (${this.#connectTimeoutMs} ms)`),
          ),
        this.#connectTimeoutMs,
      );
      try {
        return await acquire(
          pool,
          signal === undefined ? wait.signal : AbortSignal.any([signal, wait.signal]),
        );
      } finally {
        clearTimeout(timer);
      }
    } catch (err) {
      throw markNotSent(err);
    }
  }

  /**
   * Runs one statement on a connection already taken from this node's pool
   * (a pooled attempt or a transaction's pinned connection).
   *
   * @param client The connection.
   * @param sql Statement text.
   * @param args Bind parameters.
   * @param signal Aborting cancels the statement on the server.
   * @returns The driver's result.
   */
  async runOn(
    client: pg.PoolClient,
    sql: string,
    args: readonly unknown[] | undefined,
    signal?: AbortSignal,
  ): Promise<pg.QueryResult> {
    let cancel: Promise<void> | undefined;
    try {
      if (signal === undefined) return await client.query(sql, args as unknown[] | undefined);
      if (signal.aborted) throw markNotSent(signal.reason);
      const onAbort = () => {
        cancel = sendCancel(this.host, this.port, client as unknown as BackendKey);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      try {
        return await client.query(sql, args as unknown[] | undefined);
      } finally {
        signal.removeEventListener("abort", onAbort);
      }
    } catch (err) {
      // pg refuses, without writing anything, a statement on a client whose
      // socket already failed: such a statement can be re-sent safely.
      if (err instanceof Error && err.message.startsWith(UNQUERYABLE)) markNotSent(err);
      // A cancel is consumed by the statement only when it failed with 57014.
      if (cancel !== undefined && (err as { code?: unknown }).code === "57014") cancel = undefined;
      throw err;
    } finally {
      if (cancel !== undefined) {
        // The statement ended some other way: the cancel may still land on a
        // later statement, so this connection must not be reused.
        strayCancel.add(client);
        await cancel.catch(() => {});
      }
    }
  }

  /**
   * Hands a connection back. It is pooled again only when it is idle: not
   * inside a transaction, not broken, and with no cancel in flight that could
   * hit the next user's statement. Otherwise it is destroyed.
   *
   * @param client A client from {@linkcode acquire}.
   * @param destroy Destroy it regardless.
   */
  release(client: pg.PoolClient, destroy = false): void {
    const reuse = !destroy && client.getTransactionStatus() === "I" && !strayCancel.has(client);
    client.release(reuse ? undefined : true);
  }

  /**
   * Wraps a driver error raised on this node into a {@linkcode DbxError}
   * naming the node, keeping the driver error as `cause`.
   *
   * @param err The driver error.
   * @returns A DbxError for the caller.
   */
  wrap(err: unknown): DbxError {
    if (err instanceof DbxError) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new DbxError(`${message} (node ${this.name})`, { cause: err, node: this.name });
  }

  /**
   * Ends the pool: running statements may finish and idle connections close
   * gracefully; after `graceMs` every socket still open is cut.
   *
   * @param graceMs How long to wait before cutting connections.
   * @returns Resolves when every connection is closed.
   */
  async end(graceMs: number): Promise<void> {
    const ended = this.pool.end().catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    const graceOver = new Promise<boolean>((resolve) => {
      timer = setTimeout(resolve, graceMs, true);
    });
    const forced = await Promise.race([ended.then(() => false), graceOver]);
    clearTimeout(timer);
    if (forced) {
      // pg-pool has no way to abort busy clients, and a graceful close of an
      // idle one waits for a server that may never answer (a hung host).
      for (const c of this.#clients) {
        (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream
          .destroy();
      }
      await ended;
    }
  }

  /**
   * Cuts every connection of this node now (busy ones included): their
   * statements fail with a connection error, and the pool drops them. Used
   * when the node stopped answering, so nothing waits on it forever.
   */
  cutConnections(): void {
    for (const c of this.#clients) {
      (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    }
  }

  /**
   * Records the duration of one attempt for the latency percentiles.
   *
   * @param ms Duration in milliseconds.
   */
  recordLatency(ms: number): void {
    this.#latencies[this.#latencyCount++ % LATENCY_WINDOW] = ms;
  }

  /**
   * Latency percentiles over the recorded window.
   *
   * @returns p50 and p99 in ms, or undefined before any attempt.
   */
  latencyPercentiles(): { p50: number; p99: number } | undefined {
    const n = Math.min(this.#latencyCount, LATENCY_WINDOW);
    if (n === 0) return undefined;
    const sorted = this.#latencies.slice(0, n).sort();
    const at = (q: number) => sorted[Math.min(n - 1, Math.ceil(q * n) - 1)]!;
    return { p50: at(0.5), p99: at(0.99) };
  }

  /** Pool counts for stats. */
  poolCounts(): { total: number; idle: number; waiting: number } {
    return {
      total: this.pool.totalCount,
      idle: this.pool.idleCount,
      waiting: this.pool.waitingCount,
    };
  }
}
