/**
 * Cluster configuration: the plain-object form of the Go library's
 * functional options and its documented defaults.
 * Eager validation ({@linkcode resolveConfig}) lives in `resolve.ts`
 * and is re-exported here.
 *
 * @module
 */

import type { Balancer } from "../call/balancer.ts";
import type { HedgeConfig } from "./hedge.ts";
import type { Logger, MetricsHook, Tracer } from "../observe/observe.ts";
import type { SslConfig } from "./tls.ts";
import type { TypeParsers } from "./type_parsers.ts";

/**
 * A settings object as validation leaves it: every field present, none
 * `undefined` (the defaults filled in).
 *
 * @example
 * ```ts
 * import { POOL_DEFAULTS, type WithDefaults, type PoolConfig } from "@codelab/dbx";
 *
 * const pool: WithDefaults<PoolConfig> = { ...POOL_DEFAULTS, max: 20 };
 * ```
 */
export type WithDefaults<T> = { [K in keyof T]-?: Exclude<T[K], undefined> };

/**
 * Per-node connection pool settings (one `pg.Pool` per node).
 *
 * @example
 * ```ts
 * import type { PoolConfig } from "@codelab/dbx";
 *
 * const pool: PoolConfig = { max: 20, min: 2, idleTimeoutMs: 10_000 };
 * ```
 */
export interface PoolConfig {
  /** Most connections open at once. @default 10 */
  max?: number | undefined;
  /** Connections kept open even when idle. @default 0 */
  min?: number | undefined;
  /** Close a connection idle for this long (0 = never). @default 30_000 */
  idleTimeoutMs?: number | undefined;
  /** Retire a connection after this long, once idle (0 = never). @default 3_600_000 */
  maxLifetimeMs?: number | undefined;
  /** Give up establishing a connection (or waiting for a free one) after this long. @default 5_000 */
  connectTimeoutMs?: number | undefined;
}

/**
 * How failed statements are retried (see the retry contract in the README).
 *
 * @example
 * ```ts
 * import { isConnectionError, type RetryConfig } from "@codelab/dbx";
 *
 * // Retry only connection failures, a little longer than the default.
 * const retry: RetryConfig = { maxAttempts: 5, baseDelayMs: 100, retryable: isConnectionError };
 * ```
 */
export interface RetryConfig {
  /** Attempts in total, the first included; 1 disables retries. @default 3 */
  maxAttempts?: number | undefined;
  /** Backoff base: the cap before jitter is `baseDelayMs * 2 ** (n - 1)`. @default 50 */
  baseDelayMs?: number | undefined;
  /** Upper bound of one backoff delay. @default 1_000 */
  maxDelayMs?: number | undefined;
  /**
   * When no primary is known (a failover in progress), how long a write or
   * `begin` waits for the checker to find one, re-probing every ~100 ms,
   * within the call's `signal` / `timeoutMs`; `0` fails at once with
   * `NoHealthyNodeError`.
   * @default 5_000
   */
  waitForPrimaryMs?: number | undefined;
  /**
   * Extra veto on retrying: return `false` to fail at once. It cannot make an
   * unsafe retry happen (a write that may have reached the server is never re-sent).
   * @default isRetryable
   */
  retryable?: ((err: unknown) => boolean) | undefined;
}

/**
 * Background health checking.
 *
 * @example
 * ```ts
 * import type { HealthCheckConfig } from "@codelab/dbx";
 *
 * const healthCheck: HealthCheckConfig = { intervalMs: 500, timeoutMs: 300, failuresBeforeDown: 2 };
 * ```
 */
export interface HealthCheckConfig {
  /** Time between probe rounds. @default 2_000 */
  intervalMs?: number | undefined;
  /** Bound on one probe (connect and query). @default 1_000 */
  timeoutMs?: number | undefined;
  /** Consecutive failed probes before a node is marked down. @default 1 */
  failuresBeforeDown?: number | undefined;
}

/**
 * One node given as an object, to name it or tune it.
 *
 * @example
 * ```ts
 * import type { NodeConfig } from "@codelab/dbx";
 *
 * const replica: NodeConfig = { name: "eu-replica", url: "postgres://app@db2:5432/app", pool: { max: 4 } };
 * ```
 */
