/**
 * Nothing secret in any output (issue #19, item 6): a whole session with a
 * password in every URL — statements, reads, a transaction, the pgPool
 * facade, a node that is down, failures, the logger at debug, the slow-query
 * log at 0 ms, hooks and a tracer — and every output searched for it.
 */

import assert from "node:assert/strict";
import { connect, type Logger, type MetricsHook, type Tracer } from "../mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { named, noPostgres } from "./helpers.ts";

const PASSWORD = "Sup3r-S3cret-pw";

/** A URL with the password in it (the local test servers trust loopback, so any password works). */
function withPassword(url: string): string {
  const u = new URL(url);
  u.password = PASSWORD;
  return u.toString();
}

/** Everything a value shows of itself: inspect, JSON, String, and for errors the stack and causes. */
function shown(value: unknown): string {
  const out = [Deno.inspect(value, { depth: 8, showHidden: false })];
  try {
    out.push(JSON.stringify(value) ?? "");
  } catch (err) {
    out.push(String(err));
  }
  if (value instanceof Error) out.push(String(value.stack), shown(value.cause));
  return out.join("\n");
}

Deno.test({
  name: named(
    "no password reaches any log line, hook, span, error, stats, health or inspect of a dbx object",
  ),
  ignore: noPostgres,
  async fn() {
    const urls = testDatabaseUrls();
    if (urls === undefined) return; // `deno task test` always sets them when PostgreSQL is there
    const outputs: string[] = [];
    const record = (...values: unknown[]) => outputs.push(values.map(shown).join(" "));
    const logger: Logger = {
      debug: (msg, attrs) => record(msg, attrs),
      info: (msg, attrs) => record(msg, attrs),
      warn: (msg, attrs) => record(msg, attrs),
      error: (msg, attrs) => record(msg, attrs),
    };
    const metrics: MetricsHook = {
      onQueryStart: (e) => record(e),
      onQueryEnd: (e) => record(e),
      onRetry: (e) => record(e),
      onNodeDown: (e) => record(e),
      onNodeUp: (e) => record(e),
      onReplicaFallback: (e) => record(e),
      onRoleChange: (e) => record(e),
    };
    const tracer: Tracer = {
      queryStart: (info) => (record(info), info),
      queryEnd: (handle, outcome) => record(handle, outcome),
    };
    // A replica that is down: its errors and warnings must not show its URL's password either.
    const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const deadPort = (closed.addr as Deno.NetAddr).port;
    closed.close();
    await using cluster = await connect({
      master: withPassword(urls.master),
      replicas: [
        ...urls.replicas.map(withPassword),
        `postgres://app:${PASSWORD}@127.0.0.1:${deadPort}/app`,
      ],
      logger,
      metrics,
      tracer,
      slowQueryThresholdMs: 0,
      healthCheck: { intervalMs: 200 },
    });
    record(cluster);
    record(await cluster.query("select $1::int as n", [1]));
    record(await cluster.readQuery("select 1 as one"));
    record(await cluster.exec("select 1"));
    record(await cluster.query("select 1/0").catch((e: unknown) => e));
    record(await cluster.readQuery("select * from no_such_table").catch((e: unknown) => e));
    await cluster.runTx(async (tx) => {
      record(tx);
      record(await tx.query("select 2 as two"));
    });
    const tx = await cluster.begin();
    record(tx);
    await tx.rollback();
    record(tx);
    const pool = cluster.pgPool();
    record(pool, await pool.query("select 3 as three"));
    const client = await pool.connect();
    record(client, await client.query("select 4 as four"));
    client.release();
    record(
      await cluster.withConnection(async (conn) => (record(conn), await conn.query("select 5"))),
    );
    record(cluster.stats());
    const report = await cluster.health();
    record(report);
    assert.ok(
      report.nodes.some((n) => !n.healthy && n.error !== undefined),
      "the dead replica is reported down with an error",
    );
    record(await cluster.ping().catch((e: unknown) => e));
    const sub = await cluster.listen("secrets_test", () => {});
    record(sub);
    await sub.unlisten();
    record(
      await connect(`postgres://app:${PASSWORD}@127.0.0.1:${deadPort}/app`)
        .catch((e: unknown) => e),
    );
    const text = outputs.join("\n");
    assert.ok(outputs.length > 20, `outputs were recorded: ${outputs.length}`);
    assert.ok(text.includes("select $1::int as n"), "statements were logged");
    const at = text.indexOf(PASSWORD);
    assert.equal(
      at,
      -1,
      `the password appears in an output: …${text.slice(Math.max(0, at - 200), at + 50)}…`,
    );
  },
});
