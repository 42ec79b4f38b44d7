/**
 * A server at its connection limit (issue #23): a connection refused with
 * 53300 leaves the node up, the call is retried, and the error names the
 * limit and what to do.
 */

import assert from "node:assert/strict";
import { connect, DbxError } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";

dbTest(
  "a server that refuses new connections with 53300 stays up; the call is retried and its error names the limit",
  async (admin) => {
    const urls = testDatabaseUrls()!;
    await admin.exec("drop role if exists dbx_limited");
    await admin.exec("create role dbx_limited login");
    const url = new URL(urls.master);
    url.username = "dbx_limited";
    url.password = "";
    const cluster = await connect({
      master: url.toString(),
      pool: { max: 5 },
      pipeline: false,
      retry: { maxAttempts: 3, baseDelayMs: 5, maxDelayMs: 20 },
    });
    try {
      const tx = await cluster.begin(); // one pooled connection, held
      // From now on the role may not open another connection.
      const { n } = await admin.queryRow<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where usename = 'dbx_limited'",
      );
      await admin.exec(`alter role dbx_limited connection limit ${n}`);
      const err = await cluster.query("select 1").then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof DbxError, `rejected with a DbxError, got ${err}`);
      assert.equal(err.code, "53300");
      assert.match(err.message, /connection limit is reached/);
      assert.match(err.message, /pool\.max/);
      const [node] = cluster.stats().nodes;
      assert.equal(node!.healthy, true, "a full server is not down");
      assert.ok(node!.retries >= 1, `the call was retried: ${node!.retries} retries`);
      await admin.exec("alter role dbx_limited connection limit -1");
      await tx.rollback();
      assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
    } finally {
      await cluster.close();
      await admin.exec("drop role dbx_limited");
    }
  },
);
