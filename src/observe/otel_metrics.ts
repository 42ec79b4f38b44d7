/**
 * OpenTelemetry metrics for dbx: {@linkcode otelMetrics} records the duration
 * of every attempt and reports the pools, health, lag and retries of every
 * node, with the database semantic conventions. Re-exported by `otel.ts`.
 *
 * @module
 */

import {
  type Attributes,
  type BatchObservableCallback,
  type BatchObservableResult,
  type Histogram,
  type Meter,
  metrics,
  type Observable,
} from "@opentelemetry/api";
import { type Cluster, clusterCore } from "../cluster/cluster.ts";
import type { ClusterCore } from "../cluster/core.ts";
import { describe } from "../call/validate.ts";
import { pgErrorCode } from "../failure.ts";
import type { MetricsHook, QueryEndEvent } from "./observe.ts";
import * as semconv from "./otel_semconv.ts";

/**
 * What {@linkcode otelMetrics} needs of a provider: any OpenTelemetry
 * `MeterProvider` (the SDK's, or `metrics.getMeterProvider()`) fits. Declared
 * structurally so this module's public types stop at its own boundary
 * instead of pulling in the whole `@opentelemetry/api` type graph.
 *
 * @example
 * ```ts
 * import { metrics } from "@opentelemetry/api";
 * import type { MeterProviderLike } from "@codelab/dbx/otel";
 *
 * const provider: MeterProviderLike = metrics.getMeterProvider();
 * ```
 */
export interface MeterProviderLike {
  /** `MeterProvider.getMeter` of `@opentelemetry/api`. */
  getMeter(name: string, version?: string): unknown;
}

/**
 * Options of {@linkcode otelMetrics}.
 *
 * @example
 * ```ts
 * import { metrics } from "@opentelemetry/api";
 * import type { OtelMetricsOptions } from "@codelab/dbx/otel";
 *
 * const options: OtelMetricsOptions = { meterProvider: metrics.getMeterProvider() };
 * ```
 */
export interface OtelMetricsOptions {
  /**
   * Where metrics go.
   *
   * @default metrics.getMeterProvider() (the global provider registered at the time of the call)
   */
  meterProvider?: MeterProviderLike | undefined;
}

/** The semantic conventions' bucket boundaries for `db.client.operation.duration`, in seconds. */
const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10];
const POOL = "db.client.connection.pool.name";
const STATE = "db.client.connection.state";

function isMeter(value: unknown): value is Meter {
  const m = value as Partial<Meter> | undefined;
  return typeof m?.createHistogram === "function" &&
    typeof m.createObservableGauge === "function" &&
    typeof m.createObservableUpDownCounter === "function" &&
    typeof m.createObservableCounter === "function" &&
    typeof m.addBatchObservableCallback === "function" &&
    typeof m.removeBatchObservableCallback === "function";
}

/** The meter of `options`, or a TypeError naming what is wrong with it. */
function meterOf(options: OtelMetricsOptions | undefined): Meter {
  if (options !== undefined && (typeof options !== "object" || options === null)) {
    throw new TypeError(
      `Cannot record metrics as 'options' must be an object: current value is ${describe(options)}`,
    );
  }
  const provider = options?.meterProvider ?? metrics.getMeterProvider();
  if (typeof (provider as Partial<MeterProviderLike>)?.getMeter !== "function") {
    throw new TypeError(
      "Cannot record metrics as 'options.meterProvider' must have a getMeter() method: " +
        `current value is ${describe(provider)}`,
    );
  }
  const meter = provider.getMeter(semconv.INSTRUMENTATION_NAME, semconv.INSTRUMENTATION_VERSION);
  if (!isMeter(meter)) {
    throw new TypeError(
      "Cannot record metrics as 'options.meterProvider'.getMeter() returned no OpenTelemetry " +
        `Meter: current value is ${describe(meter)}`,
    );
  }
  return meter;
}

