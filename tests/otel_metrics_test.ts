import assert from "node:assert/strict";
import {
  AggregationTemporality,
  type DataPoint,
  type Histogram,
  MeterProvider,
  type MetricData,
  MetricReader,
} from "@opentelemetry/sdk-metrics";
import type { Attributes } from "@opentelemetry/api";
import { Cluster, ClusterClosedError, type QueryEndEvent } from "../mod.ts";
import { type MeterProviderLike, otelMetrics } from "../src/observe/otel.ts";
import { dbTest, testLogger } from "../src/testing/mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";

const urls = testDatabaseUrls();
const hostOf = (url: string): string => new URL(url).hostname;
const portOf = (url: string): number => Number(new URL(url).port || 5432);
const DEAD = "postgres://postgres@127.0.0.1:1/postgres";
const DEAD_REPLICA = "postgres://postgres@127.0.0.1:2/postgres";

/**
 * A reader that collects only when asked: no interval, nothing left running.
 * Delta temporality: each collection holds only what was recorded or
 * observed since the previous one, so "nothing new" is "no point".
 */
class OnDemandReader extends MetricReader {
  constructor() {
    super({ aggregationTemporalitySelector: () => AggregationTemporality.DELTA });
  }
  protected override onForceFlush(): Promise<void> {
    return Promise.resolve();
  }
  protected override onShutdown(): Promise<void> {
    return Promise.resolve();
  }
}

/** A meter provider and a way to read what it holds now, by instrument name. */
function recorder(): {
  provider: MeterProvider;
  collect(): Promise<Map<string, MetricData>>;
} {
  const reader = new OnDemandReader();
  const provider = new MeterProvider({ readers: [reader] });
  return {
    provider,
    async collect(): Promise<Map<string, MetricData>> {
      const { resourceMetrics, errors } = await reader.collect();
      assert.deepEqual(errors, []);
      const all = resourceMetrics.scopeMetrics.flatMap((s) => s.metrics);
      return new Map(all.map((m) => [m.descriptor.name, m]));
    },
  };
}

function metric(got: Map<string, MetricData>, name: string): MetricData {
  const m = got.get(name);
  assert.ok(m !== undefined, `${name} is reported (got ${[...got.keys()].join(", ")})`);
  return m;
}

/** The data points of `name` whose attributes include `match`. */
function points(
  got: Map<string, MetricData>,
  name: string,
  match: Attributes = {},
): DataPoint<unknown>[] {
  return (metric(got, name).dataPoints as DataPoint<unknown>[]).filter((p) =>
    Object.entries(match).every(([k, v]) => p.attributes[k] === v)
  );
}

/** The one value of `name` with exactly these attributes. */
function valueOf(got: Map<string, MetricData>, name: string, attributes: Attributes): unknown {
  const found = points(got, name).filter((p) =>
    JSON.stringify(Object.entries(p.attributes).sort()) ===
      JSON.stringify(Object.entries(attributes).sort())
  );
  assert.equal(found.length, 1, `one ${name} point with ${JSON.stringify(attributes)}`);
  return found[0]!.value;
}

/** Attempts recorded by the duration histogram since the last collection. */
function attemptCount(got: Map<string, MetricData>): number {
  const m = got.get("db.client.operation.duration");
  if (m === undefined) return 0;
  return (m.dataPoints as DataPoint<Histogram>[]).reduce((n, p) => n + p.value.count, 0);
}

Deno.test("otelMetrics() rejects what is not a cluster or a meter provider", async () => {
  assert.throws(
    () => otelMetrics({} as Cluster),
    (e: unknown) => e instanceof TypeError && /not a Cluster from connect\(\)/.test(e.message),
  );
  await using cluster = new Cluster(DEAD);
  assert.throws(
    () => otelMetrics(cluster, { meterProvider: {} as MeterProviderLike }),
    (e: unknown) =>
      e instanceof TypeError &&
      /'options\.meterProvider' must have a getMeter\(\) method: current value is/.test(e.message),
  );
  assert.throws(
    () => otelMetrics(cluster, { meterProvider: { getMeter: () => ({}) } }),
    (e: unknown) => e instanceof TypeError && /returned no OpenTelemetry Meter/.test(e.message),
  );
  // An explicit undefined is the default provider (the global no-op one here).
  otelMetrics(cluster, { meterProvider: undefined })[Symbol.dispose]();
});

