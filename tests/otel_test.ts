import assert from "node:assert/strict";
import { context, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { otelTracer } from "../src/otel.ts";
import { dbTest } from "../src/testing/mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";

const urls = testDatabaseUrls();
const port = (url: string) => Number(new URL(url).port || 5432);

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const nodeExporter = new InMemorySpanExporter();
const nodeProvider = new BasicTracerProvider({
  spanProcessors: [new SimpleSpanProcessor(nodeExporter)],
});

function spans(): ReadableSpan[] {
  const all = exporter.getFinishedSpans();
  exporter.reset();
  return all;
}

/** Runs `fn` with an AsyncLocalStorage context manager, so spans nest across awaits. */
async function withContextManager(fn: () => Promise<void>): Promise<void> {
  const manager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(manager);
  try {
    await fn();
  } finally {
    manager.disable();
    context.disable();
  }
}

Deno.test("otelTracer() records a CLIENT span with database attributes (no database)", () => {
  const tracer = otelTracer(provider);
  const handle = tracer.queryStart({
    node: "db1:5432",
    role: "primary",
    sql: "  select * from users where id = $1",
    argCount: 1,
    attempt: 2,
    host: "db1",
    port: 5432,
  });
  tracer.queryEnd(handle, { rowCount: 1 });
  const [span] = spans();
  assert.equal(span!.kind, SpanKind.CLIENT);
  assert.equal(span!.name, "SELECT db1:5432");
  assert.deepEqual(span!.attributes, {
    "db.system.name": "postgresql",
    "db.query.text": "  select * from users where id = $1",
    "db.operation.name": "SELECT",
    "server.address": "db1",
    "server.port": 5432,
    "dbx.node.name": "db1:5432",
    "dbx.node.role": "primary",
    "dbx.attempt": 2,
    "dbx.rows": 1,
  });
  assert.equal(span!.status.code, SpanStatusCode.UNSET);
});

dbTest("queries produce one span per attempt, nested under the caller's span", async (cluster) => {
  spans();
  await withContextManager(async () => {
    const parent = provider.getTracer("test");
    await parent.startActiveSpan("request", async (root) => {
      await cluster.query("select $1::int as n", [987654321]);
      await cluster.readQuery("select 1");
      root.end();
    });
  });
  const all = spans();
  const root = all.find((s) => s.name === "request")!;
  const db = all.filter((s) => s.name !== "request");
  assert.equal(db.length, 2);
  for (const s of db) {
    assert.equal(
      s.parentSpanContext?.spanId,
      root.spanContext().spanId,
      "nested under the caller's span",
    );
    assert.equal(s.kind, SpanKind.CLIENT);
    assert.equal(s.attributes["db.system.name"], "postgresql");
    assert.equal(s.attributes["dbx.attempt"], 1);
  }
  assert.equal(db[0]!.attributes["dbx.node.role"], "primary");
  assert.equal(db[0]!.attributes["server.port"], port(urls!.master));
  assert.equal(db[0]!.attributes["db.query.text"], "select $1::int as n");
  assert.ok(
    !JSON.stringify(db[0]!.attributes).includes("987654321"),
    "argument values never recorded",
  );
  assert.equal(db[1]!.attributes["dbx.node.role"], "replica");
  assert.ok(urls!.replicas.map(port).includes(db[1]!.attributes["server.port"] as number));
  console.log("sample span attributes:", JSON.stringify(db[0]!.attributes));
}, { config: { tracer: otelTracer(provider) } });

dbTest(
  "a failing statement's span has status ERROR, the SQLSTATE and an exception event",
  async (cluster) => {
    spans();
    await cluster.exec("drop table if exists otel_uniq");
    await cluster.exec("create table otel_uniq(id int primary key)");
    await cluster.exec("insert into otel_uniq values (1)");
    spans();
    await assert.rejects(cluster.exec("insert into otel_uniq values (1)"));
    const [span] = spans();
    assert.equal(span!.status.code, SpanStatusCode.ERROR);
    assert.equal(span!.attributes["db.response.status_code"], "23505");
    assert.equal(span!.attributes["error.type"], "23505");
    assert.equal(span!.attributes["db.operation.name"], "INSERT");
    assert.equal(span!.events.filter((e) => e.name === "exception").length, 1);
    await cluster.exec("drop table otel_uniq");
  },
  { config: { tracer: otelTracer(provider) } },
);

dbTest("a node's own tracer overrides the cluster's", async (cluster) => {
  spans();
  nodeExporter.reset();
  await cluster.query("select 1");
  await cluster.readQuery("select 1");
  assert.equal(
    nodeExporter.getFinishedSpans().length,
    1,
    "the master's query went to its own tracer",
  );
  assert.equal(nodeExporter.getFinishedSpans()[0]!.attributes["dbx.node.role"], "primary");
  const clusterSpans = spans();
  assert.equal(clusterSpans.length, 1);
  assert.equal(clusterSpans[0]!.attributes["dbx.node.role"], "replica");
}, {
  config: {
    master: { url: urls?.master ?? "postgres://x@127.0.0.1/x", tracer: otelTracer(nodeProvider) },
    tracer: otelTracer(provider),
  },
});
