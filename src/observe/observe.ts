/**
 * Observability contracts: a structural {@linkcode Logger}, optional
 * {@linkcode MetricsHook} callbacks and a {@linkcode Tracer}. Every hook is
 * optional, and a hook that throws is caught and logged: observing a query
 * never breaks it. The guarded calls themselves are in `observer.ts`.
 *
 * @module
 */

// The internal runtime lives in its own file; re-exported so `from "./observe.ts"` keeps working.
export { callHook, log, Observer } from "./observer.ts";
export type { Observation, ObservedNode } from "./observer.ts";

/**
 * Role of a node as last reported by the server (or the config before the
 * first probe). `"unknown"`: a node given in `nodes` or a multi-host URL that
 * has not answered a probe yet; no statement is routed to it until it has.
 *
 * @example
 * ```ts
 * import { connect, type NodeRole } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const roles: NodeRole[] = cluster.stats().nodes.map((n) => n.role);
 * ```
 */
export type NodeRole = "primary" | "replica" | "unknown";

/**
 * Structured logger. `console` satisfies it as is; so do thin adapters over
 * pino, winston or `@std/log`.
 *
 * @example Log to the console
 * ```ts
 * import type { Logger } from "@codelab/dbx";
 *
 * const logger: Logger = console;
 * logger.warn("slow query", { node: "db1:5432", durationMs: 812 });
 * ```
 */
export interface Logger {
  /** Verbose diagnostics. */
  debug(msg: string, attrs?: Record<string, unknown>): void;
  /** Notable events: a node coming back, a role change. */
  info(msg: string, attrs?: Record<string, unknown>): void;
  /** Degradations: a node down, a slow query, a retry. */
  warn(msg: string, attrs?: Record<string, unknown>): void;
  /** Failures that need attention. */
  error(msg: string, attrs?: Record<string, unknown>): void;
}

/**
 * A logger that drops everything: the default.
 *
 * @example
 * ```ts
 * import { noopLogger } from "@codelab/dbx";
 *
 * noopLogger.warn("dropped"); // prints nothing
 * ```
 */
export const noopLogger: Logger = Object.freeze({
  debug() {},
  info() {},
  warn() {},
  error() {},
});

/**
 * What a query hook is told about one attempt of a statement.
 *
 * @example
 * ```ts
 * import type { MetricsHook, QueryEvent } from "@codelab/dbx";
 *
 * const started = (e: QueryEvent) => console.log(`${e.node} (${e.role}) attempt ${e.attempt}: ${e.sql}`);
 * const metrics: MetricsHook = { onQueryStart: started };
 * ```
 */
export interface QueryEvent {
  /** Node name (password-free). */
  readonly node: string;
  /** Role of the node at the time of the attempt. */
  readonly role: NodeRole;
  /** The SQL text. */
  readonly sql: string;
  /** Number of arguments bound (never their values). */
  readonly argCount: number;
  /** 1 for the first attempt, 2 for the first retry, ... */
  readonly attempt: number;
}

/**
 * A finished attempt.
 *
 * @example
 * ```ts
 * import type { MetricsHook } from "@codelab/dbx";
 *
 * const metrics: MetricsHook = {
 *   onQueryEnd: (e) => console.log(e.node, Math.round(e.durationMs), e.error === undefined ? "ok" : "failed"),
 * };
 * ```
 */
export interface QueryEndEvent extends QueryEvent {
  /** Wall time of the attempt in milliseconds. */
  readonly durationMs: number;
  /** The failure, when the attempt failed. */
  readonly error?: unknown;
}

/**
 * A retry about to happen.
 *
 * @example
 * ```ts
 * import type { MetricsHook } from "@codelab/dbx";
 *
 * const metrics: MetricsHook = { onRetry: (e) => console.log(`retry after attempt ${e.attempt} on ${e.node}`) };
 * ```
 */
export interface RetryEvent {
  /** The attempt that just failed (1-based). */
  readonly attempt: number;
  /** The node it failed on, when one was picked. */
  readonly node: string | undefined;
  /** Backoff before the next attempt, 0 when moving straight to another node. */
  readonly delayMs: number;
  /** Why the attempt failed. */
  readonly error: unknown;
}

/**
 * A node's health changed.
 *
 * @example
 * ```ts
 * import type { MetricsHook } from "@codelab/dbx";
 *
 * const metrics: MetricsHook = {
 *   onNodeDown: (e) => console.warn(`${e.node} (${e.role}) down`, e.error),
 *   onNodeUp: (e) => console.info(`${e.node} up`),
 * };
 * ```
 */
