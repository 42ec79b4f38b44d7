import assert from "node:assert/strict";
import { context, type Span, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import type { TraceQueryInfo } from "../src/observe/observe.ts";
import { otelTracer, type TracerProviderLike } from "../src/observe/otel.ts";
import { dbTest } from "../src/testing/mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";

const urls = testDatabaseUrls();
const hostOf = (url: string): string => new URL(url).hostname;
const portOf = (url: string): number => Number(new URL(url).port || 5432);
const DEAD = "postgres://postgres@127.0.0.1:1/postgres";

/** A provider recording finished spans in memory. */
function recorder(): { provider: BasicTracerProvider; take(): ReadableSpan[] } {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  return {
    provider,
    take(): ReadableSpan[] {
      const spans = exporter.getFinishedSpans();
      exporter.reset();
      return spans;
    },
  };
}

/** Runs `fn` with an AsyncLocalStorage context manager, so the active span survives awaits. */
async function withContextManager<T>(fn: () => Promise<T>): Promise<T> {
  const manager = new AsyncLocalStorageContextManager().enable();
  assert.ok(context.setGlobalContextManager(manager), "no other context manager is registered");
  try {
    return await fn();
  } finally {
    manager.disable();
    context.disable();
  }
}

/** Everything of a span an exporter would send, as text, to look for leaked values. */
function exported(span: ReadableSpan): string {
  return JSON.stringify({
    name: span.name,
    attributes: span.attributes,
    events: span.events.map((e) => ({ name: e.name, attributes: e.attributes })),
    status: span.status,
  });
}

const info = (over: Partial<TraceQueryInfo> = {}): TraceQueryInfo => ({
  node: "db1:5432",
  role: "primary",
  sql: "select * from users where id = $1",
  argCount: 1,
  attempt: 1,
  host: "db1",
  port: 5432,
  ...over,
});

Deno.test("otelTracer() records one CLIENT span with the database attributes", () => {
  const { provider, take } = recorder();
  const tracer = otelTracer(provider);
  const handle = tracer.queryStart(
    info({ sql: "  select * from users where id = $1", attempt: 2 }),
  );
  tracer.queryEnd(handle, { rowCount: 1 });
  const spans = take();
  assert.equal(spans.length, 1);
  const span = spans[0]!;
  assert.equal(span.kind, SpanKind.CLIENT);
  assert.equal(span.name, "SELECT db1:5432");
  assert.equal(span.instrumentationScope.name, "@codelab/dbx");
  assert.equal(span.instrumentationScope.version, "0.1.0");
  assert.deepEqual(span.attributes, {
    "db.system.name": "postgresql",
    "db.query.text": "  select * from users where id = $1",
    "db.operation.name": "SELECT",
    "server.address": "db1",
    "server.port": 5432,
    "dbx.node.name": "db1:5432",
    "dbx.node.role": "primary",
    "dbx.attempt": 2,
    "db.response.returned_rows": 1,
  });
  assert.equal(span.status.code, SpanStatusCode.UNSET);
  assert.equal(span.events.length, 0);
  assert.ok(span.ended);
});

Deno.test("otelTracer() names the operation only when the statement starts with a plain word", () => {
  const { provider, take } = recorder();
  const tracer = otelTracer(provider);
  const cases: [sql: string, operation: string | undefined, name: string][] = [
    ["INSERT INTO t VALUES ($1)", "INSERT", "INSERT db1:5432"],
    ["\n\twith x as (select 1) select * from x", "WITH", "WITH db1:5432"],
    ["update t set a = 1", "UPDATE", "UPDATE db1:5432"],
    ["delete from t", "DELETE", "DELETE db1:5432"],
    ["begin", "BEGIN", "BEGIN db1:5432"],
    ["(select 1) union (select 2)", undefined, "db1:5432"],
    ["-- why\nselect 1", undefined, "db1:5432"],
    ["select1", undefined, "db1:5432"],
    ["", undefined, "db1:5432"],
  ];
  for (const [sql] of cases) tracer.queryEnd(tracer.queryStart(info({ sql })), { rowCount: 0 });
  const spans = take();
  assert.deepEqual(
    spans.map((s) => [s.attributes["db.query.text"], s.attributes["db.operation.name"], s.name]),
    cases,
  );
});

Deno.test("otelTracer() brackets an IPv6 address in the span name", () => {
  const { provider, take } = recorder();
  const tracer = otelTracer(provider);
  tracer.queryEnd(tracer.queryStart(info({ host: "::1", port: 6543, node: "local" })), {});
  const [span] = take();
  assert.equal(span!.name, "SELECT [::1]:6543");
  assert.equal(span!.attributes["server.address"], "::1");
  assert.equal(span!.attributes["dbx.node.name"], "local");
  assert.equal(span!.attributes["db.response.returned_rows"], undefined, "row count unknown");
});

Deno.test("otelTracer() records a server error: SQLSTATE, status ERROR, exception event", () => {
  const { provider, take } = recorder();
  const tracer = otelTracer(provider);
  // The shape of pg's DatabaseError: a 5-character code plus severity.
  const dbError = Object.assign(
    new Error('duplicate key value violates unique constraint "t_pkey"'),
    {
      code: "23505",
      severity: "ERROR",
    },
  );
  tracer.queryEnd(tracer.queryStart(info({ sql: "insert into t values ($1)" })), {
    error: new Error("wrapped", { cause: dbError }),
  });
  const [span] = take();
  assert.equal(span!.attributes["error.type"], "23505");
  assert.equal(span!.attributes["db.response.status_code"], "23505");
  assert.equal(span!.attributes["db.response.returned_rows"], undefined);
  assert.deepEqual(span!.status, { code: SpanStatusCode.ERROR, message: "wrapped" });
  assert.equal(span!.events.length, 1);
  assert.equal(span!.events[0]!.name, "exception");
  assert.equal(span!.events[0]!.attributes?.["exception.message"], "wrapped");
});

Deno.test("otelTracer() types client errors by code, else by class name", () => {
  const { provider, take } = recorder();
  const tracer = otelTracer(provider);
  const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), {
    code: "ECONNREFUSED",
  });
  const outcomes: unknown[] = [refused, new TypeError("bad"), "a thrown string"];
  for (const error of outcomes) tracer.queryEnd(tracer.queryStart(info()), { error });
  const spans = take();
  assert.deepEqual(spans.map((s) => s.attributes["error.type"]), [
    "ECONNREFUSED",
    "TypeError",
    "_OTHER",
  ]);
  for (const span of spans) {
    assert.equal(span.attributes["db.response.status_code"], undefined, "no SQLSTATE");
    assert.equal(span.status.code, SpanStatusCode.ERROR);
    assert.equal(span.events.filter((e) => e.name === "exception").length, 1);
  }
  assert.equal(spans[2]!.status.message, "a thrown string");
});

