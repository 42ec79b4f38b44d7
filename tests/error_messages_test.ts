/**
 * What error messages tell a user: a statement error names the statement's
 * text (never dbx's internal prepared-statement name).
 */

import assert from "node:assert/strict";
import { DbxError } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";

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