/** Records `db.client.operation.duration` for every attempt, from the observer's events. */
function durationRecorder(core: ClusterCore, meter: Meter): MetricsHook {
  const histogram: Histogram = meter.createHistogram("db.client.operation.duration", {
    description: "Duration of one attempt of a database statement.",
    unit: "s",
    advice: { explicitBucketBoundaries: DURATION_BUCKETS },
  });
  // The attributes of a node that never change, made once.
  const server = new Map<string, Attributes>(
    core.d.nodes.map((n) => [n.name, {
      "db.system.name": semconv.DB_SYSTEM,
      "server.address": n.host,
      "server.port": n.port,
    }]),
  );
  return {
    onQueryEnd(e: QueryEndEvent): void {
      const attributes: Attributes = {
        ...(server.get(e.node) ?? { "db.system.name": semconv.DB_SYSTEM }),
        "dbx.node.role": e.role,
      };
      const operation = semconv.operationOf(e.sql);
      if (operation !== undefined) attributes["db.operation.name"] = operation;
      if ("error" in e) {
        const sqlState = pgErrorCode(e.error);
        attributes["error.type"] = semconv.errorTypeOf(e.error, sqlState);
        if (sqlState !== undefined) attributes["db.response.status_code"] = sqlState;
      }
      histogram.record(e.durationMs / 1000, attributes);
    },
  };
}

/** The per-node and cluster instruments, read from the cluster on each collection. */
type NodeInstruments = Record<(typeof NODE_INSTRUMENTS)[number][0], Observable>;

/** Each per-node instrument: key, kind, name, description, unit. */
const NODE_INSTRUMENTS = [
  [
    "connections",
    "upDownCounter",
    "db.client.connection.count",
    "Open connections of a node's pool, by state (idle or used).",
    "{connection}",
  ],
  [
    "pending",
    "upDownCounter",
    "db.client.connection.pending_requests",
    "Callers waiting for a connection of a node's pool.",
    "{request}",
  ],
  [
    "healthy",
    "gauge",
    "dbx.node.healthy",
    "1 while statements are routed to the node, 0 while it is down.",
    undefined,
  ],
  [
    "lag",
    "gauge",
    "dbx.replica.lag",
    "How far a replica's replay is behind the primary, as of the last health check.",
    "s",
  ],
  [
    "retries",
    "counter",
    "dbx.retries",
    "Failed attempts on a node that were retried (there or on another node).",
    "{retry}",
  ],
  [
    "hedges",
    "counter",
    "dbx.hedges",
    "Extra read statements sent because a read was not answered in time (the hedge setting).",
    "{statement}",
  ],
  [
    "hedgesWon",
    "counter",
    "dbx.hedges.won",
    "Hedge statements that answered before the read they hedged.",
    "{statement}",
  ],
] as const;

/**
 * Creates the observable instruments and the one callback that reads
 * `stats()` and the last health report into them on each collection.
 *
 * @returns What to hand to `removeBatchObservableCallback` on dispose.
 */
function nodeObservers(
  core: ClusterCore,
  meter: Meter,
): { callback: BatchObservableCallback; observables: Observable[] } {
  const instruments = Object.fromEntries(
    NODE_INSTRUMENTS.map(([key, kind, name, description, unit]) => {
      const options = unit === undefined ? { description } : { description, unit };
      const instrument = kind === "gauge"
        ? meter.createObservableGauge(name, options)
        : kind === "counter"
        ? meter.createObservableCounter(name, options)
        : meter.createObservableUpDownCounter(name, options);
      return [key, instrument];
    }),
  ) as NodeInstruments;
  const callback: BatchObservableCallback = (result) => {
    try {
      observeNodes(core, result, instruments);
    } catch (error) {
      core.d.observer.log("error", "dbx: reading the metrics of the nodes threw", { error });
    }
  };
  return { callback, observables: Object.values(instruments) };
}

