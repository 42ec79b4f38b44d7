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

export { Cluster } from "./src/cluster/cluster.ts";
export { connect } from "./src/cluster/connect.ts";
export type {
  ClusterStats,
  HealthReport,
  NodeHealth,
  NodeStats,
  SummedStat,
} from "./src/cluster/stats.ts";
export type {
  CommandResult,
  Executor,
  QueryOptions,
  ReadOptions,
  Row,
  Tx,
} from "./src/executor.ts";
export type { Client, Component } from "./src/cluster/component.ts";
export { HEALTH_CHECK_DEFAULTS, POOL_DEFAULTS, RETRY_DEFAULTS } from "./src/config/defaults.ts";
export { resolveConfig } from "./src/config/resolve.ts";
export { redactUrl } from "./src/config/redact.ts";
export type {
  ClusterConfig,
  HealthCheckConfig,
  NodeConfig,
  PoolConfig,
  ResolvedConfig,
  ResolvedNode,
  RetryConfig,
  WithDefaults,
} from "./src/config/config.ts";
export type { TypeParsers } from "./src/config/type_parsers.ts";
export type { HedgeConfig, ResolvedHedge } from "./src/config/hedge.ts";
export type { Pem, SslConfig } from "./src/config/tls.ts";
export { latencyAware, leastInFlight, random, roundRobin } from "./src/call/balancer.ts";
export type { Balancer, BalancerNode, LatencyAwareOptions } from "./src/call/balancer.ts";
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
export { backoffDelay, delay } from "./src/call/retry.ts";
export type { BackoffOptions } from "./src/call/retry.ts";
export { currentExecutor, withExecutor } from "./src/cluster/context.ts";
export {
  type Session,
  type SessionOptions,
  withSession,
  type WithSessionOptions,
} from "./src/call/session.ts";
export { collect, collectOne, RowValidationError } from "./src/rows.ts";
export type {
  RowMapper,
  StandardSchemaIssue,
  StandardSchemaResult,
  StandardSchemaV1,
} from "./src/rows.ts";
export type { ConnectionOptions } from "./src/call/connection.ts";
export type { IsolationLevel, RunTxOptions, TxOptions } from "./src/tx/run_tx.ts";
export type { PgPool, PgPoolOptions, PgRoute } from "./src/compat/pg_pool.ts";
export { BatchError } from "./src/tx/batch.ts";
export type { BatchOptions, BatchQuery, BatchResult } from "./src/tx/batch.ts";
export { encodeCopyValue } from "./src/tx/copy_values.ts";
export type { CopyOptions, CopyRows } from "./src/tx/copy.ts";
export type {
  ListenOptions,
  NotificationHandler,
  NotificationInfo,
  ReconnectInfo,
  Subscription,
} from "./src/listen/listen.ts";
export type {
  Change,
  ChangeHandler,
  ChangeReconnectInfo,
  ChangeSubscription,
  SubscribeOptions,
} from "./src/listen/subscribe.ts";
export { ReplicationSetupError } from "./src/listen/slot_check.ts";
export type { ReadStreamOptions, StreamOptions } from "./src/tx/stream.ts";
export { noopLogger } from "./src/observe/observe.ts";
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
} from "./src/observe/observe.ts";