Deno.test("otelTracer() never throws, whatever OpenTelemetry does", () => {
  const boom = (): never => {
    throw new Error("otel is broken");
  };
  const brokenProvider = { getTracer: boom } as TracerProviderLike;
  const inert = otelTracer(brokenProvider);
  assert.equal(inert.queryStart(info()), undefined);
  inert.queryEnd(undefined, {});
  assert.equal(otelTracer({ getTracer: () => "not a tracer" }).queryStart(info()), undefined);

  const noStart = otelTracer(
    { getTracer: () => ({ startSpan: boom }) } as TracerProviderLike,
  );
  assert.equal(noStart.queryStart(info()), undefined);

  let ended = 0;
  const brokenSpan = {
    setAttribute: boom,
    recordException: boom,
    setStatus: boom,
    end: () => {
      ended++;
      boom();
    },
  } as unknown as Span;
  const tracer = otelTracer({
    getTracer: () => ({ startSpan: () => brokenSpan }),
  } as TracerProviderLike);
  const handle = tracer.queryStart(info());
  assert.equal(handle, brokenSpan);
  tracer.queryEnd(handle, { rowCount: 3 });
  tracer.queryEnd(handle, { error: new Error("x") });
  assert.equal(ended, 2, "the span is ended even when annotating it failed");
  tracer.queryEnd("not a span", {});
  tracer.queryEnd(null, {});
});

