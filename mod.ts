/**
 * dbx: a PostgreSQL cluster client for Deno and Bun.
 *
 * One {@linkcode Cluster} fronts a primary and its read replicas: write
 * methods (`exec`, `query`, `queryRow`) go to the node that currently is
 * primary, `read*` methods go to a healthy replica and fall back to the
 * primary. Failures are retried across nodes with backoff and jitter — a
 * write only when it provably never reached a server — and a background
 * checker follows each node's health and role.
 *
 * @example Quick start
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app"],
 * });
 * const users = await cluster.readQuery<{ id: number; name: string }>(
 *   "select id, name from users where org = $1",
 *   [42],
 * );
 * ```
 *
 * @module
 */

export { Cluster, connect } from "./src/cluster.ts";
export { ClusterBase } from "./src/cluster_base.ts";
export { ClusterStatements } from "./src/cluster_statements.ts";
export type { ClusterStats, HealthReport, NodeHealth, NodeStats } from "./src/stats.ts";
export type {
  CommandResult,
  Executor,
  QueryOptions,
  ReadOptions,
  Row,
  Tx,
} from "./src/executor.ts";
export type { Client, Component } from "./src/component.ts";
export {
  HEALTH_CHECK_DEFAULTS,
  POOL_DEFAULTS,
  redactUrl,
  resolveConfig,
  RETRY_DEFAULTS,
} from "./src/config.ts";
export type {
  ClusterConfig,
  HealthCheckConfig,
  NodeConfig,
  PoolConfig,
  ResolvedConfig,
  ResolvedNode,
  RetryConfig,
  TypeParsers,
} from "./src/config.ts";
export type { Pem, SslConfig } from "./src/tls.ts";
export { leastInFlight, random, roundRobin } from "./src/balancer.ts";
export type { Balancer, BalancerNode } from "./src/balancer.ts";
export {
  ClusterClosedError,
  ConfigError,
  DbxError,
  handleError,
  NoHealthyNodeError,
  NoRowsError,
  RetryExhaustedError,
} from "./src/errors.ts";
export {
  isConnectionError,
  isConstraintViolation,
  isRetryable,
  isSerializationFailure,
  mayHaveBeenApplied,
  pgErrorCode,
} from "./src/failure.ts";
export type { DbxErrorOptions, ErrorKind } from "./src/errors.ts";
export { backoffDelay, delay } from "./src/retry.ts";
export type { BackoffOptions } from "./src/retry.ts";
export { currentExecutor, withExecutor } from "./src/context.ts";
export { type Session, type SessionOptions, withSession } from "./src/session.ts";
export { collect, collectOne, RowValidationError } from "./src/rows.ts";
export type {
  RowMapper,
  StandardSchemaIssue,
  StandardSchemaResult,
  StandardSchemaV1,
} from "./src/rows.ts";
export type { IsolationLevel, RunTxOptions, TxOptions } from "./src/run_tx.ts";
export type { PgPool, PgPoolOptions, PgRoute } from "./src/pg_pool.ts";
export { BatchError } from "./src/batch.ts";
export type { BatchOptions, BatchQuery, BatchResult } from "./src/batch.ts";
export { encodeCopyValue } from "./src/copy.ts";
export type { CopyOptions, CopyRows } from "./src/copy.ts";
export type {
  ListenOptions,
  NotificationHandler,
  NotificationInfo,
  ReconnectInfo,
  Subscription,
} from "./src/listen.ts";
export type { ReadStreamOptions, StreamOptions } from "./src/stream.ts";
export { noopLogger } from "./src/observe.ts";
export type {
  Logger,
  MetricsHook,
  NodeEvent,
  NodeRole,
  QueryEndEvent,
  QueryEvent,
  ReplicaFallbackEvent,
  RetryEvent,
  RoleChangeEvent,
  TraceQueryInfo,
  TraceQueryOutcome,
  Tracer,
} from "./src/observe.ts";
