/**
 * OpenTelemetry for dbx, with the stable database semantic conventions:
 * {@linkcode otelTracer} turns every attempt of every statement into a CLIENT
 * span nested under the caller's active span, and {@linkcode otelMetrics}
 * records attempt durations and the pools, health, lag and retries of every node.
 *
 * @example One line of wiring each
 * ```ts
 * import { connect } from "@codelab/dbx";
 * import { otelMetrics, otelTracer } from "@codelab/dbx/otel";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app", tracer: otelTracer() });
 * using _metrics = otelMetrics(cluster);
 * ```
 *
 * @module
 */

import {
  type Attributes,
  context,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
  type Tracer as OtelTracer,
} from "@opentelemetry/api";
import { pgErrorCode } from "../failure.ts";
import {
  DB_SYSTEM,
  errorTypeOf,
  INSTRUMENTATION_NAME,
  INSTRUMENTATION_VERSION,
  operationOf,
} from "./otel_semconv.ts";
import type { TraceQueryInfo, TraceQueryOutcome, Tracer } from "./observe.ts";

// Metrics live in their own file; this is their entry point too.
export { otelMetrics } from "./otel_metrics.ts";
export type { MeterProviderLike, OtelMetricsOptions } from "./otel_metrics.ts";
// Re-exported so that this entry point documents otelTracer()'s signature in full.
export type { NodeRole, QueryEvent, TraceQueryInfo, TraceQueryOutcome, Tracer } from "./observe.ts";

/**
 * What {@linkcode otelTracer} needs of a provider: any OpenTelemetry
 * `TracerProvider` (the SDK's, or `trace.getTracerProvider()`) fits. Declared
 * structurally so this module's public types stop at its own boundary
 * instead of pulling in the whole `@opentelemetry/api` type graph.
 *
 * @example
 * ```ts
 * import { trace } from "@opentelemetry/api";
 * import { otelTracer, type TracerProviderLike } from "@codelab/dbx/otel";
 *
 * const provider: TracerProviderLike = trace.getTracerProvider();
 * const tracer = otelTracer(provider);
 * ```
 */
export interface TracerProviderLike {
  /** `TracerProvider.getTracer` of `@opentelemetry/api`. */
  getTracer(name: string, version?: string): unknown;
}

/** `server.address:server.port`, the span name's target (IPv6 in brackets). */
function targetOf(host: string, port: number): string | undefined {
  if (host === "") return undefined;
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

function isSpan(handle: unknown): handle is Span {
  return typeof handle === "object" && handle !== null &&
    typeof (handle as Partial<Span>).end === "function";
}

function startSpan(tracer: OtelTracer, info: TraceQueryInfo): Span {
  const operation = operationOf(info.sql);
  const target = targetOf(info.host, info.port);
  const attributes: Attributes = {
    "db.system.name": DB_SYSTEM,
    "db.query.text": info.sql,
    "server.address": info.host,
    "server.port": info.port,
    "dbx.node.name": info.node,
    "dbx.node.role": info.role,
    "dbx.attempt": info.attempt,
  };
  if (operation !== undefined) attributes["db.operation.name"] = operation;
  const name = operation !== undefined
    ? (target === undefined ? operation : `${operation} ${target}`)
    : (target ?? DB_SYSTEM);
  return tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes }, context.active());
}

function annotate(span: Span, outcome: TraceQueryOutcome): void {
  if (outcome.error === undefined) {
    if (outcome.rowCount !== undefined) {
      span.setAttribute("db.response.returned_rows", outcome.rowCount);
    }
    return;
  }
  const err = outcome.error;
  const sqlState = pgErrorCode(err);
  span.setAttribute("error.type", errorTypeOf(err, sqlState));
  if (sqlState !== undefined) span.setAttribute("db.response.status_code", sqlState);
  // Data exceptions (class 22) quote the offending input, which may be a
  // bound argument value: record their SQLSTATE, not their message.
  const message = sqlState?.startsWith("22")
    ? `SQLSTATE ${sqlState} (message withheld: it may quote argument values)`
    : err instanceof Error
    ? err.message
    : String(err);
  span.recordException({ name: err instanceof Error ? err.name : "Error", message });
  span.setStatus({ code: SpanStatusCode.ERROR, message });
}

/**
 * A dbx {@linkcode Tracer} that records one OpenTelemetry CLIENT span per
 * attempt of every statement, started in the caller's active context so it
 * nests under the caller's span (with a context manager registered, e.g.
 * `AsyncLocalStorageContextManager`).
 *
 * The span is named `{db.operation.name} {server.address}:{server.port}`
 * (e.g. `SELECT db1:5432`) and carries `db.system.name` (`"postgresql"`),
 * `db.query.text` (the SQL as written; bound argument values are never
 * recorded), `db.operation.name` (the statement's first keyword, when it is a
 * plain word), `server.address`, `server.port`, `dbx.node.name`,
 * `dbx.node.role` and `dbx.attempt` (1 for the first try). On success it adds
 * `db.response.returned_rows` (the driver's row count). On failure it adds
 * `error.type` (the SQLSTATE, else the client error code such as
 * `ECONNREFUSED`, else the error's class name), `db.response.status_code`
 * (the SQLSTATE, when the server sent one), an exception event and status
 * ERROR with the error message — except for data exceptions (SQLSTATE class
 * 22), whose message can quote a bound argument value and is withheld.
 *
 * Set it on the cluster, or on one node through `NodeConfig.tracer`. The
 * returned tracer never throws: a failure inside OpenTelemetry drops the
 * span, never the query.
 *
 * @param provider Where spans go. @default trace.getTracerProvider() (the
 * global provider; one registered after this call is still used)
 * @returns A tracer to pass as `tracer` in the cluster or node config.
 *
 * @example Trace every query of a cluster
 * ```ts
 * import { connect } from "@codelab/dbx";
 * import { otelTracer } from "@codelab/dbx/otel";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app", tracer: otelTracer() });
 * ```
 */
export function otelTracer(provider?: TracerProviderLike): Tracer {
  let tracer: OtelTracer | undefined;
  try {
    const got = (provider ?? trace.getTracerProvider()).getTracer(
      INSTRUMENTATION_NAME,
      INSTRUMENTATION_VERSION,
    );
    if (typeof (got as Partial<OtelTracer> | undefined)?.startSpan === "function") {
      tracer = got as OtelTracer;
    }
  } catch {
    // A broken provider leaves the tracer inert rather than failing connect().
  }
  return {
    queryStart(info: TraceQueryInfo): Span | undefined {
      if (tracer === undefined) return undefined;
      try {
        return startSpan(tracer, info);
      } catch {
        return undefined;
      }
    },
    queryEnd(handle: unknown, outcome: TraceQueryOutcome): void {
      if (!isSpan(handle)) return;
      try {
        annotate(handle, outcome);
      } catch {
        // Still end the span below: an unended span leaks in the processor.
      } finally {
        try {
          handle.end();
        } catch {
          // Nothing left to clean up.
        }
      }
    },
  };
}