Deno.test("otelTracer() uses the global provider by default, even one registered later", () => {
  const { provider, take } = recorder();
  const tracer = otelTracer();
  assert.ok(trace.setGlobalTracerProvider(provider), "no other global provider is registered");
  try {
    tracer.queryEnd(tracer.queryStart(info()), { rowCount: 0 });
    assert.equal(take().length, 1);
  } finally {
    trace.disable();
  }
});

const main = recorder();

dbTest("queries produce CLIENT spans nested under the caller's span", async (cluster) => {
  main.take();
  const parentTracer = main.provider.getTracer("test");
  const rootId = await withContextManager(() =>
    parentTracer.startActiveSpan("request", async (root) => {
      try {
        await cluster.query("select $1::int as n", [987654321]);
        await cluster.readQuery("select $1::text as s", ["s3cr3t-arg-value"]);
        return root.spanContext().spanId;
      } finally {
        root.end();
      }
    })
  );
  const spans = main.take();
  const db = spans.filter((s) => s.name !== "request");
  assert.equal(db.length, 2, "one span per statement (one attempt each)");
  const [write, read] = db as [ReadableSpan, ReadableSpan];
  for (const span of db) {
    assert.equal(span.kind, SpanKind.CLIENT);
    assert.equal(span.parentSpanContext?.spanId, rootId, "nested under the caller's span");
    assert.equal(span.status.code, SpanStatusCode.UNSET);
  }
  const master = urls!.master;
  const masterTarget = `${hostOf(master)}:${portOf(master)}`;
  assert.equal(write.name, `SELECT ${masterTarget}`);
  assert.deepEqual(write.attributes, {
    "db.system.name": "postgresql",
    "db.query.text": "select $1::int as n",
    "db.operation.name": "SELECT",
    "server.address": hostOf(master),
    "server.port": portOf(master),
    "dbx.node.name": masterTarget,
    "dbx.node.role": "primary",
    "dbx.attempt": 1,
    "db.response.returned_rows": 1,
  });
  assert.equal(read.attributes["dbx.node.role"], "replica");
  assert.ok(
    urls!.replicas.map(portOf).includes(read.attributes["server.port"] as number),
    `read went to a replica port, got ${read.attributes["server.port"]}`,
  );
  assert.equal(read.attributes["db.query.text"], "select $1::text as s");
  for (const span of db) {
    assert.ok(!exported(span).includes("987654321"), "argument values never recorded");
    assert.ok(!exported(span).includes("s3cr3t-arg-value"), "argument values never recorded");
  }
  console.log("sample span:", write.name, JSON.stringify(write.attributes));
}, { config: { tracer: otelTracer(main.provider) } });

