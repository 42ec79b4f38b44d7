/**
 * One server behind the cluster: its `pg.Pool` and pipelined connections,
 * identity, state and counters. The state (role, health, last probe) is an immutable snapshot
 * that only the health checker replaces; the counters are moved only by the attempt runner
 * (`attempt.ts`), its latency (`latency.ts`) by that runner and the probes. Everything else reads.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import { clientEnd, connectPool, destroySocket, keepQueues, usePassword } from "./pg_internals.ts";
import { useRowParser } from "./pg_parser.ts";
import { rowTypes } from "./pg_types.ts";
import { Lease } from "./lease.ts";
import { AttemptCounters } from "./node_counters.ts";
import type { BalancerNode } from "../call/balancer.ts";
import type { ResolvedNode } from "../config/config.ts";
import { DbxError, withAdvice } from "../errors.ts";
import { markNotSent, PoolExhaustedError } from "../failure.ts";
import { Pipes, type PipeSettings } from "./pipeline.ts";
import { sendCached, type StatementCache, statementMessage } from "./statement_cache.ts";
import type { NodeRole, Tracer } from "../observe/observe.ts";
import { type PgTarget, pgTarget } from "../config/tls.ts";

export { LATENCY_WINDOW } from "./node_counters.ts";

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
  /**
   * The checker's probe sequence number, taken when the probe started: a
   * probe with a larger number than {@linkcode HealthChecker.probeSeq} read at
   * some moment started after that moment (sessions' read-your-writes).
   */
  readonly seq: number;
}

/** What the health checker knows of a node; replaced whole, never edited. */
export interface NodeState {
  /** Role as last reported by the server (the config's until the first probe). */
  readonly role: NodeRole;
  /** Whether statements may be routed here. */
  readonly healthy: boolean;
  /** Last successful probe. */
  readonly probe: ProbeSample | undefined;
  /** Why the node is down, or (still up) why its last probe failed; undefined after a success. */
  readonly error: unknown;
  /** Consecutive failed probes. */
  readonly probeFailures: number;
  /** Consecutive probes that got no answer in time (a hung host, or a very busy one). */
  readonly probeTimeouts: number;
  /** While down: earliest time (performance.now()) for the next probe. */
  readonly nextProbeAt: number;
  /** While down: when it went down (performance.now()). */
  readonly downSince: number;
}

function ignoreError(): void {}

/** What a node shares with its cluster beyond its own config. */
export interface NodeOptions {
  /** Pipelining settings; undefined when off. */
  readonly pipeline?: PipeSettings | undefined;
  /** The cluster's statement names; undefined when the cache is off. */
  readonly statements?: StatementCache | undefined;
  /** Value parsers, when not pg's. */
  readonly types?: pg.CustomTypesConfig | undefined;
  /** Keep a histogram of round trips for a recent p95 (hedged reads). */
  readonly p95?: boolean | undefined;
}

/**
 * A node of the cluster. Internal: users see nodes through `stats()`,
 * `health()` and `cluster.node(name)`.
 */
export class Node extends AttemptCounters implements BalancerNode {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly configuredRole: NodeRole;
  readonly maxConns: number;
  readonly tracer: Tracer | undefined;
  /** URL (with its password), TLS settings and password: private, so no inspect or JSON shows them. */
  readonly #target: PgTarget;
  readonly #pool: pg.Pool;
  /** Whether the pool has no connection free, nor room for one (for `Pipes.pick`). */
  readonly #poolBusy = (): boolean =>
    this.#pool.idleCount === 0 && this.#pool.totalCount >= this.maxConns;
  readonly #pipes: Pipes | undefined;
  readonly #statements: StatementCache | undefined;
  readonly #connectTimeoutMs: number;
  readonly #onPoolError: (node: Node, err: Error) => void;
  #state: NodeState;

  /** Every open client until its `end` event: what a forced close cuts and close() waits for. */
  readonly #clients = new Map<pg.PoolClient, Promise<void>>();

