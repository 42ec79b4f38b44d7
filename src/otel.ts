/**
 * OpenTelemetry tracing for dbx: `otelTracer()` turns every attempt of every
 * statement into a CLIENT span with the stable database semantic
 * conventions, nested under the caller's active span.
 *
 * @example One line of wiring
 * ```ts
 * import { connect } from "@codelab/dbx";
 * import { otelTracer } from "@codelab/dbx/otel";
 *
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   tracer: otelTracer(),
 * });
 * ```
 *
 * @module
 */

import {
  context,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
  type TracerProvider,
} from "@opentelemetry/api";
import { pgErrorCode } from "./errors.ts";
import type { TraceQueryInfo, TraceQueryOutcome, Tracer } from "./observe.ts";

/**
 * What `otelTracer` needs of a provider: any OpenTelemetry `TracerProvider`
 * (SDK or API) fits. Declared structurally so dbx's public types do not
 * depend on the API package's internals.
 *
 * @example
 * ```ts
 * import { trace } from "@opentelemetry/api";
 * import { otelTracer } from "@codelab/dbx/otel";
 *
 * const tracer = otelTracer(trace.getTracerProvider());
 * ```
 */
export interface TracerProviderLike {
  /** Returns a named tracer (`@opentelemetry/api` `TracerProvider.getTracer`). */
  getTracer(name: string, version?: string): unknown;
}

const TRACER_NAME = "@codelab/dbx";
const TRACER_VERSION = "0.1.0";

/** The operation keyword of a statement (`SELECT`, `INSERT`, ...), when it starts with one. */
function operationOf(sql: string): string | undefined {
  const match = /^\s*([a-zA-Z]+)/.exec(sql);
  return match?.[1]?.toUpperCase();
}

/**
 * A dbx {@linkcode Tracer} that records one OpenTelemetry CLIENT span per
 * attempt. Attributes: `db.system.name` ("postgresql"), `db.query.text`
 * (never argument values), `db.operation.name`, `server.address`,
 * `server.port`, `dbx.node.name`, `dbx.node.role`, `dbx.attempt`; on success
 * `dbx.rows` (rows returned or affected, per the command tag); on failure `error.type`,
 * `db.response.status_code` (the SQLSTATE), an exception event and status
 * ERROR. Spans start in the caller's active context, so they nest under the
 * caller's span. Set it on the cluster, or on one node through
 * `NodeConfig.tracer`.
 *
 * @param provider Where spans go. @default the global tracer provider
 * @returns A tracer to pass as `tracer` in the cluster or node config.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 * import { otelTracer } from "@codelab/dbx/otel";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app", tracer: otelTracer() });
 * ```
 */
export function otelTracer(provider?: TracerProviderLike): Tracer {
  const tracer = ((provider ?? trace.getTracerProvider()) as TracerProvider).getTracer(
    TRACER_NAME,
    TRACER_VERSION,
  );
  return {
    queryStart(info: TraceQueryInfo): Span {
      const operation = operationOf(info.sql);
      const attributes: Record<string, string | number> = {
        "db.system.name": "postgresql",
        "db.query.text": info.sql,
        "server.address": info.host,
        "server.port": info.port,
        "dbx.node.name": info.node,
        "dbx.node.role": info.role,
        "dbx.attempt": info.attempt,
      };
      if (operation !== undefined) attributes["db.operation.name"] = operation;
      return tracer.startSpan(
        operation === undefined ? "postgresql" : `${operation} ${info.node}`,
        { kind: SpanKind.CLIENT, attributes },
        context.active(),
      );
    },
    queryEnd(handle: unknown, outcome: TraceQueryOutcome): void {
      const span = handle as Span;
      if (outcome.error === undefined) {
        if (outcome.rowCount !== undefined) span.setAttribute("dbx.rows", outcome.rowCount);
      } else {
        const err = outcome.error;
        const code = pgErrorCode(err);
        span.setAttribute("error.type", code ?? (err instanceof Error ? err.name : "Error"));
        if (code !== undefined) span.setAttribute("db.response.status_code", code);
        span.recordException(err instanceof Error ? err : String(err));
        span.setStatus({
          code: SpanStatusCode.ERROR,
          message: err instanceof Error ? err.message : String(err),
        });
      }
      span.end();
    },
  };
}