dbTest(
  "a failing statement's span has status ERROR, the SQLSTATE and an exception event",
  async (cluster) => {
    await cluster.exec("drop table if exists otel_uniq");
    await cluster.exec("create table otel_uniq(id int primary key)");
    try {
      await cluster.exec("insert into otel_uniq values ($1)", [424242]);
      main.take();
      await assert.rejects(cluster.exec("insert into otel_uniq values ($1)", [424242]));
      const spans = main.take();
      assert.equal(spans.length, 1, "a unique violation is not retried");
      const span = spans[0]!;
      assert.equal(span.kind, SpanKind.CLIENT);
      assert.equal(span.status.code, SpanStatusCode.ERROR);
      assert.match(span.status.message ?? "", /duplicate key value violates unique constraint/);
      assert.equal(span.attributes["db.response.status_code"], "23505");
      assert.equal(span.attributes["error.type"], "23505");
      assert.equal(span.attributes["db.operation.name"], "INSERT");
      assert.equal(span.attributes["dbx.node.role"], "primary");
      assert.equal(span.attributes["db.response.returned_rows"], undefined);
      const exceptions = span.events.filter((e) => e.name === "exception");
      assert.equal(exceptions.length, 1);
      assert.match(String(exceptions[0]!.attributes?.["exception.message"]), /duplicate key/);
      assert.ok(!exported(span).includes("424242"), "the key value (pg's detail) is not recorded");
    } finally {
      await cluster.exec("drop table otel_uniq");
    }
  },
  { config: { tracer: otelTracer(main.provider) } },
);

dbTest(
  "a data exception's message, which quotes the argument, is withheld from the span",
  async (cluster) => {
    main.take();
    await assert.rejects(cluster.query("select $1::int as n", ["abc-s3cret"]), (err) => {
      assert.match(
        String((err as Error).message),
        /abc-s3cret/,
        "the caller still gets the full message",
      );
      return true;
    });
    const [span] = main.take();
    assert.equal(span!.attributes["db.response.status_code"], "22P02");
    assert.equal(span!.status.code, SpanStatusCode.ERROR);
    assert.match(span!.status.message ?? "", /SQLSTATE 22P02/);
    assert.ok(!exported(span!).includes("abc-s3cret"), "the argument value is not exported");
  },
  { config: { tracer: otelTracer(main.provider) } },
);

dbTest("a retried read records one span per attempt", async (cluster) => {
  main.take();
  const row = await cluster.readQueryRow<{ p: number }>("select inet_server_port() as p");
  const spans = main.take();
  assert.equal(spans.length, 2);
  const [refused, served] = spans as [ReadableSpan, ReadableSpan];
  assert.equal(refused.attributes["dbx.attempt"], 1);
  assert.equal(refused.attributes["server.port"], 1);
  assert.equal(refused.attributes["error.type"], "ECONNREFUSED");
  assert.equal(refused.attributes["db.response.status_code"], undefined, "no server response");
  assert.equal(refused.status.code, SpanStatusCode.ERROR);
  assert.equal(served.attributes["dbx.attempt"], 2);
  assert.equal(served.attributes["dbx.node.role"], "replica");
  assert.equal(served.attributes["server.port"], row.p);
  assert.equal(served.status.code, SpanStatusCode.UNSET);
}, {
  config: {
    replicas: [DEAD, ...(urls?.replicas.slice(0, 1) ?? [])],
    // Keeps the dead replica in rotation after the first probe, so the read really hits it.
    healthCheck: { intervalMs: 60_000, timeoutMs: 500, failuresBeforeDown: 3 },
    tracer: otelTracer(main.provider),
  },
});

const own = recorder();

dbTest("a node's own tracer overrides the cluster's", async (cluster) => {
  main.take();
  own.take();
  await cluster.query("select 1");
  await cluster.readQuery("select 2");
  const ownSpans = own.take();
  const clusterSpans = main.take();
  assert.deepEqual(
    ownSpans.map((s) => [s.attributes["dbx.node.role"], s.attributes["db.query.text"]]),
    [["primary", "select 1"]],
    "the master's statement went to the master's tracer only",
  );
  assert.deepEqual(
    clusterSpans.map((s) => [s.attributes["dbx.node.role"], s.attributes["db.query.text"]]),
    [["replica", "select 2"]],
    "the replica, without a tracer of its own, uses the cluster's",
  );
}, {
  config: {
    master: { url: urls?.master ?? DEAD, tracer: otelTracer(own.provider) },
    tracer: otelTracer(main.provider),
  },
});