export interface NodeEvent {
  /** Node name. */
  readonly node: string;
  /** Role of the node. */
  readonly role: NodeRole;
  /** Why it went down (only for `onNodeDown`). */
  readonly error?: unknown;
}

/**
 * A node's role changed (promotion or demotion).
 *
 * @example
 * ```ts
 * import type { MetricsHook } from "@codelab/dbx";
 *
 * const metrics: MetricsHook = { onRoleChange: (e) => console.info(`${e.node}: ${e.from} -> ${e.to}`) };
 * ```
 */
export interface RoleChangeEvent {
  /** Node name. */
  readonly node: string;
  /** Previous role. */
  readonly from: NodeRole;
  /** New role. */
  readonly to: NodeRole;
}

/**
 * A read went to the primary because no replica was eligible.
 *
 * @example
 * ```ts
 * import type { MetricsHook } from "@codelab/dbx";
 *
 * const metrics: MetricsHook = { onReplicaFallback: (e) => console.debug("read on primary:", e.reason) };
 * ```
 */
export interface ReplicaFallbackEvent {
  /** Why no replica was used. */
  readonly reason: "no_healthy_replica" | "lagging" | "not_caught_up";
}

/**
 * Optional metrics callbacks. Each may be left out; each is called
 * synchronously and a throw is caught and logged.
 *
 * @example Count queries per node
 * ```ts
 * import type { MetricsHook } from "@codelab/dbx";
 *
 * const counts = new Map<string, number>();
 * const metrics: MetricsHook = {
 *   onQueryEnd: (e) => counts.set(e.node, (counts.get(e.node) ?? 0) + 1),
 * };
 * ```
 */
export interface MetricsHook {
  /** An attempt is about to be sent. */
  onQueryStart?(event: QueryEvent): void;
  /** An attempt finished (successfully or not). */
  onQueryEnd?(event: QueryEndEvent): void;
  /** A failed attempt will be retried. */
  onRetry?(event: RetryEvent): void;
  /** A node was marked down. */
  onNodeDown?(event: NodeEvent): void;
  /** A node came back after a successful probe. */
  onNodeUp?(event: NodeEvent): void;
  /** A read fell back to the primary. */
  onReplicaFallback?(event: ReplicaFallbackEvent): void;
  /** A node changed role. */
  onRoleChange?(event: RoleChangeEvent): void;
}

/**
 * What a tracer is told when an attempt starts.
 *
 * @example
 * ```ts
 * import type { TraceQueryInfo, Tracer } from "@codelab/dbx";
 *
 * const tracer: Tracer = {
 *   queryStart: (info: TraceQueryInfo) => `${info.host}:${info.port} ${info.sql}`,
 *   queryEnd: (label, outcome) => console.log(label, outcome.error ?? "ok"),
 * };
 * ```
 */
export interface TraceQueryInfo extends QueryEvent {
  /** Host the node listens on. */
  readonly host: string;
  /** Port the node listens on. */
  readonly port: number;
}

/**
 * How an attempt ended, for {@linkcode Tracer.queryEnd}.
 *
 * @example
 * ```ts
 * import type { TraceQueryOutcome, Tracer } from "@codelab/dbx";
 *
 * const tracer: Tracer = {
 *   queryStart: () => performance.now(),
 *   queryEnd: (_start, outcome: TraceQueryOutcome) => console.log(outcome.rowCount ?? outcome.error),
 * };
 * ```
 */
export interface TraceQueryOutcome {
  /** Rows affected or returned, on success. */
  readonly rowCount?: number;
  /** The failure, when the attempt failed. */
  readonly error?: unknown;
}

/**
 * Tracer pass-through (pgx's QueryTracer): `queryStart` returns a handle that
 * is given back to `queryEnd`.
 *
 * @example Time every attempt
 * ```ts
 * import type { Tracer } from "@codelab/dbx";
 *
 * const tracer: Tracer = {
 *   queryStart: () => performance.now(),
 *   queryEnd: (start, outcome) => console.log(performance.now() - (start as number), outcome.error),
 * };
 * ```
 */
export interface Tracer {
  /** Called before an attempt is sent; the result is passed to `queryEnd`. */
  queryStart(info: TraceQueryInfo): unknown;
  /** Called when the attempt finished. */
  queryEnd(handle: unknown, outcome: TraceQueryOutcome): void;
}