  /**
   * Creates the node and its pool (no connection is opened yet).
   *
   * @param config Resolved node settings.
   * @param onPoolError Called when an idle pooled or pipelined connection dies.
   * @param options Pipelining and the statement cache.
   */
  constructor(
    config: ResolvedNode,
    onPoolError: (node: Node, err: Error) => void,
    options: NodeOptions = {},
  ) {
    super(options.p95 === true);
    this.name = config.name;
    this.#onPoolError = onPoolError;
    this.host = config.host;
    this.port = config.port;
    const target = this.#target = pgTarget(config);
    this.configuredRole = config.configuredRole;
    this.maxConns = config.pool.max;
    this.tracer = config.tracer;
    this.#state = {
      role: config.configuredRole,
      healthy: true,
      probe: undefined,
      error: undefined,
      probeFailures: 0,
      probeTimeouts: 0,
      nextProbeAt: 0,
      downSince: 0,
    };
    const connectTimeoutMs = this.#connectTimeoutMs = config.pool.connectTimeoutMs;
    this.#statements = options.statements;
    this.#pipes = options.pipeline === undefined ? undefined : new Pipes(
      target,
      connectTimeoutMs,
      options.pipeline,
      rowTypes(options.types),
      config.pool.idleTimeoutMs,
      (err) => onPoolError(this, err),
    );
    this.#pool = new pg.Pool({
      ...target as pg.ClientConfig,
      max: config.pool.max,
      min: config.pool.min,
      idleTimeoutMillis: config.pool.idleTimeoutMs,
      maxLifetimeSeconds: config.pool.maxLifetimeMs / 1000,
      fallback_application_name: "dbx",
      types: rowTypes(options.types),
      // Not pg-pool's connectionTimeoutMillis: it arms a timer on every checkout, even when a
      // connection is free. New connections get the timeout themselves, and acquire() bounds
      // the wait only when the pool is exhausted.
      Client: class extends pg.Client {
        constructor(options?: pg.ClientConfig) {
          super({ ...options, connectionTimeoutMillis: connectTimeoutMs });
          usePassword(this, target);
          keepQueues(this);
          useRowParser(this);
        }
      },
    });
    // Without a listener, an idle connection dying (server restart, network
    // drop) emits an unhandled 'error' and takes the whole process down.
    this.#pool.on("error", (err) => onPoolError(this, err));
    // pg-pool listens for a client's errors only while it is idle. A client
    // checked out that loses its connection would emit an unhandled 'error';
    // the statement's own rejection already reports it.
    this.#pool.on("connect", (client) => {
      client.on("error", ignoreError);
      this.#clients.set(client, clientEnd(client).then(() => void this.#clients.delete(client)));
    });
  }

  /**
   * A connection died after its holder released it (the lease's rule):
   * reported like an idle pooled connection that died.
   *
   * @param err The connection's error.
   */
  connectionLost(err: Error): void {
    this.#onPoolError(this, err);
  }

  /** URL, TLS settings and password every connection to this node starts from (secret: never logged). */
  get target(): PgTarget {
    return this.#target;
  }

  /** The health checker's latest snapshot of this node. */
  get state(): NodeState {
    return this.#state;
  }

  /** Replaces the state snapshot (the health checker only). @param next The new snapshot. */
  setState(next: NodeState): void {
    this.#state = next;
  }

  /** Role as last reported by the server. */
  get role(): NodeRole {
    return this.#state.role;
  }

  /** Whether statements may be routed here. */
  get healthy(): boolean {
    return this.#state.healthy;
  }

  /** Pool counts for stats. */
  poolCounts(): { total: number; idle: number; waiting: number } {
    const pool = this.#pool;
    const pipes = this.#pipes?.counts();
    return {
      total: pool.totalCount + (pipes?.total ?? 0),
      idle: pool.idleCount + (pipes?.idle ?? 0),
      waiting: pool.waitingCount,
    };
  }

  /**
   * Leases a connection from the pool. A failure is marked as not sent.
   *
   * @param signal Gives up waiting when it aborts.
   * @returns The lease; hand it back with `lease.release()`.
   */
  async acquire(signal?: AbortSignal): Promise<Lease<Node>> {
    return new Lease(this, await this.#connect(signal), this.#statements);
  }

  async #connect(signal: AbortSignal | undefined): Promise<pg.PoolClient> {
    const pool = this.#pool;
    try {
      if (pool.idleCount > 0 || pool.totalCount < this.maxConns) {
        return signal === undefined ? await pool.connect() : await connectPool(pool, signal);
      }
      // Every connection is busy: wait for one, but not longer than a connect may take.
      const ms = this.#connectTimeoutMs;
      const wait = new AbortController();
      const timer = setTimeout(
        () => wait.abort(new PoolExhaustedError(ms)),
        ms,
      );
      try {
        return await connectPool(
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
   * A new connection set up exactly like the pool's (URL, TLS, value parsers,
   * application name, connect timeout) but outside it: for a session that
   * outlives statements (LISTEN, a change stream). The caller connects and ends it.
   *
   * @param options `replication: "database"` for a logical replication connection.
   * @returns An unconnected client.
   */
  dedicatedClient(options: { replication?: "database" } = {}): pg.Client {
    const pool = this.#pool as pg.Pool & { Client: typeof pg.Client };
    // pg sends `replication` in the startup packet; @types/pg does not list it.
    return new pool.Client({ ...pool.options, ...options } as pg.ClientConfig);
  }

  /**
   * Runs one statement on this node: pipelined when it needs no session
   * (no `signal`, or `pipeable`) and a pipe has room, else on a pooled connection. A
   * node-postgres query config's `rowMode` and `types` reach pg as they are
   * (the `pgPool` facade, the Kysely dialect); a `name` gives way to the
   * statement cache's.
   *
   * @param config The statement.
   * @param signal Cancels the wait for a connection, or the statement on the server.
   * @param pipeable May join a pipe even with a signal, which then cannot cancel it (a
   * hedged read's loser: the pipes take only statements that ran fast, it is left to finish).
   * @param now `performance.now()`: its attempt's start, when that was just now.
   * @returns The driver's result.
   */
  send(
    config: pg.QueryConfig,
    signal: AbortSignal | undefined,
    pipeable = signal === undefined,
    now = performance.now(),
  ): Promise<pg.QueryResult> {
    // A cancel request stops whatever runs on a backend: a statement with a
    // signal must be alone on its connection, so it never joins a pipe.
    const pipes = pipeable ? this.#pipes : undefined;
    if (pipes === undefined) return this.#runPooled(config, signal, pipes);
    const pipe = pipes.pick(config.text, this.#poolBusy, now);
    if (pipe === undefined) return this.#runPooled(config, signal, pipes);
    return sendCached(pipe.client, this.#statements, config, pipe.send);
  }

  /** Runs one statement on a leased connection. */
  #runPooled(
    config: pg.QueryConfig,
    signal: AbortSignal | undefined,
    pipes: Pipes | undefined,
  ): Promise<pg.QueryResult> {
    return this.leased(signal, async (lease) => {
      const started = pipes === undefined ? 0 : performance.now();
      const result = await lease.send(config, signal);
      pipes?.tookPooled(config.text, performance.now() - started);
      return result;
    });
  }

  /**
   * Acquire → work → release: runs `work` on a leased connection and hands
   * it back by the lease's rule.
   *
   * @param signal Cancels the wait for a connection.
   * @param work What to do with it.
   * @returns What `work` returned.
   */
  async leased<R>(
    signal: AbortSignal | undefined,
    work: (lease: Lease<Node>) => Promise<R>,
  ): Promise<R> {
    const lease = await this.acquire(signal);
    try {
      return await work(lease);
    } finally {
      lease.release();
    }
  }

  /**
   * Wraps an error raised on this node into a {@linkcode DbxError} naming the
   * node (and a statement by its text, not dbx's name for it), keeping the original as `cause`.
   *
   * @param err The error.
   * @returns A DbxError for the caller.
   */
  wrap(err: unknown): DbxError {
    if (err instanceof DbxError) return err;
    const message = withAdvice(
      err,
      statementMessage(err, err instanceof Error ? err.message : String(err)),
    );
    return new DbxError(`${message} (node ${this.name})`, { cause: err, node: this.name });
  }

  /**
   * Ends the pool: running statements may finish and idle connections close
   * gracefully; after `graceMs` every socket still open is cut. Resolves only
   * when every client emitted `end`, so no pg-pool timer is left behind.
   *
   * @param graceMs How long to wait before cutting connections.
   * @returns Resolves when every connection is closed.
   */
  async end(graceMs: number): Promise<void> {
    const pipesEnded = this.#pipes?.end();
    const ended = Promise.all([this.#pool.end().catch(() => {}), pipesEnded]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const graceOver = new Promise<boolean>((resolve) => {
      timer = setTimeout(resolve, graceMs, true);
    });
    const forced = await Promise.race([ended.then(() => false), graceOver]);
    clearTimeout(timer);
    if (forced) {
      // pg-pool cannot abort busy clients, and a graceful close of an idle
      // one waits for a server that may never answer (a hung host).
      this.cutConnections();
      // Not pg-pool's end(): it waits for every client to be handed back, and one
      // held by a caller that never releases it (a facade client left in BEGIN)
      // never is. Its connection is cut: waiting for every connection's end is enough.
      await pipesEnded;
    }
    await Promise.all(this.#clients.values());
  }

  /**
   * Cuts every connection of this node now (busy ones included): their
   * statements fail with a connection error, and the pool drops them.
   */
  cutConnections(): void {
    this.#pipes?.cut();
    for (const c of this.#clients.keys()) destroySocket(c);
  }
}