Deno.test("otelMetrics() reports the pools and health of every node, per node", async () => {
  const { provider, collect } = recorder();
  try {
    await using cluster = new Cluster({ master: DEAD, replicas: [DEAD_REPLICA] });
    using _metrics = otelMetrics(cluster, { meterProvider: provider });
    const got = await collect();
    const names = cluster.stats().nodes.map((n) => n.name);
    assert.equal(names.length, 2);
    for (const name of names) {
      const pool = { "db.client.connection.pool.name": name };
      for (const state of ["idle", "used"]) {
        assert.equal(
          valueOf(got, "db.client.connection.count", {
            ...pool,
            "db.client.connection.state": state,
          }),
          0,
        );
      }
      assert.equal(valueOf(got, "db.client.connection.pending_requests", pool), 0);
      assert.equal(valueOf(got, "dbx.node.healthy", pool), 1, "healthy until a probe says not");
      assert.equal(valueOf(got, "dbx.retries", pool), 0);
    }
    assert.equal(metric(got, "db.client.connection.count").descriptor.unit, "{connection}");
    assert.equal(got.get("dbx.replica.lag"), undefined, "no lag before a probe measured it");
    assert.equal(valueOf(got, "dbx.hedges", {}), 0, "no hedge without the hedge setting");
    assert.equal(valueOf(got, "dbx.hedges.won", {}), 0);
    assert.equal(metric(got, "dbx.hedges").descriptor.unit, "{statement}");
  } finally {
    await provider.shutdown();
  }
});

Deno.test("otelMetrics() is detached by dispose (idempotent) and by closing the cluster", async () => {
  const { provider, collect } = recorder();
  try {
    const cluster = new Cluster(DEAD);
    const metrics = otelMetrics(cluster, { meterProvider: provider });
    assert.equal(points(await collect(), "dbx.node.healthy").length, 1);
    metrics[Symbol.dispose]();
    metrics[Symbol.dispose]();
    assert.equal((await collect()).get("dbx.node.healthy"), undefined);

    otelMetrics(cluster, { meterProvider: provider });
    assert.equal(points(await collect(), "dbx.node.healthy").length, 1);
    await cluster.close();
    assert.equal((await collect()).get("dbx.node.healthy"), undefined);
    assert.throws(
      () => otelMetrics(cluster, { meterProvider: provider }),
      (e: unknown) => e instanceof ClusterClosedError && /otelMetrics\(\)/.test(e.message),
    );
  } finally {
    await provider.shutdown();
  }
});