export interface NodeConfig {
  /** Display name in stats, logs and errors. @default "host:port" of the URL */
  name?: string | undefined;
  /** `postgres://user:password@host:port/database?...` */
  url: string;
  /** Overrides of the cluster-wide pool settings for this node. @default {} */
  pool?: PoolConfig | undefined;
  /** Tracer for this node, overriding the cluster one. @default undefined */
  tracer?: Tracer | undefined;
  /**
   * TLS for this node's connections (pool, pipelined connections, health
   * probes): pg's `ssl` option. `true` verifies the server against the
   * system's CAs; an object can give the CA, a client certificate and key,
   * `rejectUnauthorized` and `servername`. Checked eagerly, never logged.
   * The URL's `sslmode` must agree with it; certificate files in the URL
   * (`sslrootcert`, ...) cannot be combined with it.
   * @default undefined (what the URL's `sslmode` says; pg's default is no TLS)
   */
  ssl?: boolean | SslConfig | undefined;
  /**
   * PostgreSQL settings for this node's connections, merged over the
   * cluster-wide {@linkcode ClusterConfig.session} (this node's value wins).
   * @default {}
   */
  session?: Record<string, string> | undefined;
  /**
   * This node's password, winning over the cluster-wide
   * {@linkcode ClusterConfig.password} and the URL's: a string, or a function
   * asked for each new connection to this node. Never logged.
   * @default the cluster's `password`, else the URL's password
   */
  password?: string | (() => string | Promise<string>) | undefined;
}

/**
 * Everything `connect()` accepts. Give the servers either as `master` (plus
 * `replicas`) or as `nodes`, exactly one of the two.
 *
 * @example
 * ```ts
 * import { connect, leastInFlight, type ClusterConfig } from "@codelab/dbx";
 *
 * const config: ClusterConfig = {
 *   master: "postgres://app@db1:5432/app",
 *   replicas: [{ name: "db2", url: "postgres://app@db2:5432/app", pool: { max: 20 } }],
 *   retry: { maxAttempts: 4 },
 *   healthCheck: { intervalMs: 500 },
 *   balancer: leastInFlight(),
 *   maxLagMs: 1_000,
 * };
 * await using cluster = await connect(config);
 * ```
 */
