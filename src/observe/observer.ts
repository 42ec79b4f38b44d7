/**
 * The runtime side of observability: guarded calls of the user's logger,
 * metrics hooks and tracer, and the {@linkcode Observer} of attempts.
 * Internal; the contracts it serves are in `observe.ts`, which re-exports it.
 *
 * @module
 */

import type {
  Logger,
  MetricsHook,
  NodeRole,
  QueryEvent,
  TraceQueryOutcome,
  Tracer,
} from "./observe.ts";

/**
 * Calls one metrics hook, catching and logging anything it throws so that a
 * faulty hook never breaks a query.
 *
 * @param logger Where a throwing hook is reported.
 * @param hooks The hooks object (may be undefined).
 * @param name Which hook to call.
 * @param event Its argument.
 */
export function callHook<K extends keyof MetricsHook>(
  logger: Logger,
  hooks: MetricsHook | undefined,
  name: K,
  event: Parameters<NonNullable<MetricsHook[K]>>[0],
): void {
  const fn = hooks?.[name] as ((this: MetricsHook, e: typeof event) => void) | undefined;
  if (fn === undefined) return;
  try {
    fn.call(hooks!, event);
  } catch (error) {
    log(logger, "error", "dbx: metrics hook threw", { hook: name, error });
  }
}

/** Log levels of a {@linkcode Logger}. */
type Level = keyof Logger;

/**
 * Calls a logger method, swallowing what it throws: a logger never changes
 * the outcome of what it reports on.
 *
 * @param logger The logger.
 * @param level The method.
 * @param msg Message.
 * @param attrs Attributes.
 */
export function log(
  logger: Logger,
  level: Level,
  msg: string,
  attrs?: Record<string, unknown>,
): void {
  try {
    logger[level](msg, attrs);
  } catch {
    // A logger that throws has nowhere left to report to.
  }
}

/** Longest SQL text put in a log entry. */
const LOG_SQL_MAX = 1_000;

/** Where an observed attempt runs, as {@linkcode Observer.start} needs it. */
export interface ObservedNode {
  readonly name: string;
  readonly role: NodeRole;
  readonly host: string;
  readonly port: number;
  readonly tracer: Tracer | undefined;
}

/** An attempt in progress, from {@linkcode Observer.start} to {@linkcode Observer.end}. */
export interface Observation {
  readonly node: ObservedNode;
  readonly event: QueryEvent;
  readonly handle: unknown;
}

/**
 * Hooks, tracer and slow-query log as one observer of attempts, every call
 * guarded. Internal: built by the cluster from its config.
 */
export class Observer {
  readonly logger: Logger;
  readonly metrics: MetricsHook | undefined;
  /**
   * Hooks attached after the cluster was built (`otelMetrics(cluster)`), each
   * called after the configured one and guarded like it. Detach by deleting.
   */
  readonly listeners: Set<MetricsHook> = new Set();
  readonly #slowMs: number | undefined;
  readonly #attemptHooks: boolean;

  /**
   * @param logger Where events go.
   * @param metrics Optional callbacks.
   * @param slowQueryThresholdMs Attempts at least this long are logged at warn.
   */
  constructor(logger: Logger, metrics: MetricsHook | undefined, slowQueryThresholdMs?: number) {
    this.logger = logger;
    this.metrics = metrics;
    this.#slowMs = slowQueryThresholdMs;
    this.#attemptHooks = slowQueryThresholdMs !== undefined ||
      metrics?.onQueryStart !== undefined || metrics?.onQueryEnd !== undefined;
  }

  /**
   * Whether attempts on `node` are observed at all (kept off the hot path otherwise).
   *
   * @param node The node.
   * @returns `true` when a hook, a tracer or the slow-query log listens.
   */
  observes(node: ObservedNode): boolean {
    return this.#attemptHooks || this.listeners.size > 0 || node.tracer !== undefined;
  }

  /**
   * Reports an attempt about to be sent.
   *
   * @param node Where it runs.
   * @param sql Statement text.
   * @param argCount Bound arguments.
   * @param attempt 1-based attempt number.
   * @returns What {@linkcode end} needs.
   */
  start(node: ObservedNode, sql: string, argCount: number, attempt: number): Observation {
    const event: QueryEvent = { node: node.name, role: node.role, sql, argCount, attempt };
    this.hook("onQueryStart", event);
    let handle: unknown;
    if (node.tracer !== undefined) {
      try {
        handle = node.tracer.queryStart({ ...event, host: node.host, port: node.port });
      } catch (error) {
        log(this.logger, "error", "dbx: tracer threw", { error });
      }
    }
    return { node, event, handle };
  }

  /**
   * Reports the end of an attempt.
   *
   * @param o From {@linkcode start}.
   * @param durationMs How long it took.
   * @param outcome Rows on success, or the error.
   */
  end(o: Observation, durationMs: number, outcome: TraceQueryOutcome): void {
    const { event, node } = o;
    this.hook(
      "onQueryEnd",
      outcome.error === undefined
        ? { ...event, durationMs }
        : { ...event, durationMs, error: outcome.error },
    );
    if (node.tracer !== undefined) {
      try {
        node.tracer.queryEnd(o.handle, outcome);
      } catch (error) {
        log(this.logger, "error", "dbx: tracer threw", { error });
      }
    }
    if (this.#slowMs !== undefined && durationMs >= this.#slowMs) {
      const { sql } = event;
      log(this.logger, "warn", "dbx: slow query", {
        node: node.name,
        role: node.role,
        durationMs: Math.round(durationMs),
        sql: sql.length > LOG_SQL_MAX ? `${sql.slice(0, LOG_SQL_MAX)}…` : sql,
        argCount: event.argCount,
      });
    }
  }

  /**
   * Calls one metrics hook, guarded: the configured one, then each listener.
   *
   * @param name The hook.
   * @param event Its event.
   */
  hook<K extends keyof MetricsHook>(
    name: K,
    event: Parameters<NonNullable<MetricsHook[K]>>[0],
  ): void {
    callHook(this.logger, this.metrics, name, event);
    if (this.listeners.size === 0) return;
    for (const listener of this.listeners) callHook(this.logger, listener, name, event);
  }

  /**
   * Logs, guarded.
   *
   * @param level Level.
   * @param msg Message.
   * @param attrs Attributes.
   */
  log(level: Level, msg: string, attrs?: Record<string, unknown>): void {
    log(this.logger, level, msg, attrs);
  }
}
