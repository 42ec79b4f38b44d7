/**
 * What error messages tell a user: a statement error names the statement's
 * text (never dbx's internal prepared-statement name), and a call after the
 * cluster was closed names the method, what closed the cluster and where.
 */

import assert from "node:assert/strict";
import { type Cluster, ClusterClosedError, connect, DbxError } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";

const urls = testDatabaseUrls();
/** Appended to the names of tests that need the database, when it is not configured. */
const why = urls === undefined ? " (ignored: DBX_TEST_MASTER_URL is not set)" : "";

/** What `call` rejected with (fails the test when it resolves). */
async function rejection(call: () => Promise<unknown>): Promise<unknown> {
  try {
    await call();
  } catch (err) {
    return err;
  }
  return assert.fail("the call resolved");
}

/** Checks the error of a statement with one bind value too few. */
function assertNamesSql(err: unknown, shown: string): void {
  assert.ok(err instanceof DbxError, `expected a DbxError, got ${err}`);
  assert.ok(
    err.message.includes(`"${shown}"`),
    `the message names the statement text: ${err.message}`,
  );
  assert.doesNotMatch(err.message, /dbx_/);
  assert.match(err.message, /bind message supplies 1 parameters/);
  // The server's code and its own error, untouched, stay available.
  assert.equal(err.code, "08P01");
  assert.ok(err.cause instanceof Error);
  assert.equal((err.cause as { code?: unknown }).code, "08P01");
}

dbTest(
  "a statement with too few bind values fails naming its SQL text, not dbx's prepared statement",
  async (cluster) => {
    const sql = "select $1::int + $2::int";
    for (const call of [() => cluster.query(sql, [1]), () => cluster.readQuery(sql, [1])]) {
      const err = await rejection(call);
      assertNamesSql(err, sql);
      assert.match((err as Error & { cause: Error }).cause.message, /prepared statement "dbx_/);
    }
    // On a pooled connection (a signal keeps it off the pipes) and in a transaction.
    assertNamesSql(
      await rejection(() => cluster.query(sql, [1], { signal: new AbortController().signal })),
      sql,
    );
    assertNamesSql(await rejection(() => cluster.runTx((tx) => tx.query(sql, [1]))), sql);
  },
);

dbTest("a long statement is named by its first 80 characters, on one line", async (cluster) => {
  const sql = `select $1::int + $2::int\n    as ${"x".repeat(100)}`;
  const err = await rejection(() => cluster.query(sql, [1]));
  const shown = `select $1::int + $2::int as ${"x".repeat(52)}…`;
  assert.equal(shown.length, 81);
  assertNamesSql(err, shown);
});

dbTest(
  "with the statement cache off, a statement error names the SQL text too",
  async (cluster) => {
    const sql = "select $1::int + $2::int";
    assertNamesSql(await rejection(() => cluster.query(sql, [1])), sql);
  },
  { config: { statementCache: false } },
);

/** Every kind of call a closed cluster refuses, by the name its error shows. */
function calls(cluster: Cluster): [string, () => Promise<unknown>][] {
  return [
    ["exec", () => cluster.exec("select 1")],
    ["query", () => cluster.query("select 1")],
    ["queryRow", () => cluster.queryRow("select 1")],
    ["readQuery", () => cluster.readQuery("select 1")],
    ["readQueryRow", () => cluster.readQueryRow("select 1")],
    ["copyFrom", () => cluster.copyFrom("t", ["a"], [[1]])],
    ["sendBatch", () => cluster.sendBatch([{ sql: "select 1" }])],
    ["begin", () => cluster.begin()],
    ["runTx", () => cluster.runTx((tx) => tx.exec("select 1"))],
    ["withConnection", () => cluster.withConnection((c) => c.exec("select 1"))],
    ["ping", () => cluster.ping()],
    ["health", () => cluster.health()],
    ["listen", () => cluster.listen("ch", () => {})],
    ["notify", () => cluster.notify("ch", "x")],
    ["stream", async () => {
      for await (const _ of cluster.stream("select 1")) break;
    }],
    ["readStream", async () => {
      for await (const _ of cluster.readStream("select 1")) break;
    }],
    ["query", () => cluster.node(cluster.stats().nodes[0]!.name).query("select 1")],
  ];
}

dbTest(
  "a call after close() names the method and says close() closed the cluster, and where",
  async (cluster) => {
    await cluster.close();
    for (const [method, call] of calls(cluster)) {
      const err = await rejection(call);
      assert.ok(err instanceof ClusterClosedError, `${method}: ${err}`);
      assert.equal(err.name, "ClusterClosedError");
      assert.equal(err.kind, "other");
      assert.ok(
        err.message.startsWith(`Cannot run ${method}() as the cluster was closed by close()`),
        err.message,
      );
      // Where: this file, the line of the close() call above.
      assert.ok(err.message.includes(import.meta.url), err.message);
      assert.match(err.message, /keep it open for as long as a server uses it/);
    }
  },
);

Deno.test({
  name: "a call after an 'await using' block ended says the end of that block closed the cluster" +
    why,
  ignore: urls === undefined,
  async fn() {
    let kept: Cluster | undefined;
    {
      await using cluster = await connect({ master: urls!.master, replicas: urls!.replicas });
      kept = cluster;
    }
    const err = await rejection(() => kept!.query("select 1"));
    assert.ok(err instanceof ClusterClosedError);
    assert.match(
      err.message,
      /^Cannot run query\(\) as the cluster was closed at the end of its 'await using' block/,
    );
    assert.ok(err.message.includes(import.meta.url), err.message);
    assert.match(err.message, /keep it open for as long as a server uses it/);
    assert.match(err.message, /Deno\.serve/);
  },
});