const main = recorder();
dbTest(
  "otelMetrics() records every attempt's duration with the database attributes",
  async (cluster) => {
    const metrics = otelMetrics(cluster, { meterProvider: main.provider });
    try {
      await cluster.query("select 1 as one");
      await cluster.readQuery("  select $1::int as two", [2]);
      await assert.rejects(cluster.query("select * from otel_metrics_missing_table"));
      const got = await main.collect();
      const duration = metric(got, "db.client.operation.duration");
      assert.equal(duration.descriptor.unit, "s");
      const master = urls!.master;
      const primary = points(got, "db.client.operation.duration", {
        "dbx.node.role": "primary",
        "error.type": undefined,
      });
      assert.equal(primary.length, 1);
      assert.deepEqual(primary[0]!.attributes, {
        "db.system.name": "postgresql",
        "db.operation.name": "SELECT",
        "server.address": hostOf(master),
        "server.port": portOf(master),
        "dbx.node.role": "primary",
      });
      const replica = points(got, "db.client.operation.duration", { "dbx.node.role": "replica" });
      assert.equal(replica.length, 1);
      const at = `${replica[0]!.attributes["server.address"]}:${
        replica[0]!.attributes["server.port"]
      }`;
      assert.ok(
        urls!.replicas.some((u) => `${hostOf(u)}:${portOf(u)}` === at),
        `${at} is one of the replicas`,
      );
      assert.equal(replica[0]!.attributes["db.system.name"], "postgresql");
      assert.equal(replica[0]!.attributes["db.operation.name"], "SELECT");
      const failed = points(got, "db.client.operation.duration", { "error.type": "42P01" });
      assert.equal(failed.length, 1);
      assert.equal(failed[0]!.attributes["db.response.status_code"], "42P01");
      assert.equal(failed[0]!.attributes["dbx.node.role"], "primary");
      assert.equal(attemptCount(got), 3, "one record per attempt");
      for (const p of duration.dataPoints as DataPoint<Histogram>[]) {
        assert.ok(p.value.sum! >= 0 && p.value.sum! < 60, "seconds, not milliseconds");
      }

      for (const n of cluster.stats().nodes) {
        const pool = { "db.client.connection.pool.name": n.name };
        const states = points(got, "db.client.connection.count", pool)
          .map((p) => p.attributes["db.client.connection.state"]).sort();
        assert.deepEqual(states, ["idle", "used"], n.name);
        assert.equal(points(got, "db.client.connection.pending_requests", pool).length, 1);
        assert.equal(valueOf(got, "dbx.node.healthy", pool), 1, `${n.name} is healthy`);
        assert.equal(points(got, "dbx.retries", pool).length, 1);
        const lag = points(got, "dbx.replica.lag", pool);
        if (n.role === "replica") {
          assert.equal(lag.length, 1, `${n.name} reports its lag`);
          assert.equal(metric(got, "dbx.replica.lag").descriptor.unit, "s");
          assert.ok((lag[0]!.value as number) >= 0);
        } else {
          assert.equal(lag.length, 0, "the primary has no lag");
        }
      }
      const idle = points(got, "db.client.connection.count", {
        "db.client.connection.state": "idle",
      })
        .reduce((sum, p) => sum + (p.value as number), 0);
      assert.ok(idle >= 2, "the connections of the statements went back to their pools");

      metrics[Symbol.dispose]();
      await cluster.query("select 3");
      await cluster.readQuery("select 4");
      const after = await main.collect();
      assert.equal(attemptCount(after), 0, "nothing recorded after dispose");
      assert.equal(after.get("dbx.node.healthy"), undefined, "nothing observed after dispose");
    } finally {
      metrics[Symbol.dispose]();
      await main.provider.shutdown();
    }
  },
);

const ends: QueryEndEvent[] = [];
const logger = testLogger();
dbTest(
  "a throwing meter never breaks a query, and the configured metrics hook still sees it",
  async (cluster) => {
    const broken: MeterProviderLike = {
      getMeter: () => {
        const instrument = {
          record() {
            throw new Error("meter bug");
          },
        };
        return {
          createHistogram: () => instrument,
          createObservableGauge: () => ({}),
          createObservableUpDownCounter: () => ({}),
          createObservableCounter: () => ({}),
          addBatchObservableCallback() {},
          removeBatchObservableCallback() {},
        };
      },
    };
    using _metrics = otelMetrics(cluster, { meterProvider: broken });
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
    assert.equal(ends.length, 1, "the configured hook saw the attempt");
    const logged = logger.entries.filter((e) => e.msg === "dbx: metrics hook threw");
    assert.equal(logged.length, 1);
    assert.equal(logged[0]!.attrs.hook, "onQueryEnd");
  },
  { config: { logger, metrics: { onQueryEnd: (e) => ends.push(e) } } },
);

const hedged = recorder();
dbTest(
  "otelMetrics() counts hedged reads in dbx.hedges and dbx.hedges.won",
  async (cluster) => {
    try {
      using _metrics = otelMetrics(cluster, { meterProvider: hedged.provider });
      // Hedged at once: both replicas sleep alike, so the hedge rarely wins; it is sent.
      await cluster.readQuery("select pg_sleep(0.05)");
      const got = await hedged.collect();
      const { sent, won } = cluster.stats().hedges;
      assert.equal(sent, 1);
      assert.equal(valueOf(got, "dbx.hedges", {}), sent);
      assert.equal(valueOf(got, "dbx.hedges.won", {}), won);
    } finally {
      await hedged.provider.shutdown();
    }
  },
  { config: { hedge: { afterMs: 0, maxExtraLoad: 1 } } },
);