export interface ClusterConfig {
  /**
   * The node configured as primary (the servers have the last word on
   * roles). A multi-host URL (`postgres://h1,h2:5433/app`) makes each host a
   * node whose role is learned from the server. Required unless `nodes` is given.
   */
  master?: string | NodeConfig | undefined;
  /** Read replicas, with `master`. @default [] */
  replicas?: readonly (string | NodeConfig)[] | undefined;
  /**
   * Every server, instead of `master` and `replicas`: no role is assumed,
   * each node's role comes from the server (`pg_is_in_recovery()`), and
   * `connect()` resolves once the first probe round found the primary. Each
   * entry may be a multi-host URL; libpq's `target_session_attrs` and
   * `load_balance_hosts` are honoured (see the README).
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({
   *   nodes: ["postgres://app@db1:5432,db2:5432,db3:5432/app?target_session_attrs=read-write"],
   *   pool: { max: 20 },
   * });
   * ```
   */
  nodes?: readonly (string | NodeConfig)[] | undefined;
  /** Pool settings for every node. @default see {@linkcode PoolConfig} */
  pool?: PoolConfig | undefined;
  /** Retry policy. @default see {@linkcode RetryConfig} */
  retry?: RetryConfig | undefined;
  /** Health checking. @default see {@linkcode HealthCheckConfig} */
  healthCheck?: HealthCheckConfig | undefined;
  /** Replica selection among eligible replicas. @default latencyAware() */
  balancer?: Balancer | undefined;
  /**
   * Hedged reads: a `read*` call not answered after `afterMs` (or its node's
   * recent p95) is also sent to the next-best replica, first answer wins
   * (see {@linkcode HedgeConfig}). `false`: never.
   * @default false
   */
  hedge?: false | HedgeConfig | undefined;
  /**
   * PostgreSQL settings applied to every connection dbx opens (pool,
   * pipelined connections, health probes, LISTEN): sent at connect time in
   * the `options` startup parameter (`-c name=value`), so every session
   * starts with them and no reset loses them. Names are setting names
   * (`search_path`, `statement_timeout`, `app.tenant`), values strings. A
   * URL's own `options=-c name=value` settings apply too; these win over
   * them, and a node's own `session` wins over these. A setting the server
   * does not know makes it refuse the connection.
   * @default {}
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * await using cluster = await connect({
   *   master: "postgres://app@db1:5432/app",
   *   session: { search_path: "app, public", statement_timeout: "5s" },
   * });
   * ```
   */
  session?: Record<string, string> | undefined;
  /**
   * The password of every node (a node's own `password` wins), winning over
   * the URLs' passwords: a string, or a function asked each time dbx opens a
   * connection (pool, pipelined connections, health probes, LISTEN) and the
   * server asks for a password, so a rotated password or a short-lived token
   * (RDS IAM, Vault) is picked up by the next connection. A function that
   * throws or rejects fails that connection attempt like an unreachable node,
   * with an error naming the node and the cause. Cache an expensive token
   * yourself: a health probe's `healthCheck.timeoutMs` covers its connect,
   * this function included. Never logged or printed.
   * @default the URL's password
   *
   * @example
   * ```ts
   * import { connect } from "@codelab/dbx";
   *
   * declare function vaultPassword(): Promise<string>;
   * await using cluster = await connect({
   *   master: "postgres://app@db1:5432/app",
   *   password: () => vaultPassword(),
   * });
   * ```
   */
  password?: string | (() => string | Promise<string>) | undefined;
  /**
   * Where dbx logs node changes, retries and slow queries. Without one, each node that does not
   * answer at startup still gets one `console.warn`. @default silent (`noopLogger` silences all)
   */
  logger?: Logger | undefined;
  /** Metrics callbacks. @default undefined */
  metrics?: MetricsHook | undefined;
  /** Tracer for every node without its own. @default undefined */
  tracer?: Tracer | undefined;
  /** Log statements slower than this at warn level (undefined = off). @default undefined */
  slowQueryThresholdMs?: number | undefined;
  /**
   * Default `maxLagMs` for every read: replicas whose replay lag is above it
   * are skipped (a call's own `maxLagMs` overrides it).
   * @default undefined (any healthy replica)
   */
  maxLagMs?: number | undefined;
  /**
   * Automatic pipelining of statements that need no session of their own
   * (`exec`, `query`, `queryRow`, `readQuery`, `readQueryRow` without a
   * `signal` / `timeoutMs`, outside a transaction): they share up to
   * `connections` pipelined connections per node, up to `maxDepth` in flight
   * on each; the rest use the pool. Pipes open as the load grows (another
   * once each has 16 in flight) and close, down to one, after the pool's
   * `idleTimeoutMs` unused. `false` sends every statement on a pooled
   * connection.
   * @default { connections: 4, maxDepth: 64 }
   */
  pipeline?:
    | boolean
    | { connections?: number | undefined; maxDepth?: number | undefined }
    | undefined;
  /**
   * How result values are parsed, by type OID: pg's `types` option (the
   * shape of `pg.types`). Default: pg's parsers (`int8` and `numeric` come back
   * as strings, to lose no precision).
   * @default pg's built-in parsers
   *
   * @example bigint columns as BigInt
   * ```ts
   * import { connect } from "@codelab/dbx";
   * import pg from "pg";
   *
   * await using cluster = await connect({
   *   master: "postgres://app@db1:5432/app",
   *   types: {
   *     getTypeParser: (oid: number, format?: "text" | "binary") =>
   *       oid === 20 ? BigInt : pg.types.getTypeParser(oid, format),
   *   },
   * });
   * const { n } = await cluster.queryRow<{ n: bigint }>("select 9007199254740993::int8 as n");
   * ```
   */
  types?: TypeParsers | undefined;
  /**
   * Statement cache: statements with parameters run as named prepared
   * statements, so each connection parses a text once; this many per
   * connection, the least recently used deallocated to make room. `false`
   * turns it off (PgBouncer in transaction pooling mode).
   * @default 256
   */
  statementCache?: number | false | undefined;
  /**
   * `false`: `connect()` resolves once any node answers, even when none is
   * primary yet (reads work; writes wait or fail as `retry.waitForPrimaryMs` says).
   * @default true
   */
  requirePrimary?: boolean | undefined;
  /**
   * `true`: `connect()` waits (retry policy) for every node to answer, else fails with a
   * `NoHealthyNodeError` naming each node that did not, instead of starting on part of the cluster.
   * @default false
   */
  requireAllNodes?: boolean | undefined;
}

export type { ResolvedConfig, ResolvedNode } from "./resolved.ts";