/** One collection of the per-node instruments. */
function observeNodes(core: ClusterCore, result: BatchObservableResult, i: NodeInstruments): void {
  const stats = core.stats();
  result.observe(i.hedges, stats.hedges.sent);
  result.observe(i.hedgesWon, stats.hedges.won);
  for (const n of stats.nodes) {
    const pool = { [POOL]: n.name };
    result.observe(i.connections, n.idleConns, { ...pool, [STATE]: "idle" });
    result.observe(i.connections, n.totalConns - n.idleConns, { ...pool, [STATE]: "used" });
    result.observe(i.pending, n.waitingClients, pool);
    result.observe(i.healthy, n.healthy ? 1 : 0, pool);
    result.observe(i.retries, n.retries, pool);
  }
  for (const n of core.lastHealth().nodes) {
    if (n.role === "replica" && n.lagMs !== undefined) {
      result.observe(i.lag, n.lagMs / 1000, { [POOL]: n.name });
    }
  }
}

/**
 * Records OpenTelemetry metrics of a cluster, with the database semantic
 * conventions:
 *
 * - `db.client.operation.duration` (histogram, unit `s`): one record per
 *   attempt of every statement, with `db.system.name` (`"postgresql"`),
 *   `db.operation.name` (the statement's first keyword, e.g. `SELECT`, when
 *   it is a plain word), `server.address`, `server.port`, `dbx.node.role`
 *   (`primary` / `replica`) and, on failure, `error.type` (the SQLSTATE, else
 *   the client error code such as `ECONNREFUSED`, else the error's class name)
 *   and `db.response.status_code` (the SQLSTATE, when the server sent one).
 * - `db.client.connection.count` (`db.client.connection.state` `idle` /
 *   `used`) and `db.client.connection.pending_requests` (callers waiting for
 *   a connection), per node.
 * - `dbx.node.healthy` (1 while statements are routed to the node, else 0),
 *   `dbx.replica.lag` (unit `s`, replicas only, as of the last health check)
 *   and `dbx.retries` (failed attempts on the node that were retried), per node.
 * - `dbx.hedges` (extra read statements sent by the `hedge` setting) and
 *   `dbx.hedges.won` (those that answered first), for the whole cluster.
 *
 * Per-node instruments name the node in `db.client.connection.pool.name`
 * and are read from `cluster.stats()` and the last health check when the
 * metric reader collects: no timer of dbx's own. Durations come from the same
 * observer as the `metrics` hooks, so no statement is observed twice.
 *
 * Dispose of the result to stop recording; closing the cluster also does.
 *
 * @param cluster A cluster from `connect()`.
 * @param options The meter provider.
 * @returns A handle whose `[Symbol.dispose]()` detaches the metrics (idempotent).
 * @throws {TypeError} when `cluster` is not a cluster from `connect()`, or
 * `options.meterProvider` is not a meter provider.
 * @throws {ClusterClosedError} when the cluster was closed.
 *
 * @example Export the metrics of a cluster
 * ```ts
 * import { connect } from "@codelab/dbx";
 * import { otelMetrics } from "@codelab/dbx/otel";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * using _metrics = otelMetrics(cluster); // the global MeterProvider
 * await cluster.query("select 1");
 * ```
 */
export function otelMetrics(cluster: Cluster, options?: OtelMetricsOptions): Disposable {
  const core = clusterCore(cluster);
  core.assertOpen("otelMetrics");
  const meter = meterOf(options);
  const recorder = durationRecorder(core, meter);
  const { callback, observables } = nodeObservers(core, meter);
  const { observer } = core.d;
  observer.listeners.add(recorder);
  meter.addBatchObservableCallback(callback, observables);
  let attached = true;
  const detach = (): void => {
    if (!attached) return;
    attached = false;
    observer.listeners.delete(recorder);
    core.resources.delete(onClose);
    try {
      meter.removeBatchObservableCallback(callback, observables);
    } catch (error) {
      observer.log("error", "dbx: removing the metrics callback threw", { error });
    }
  };
  // A cluster closed before the handle is disposed of detaches it too: the
  // provider would otherwise hold the closed cluster for as long as it lives.
  const onClose: AsyncDisposable = {
    [Symbol.asyncDispose]: () => Promise.resolve(detach()),
  };
  core.resources.add(onClose);
  return { [Symbol.dispose]: detach };
}
