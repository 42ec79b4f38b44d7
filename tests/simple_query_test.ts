/**
 * Texts without parameters (`LeanQuery` in `src/node/lean_query.ts`, sent in
 * the simple protocol), on pipes and pooled connections: what they return is
 * what stock pg returns (rows, `rowMode: "array"`, `types`, fields, command
 * and counts, one result per statement of a text that has several), and
 * their failures are pg's.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { dbTest, testDatabase } from "../src/testing/db_test.ts";
import { connect } from "../mod.ts";
import { shown, stockClient, typedRows } from "./stock_pg.ts";

/** Types, NULLs and non-ASCII, in a text without parameters. */
const ROWS = (n: number) => typedRows(String(n));

/** Runs `query` on a connection of the facade's own (a pooled connection, not a pipe). */
async function pooled(
  facade: pg.Pool,
  query: string | pg.QueryConfig,
): Promise<pg.QueryResult> {
  const client = await facade.connect();
  try {
    return await client.query(query);
  } finally {
    client.release();
  }
}

/** Texts of one statement, of several, and of none. */
const TEXTS = [
  ROWS(0),
  ROWS(1),
  ROWS(40),
  "select 'é' as \"é\", 1 as a, 2 as a",
  `select 1 as one; select 'x' || i as s from generate_series(1, 3) as i; do $$ begin end $$`,
  "select 1 as a where false; select 2 as b; select 3 as c where false",
  "do $$ begin end $$; select 'after' as s",
  "",
  "-- only a comment",
  "select 'long text ' || repeat('ü', 100) as s /* " + "x".repeat(100) + " */",
];

dbTest(
  "a text without parameters returns what stock pg returns, on pipes and pooled connections",
  async (cluster) => {
    const client = await stockClient();
    try {
      const facade = cluster.pgPool();
      for (const text of TEXTS) {
        for (let run = 0; run < 2; run++) {
          const want = await client.query(text);
          // Each on a pipe (outside a transaction) and on a pooled connection.
          assert.deepEqual(shown(await facade.query(text)), shown(want), text);
          assert.deepEqual(shown(await pooled(facade, text)), shown(want), text);
          const arrays = { text, rowMode: "array" as const };
          const arraysWant = shown(await client.query(arrays));
          assert.deepEqual(shown(await facade.query(arrays)), arraysWant, text);
          assert.deepEqual(shown(await pooled(facade, arrays)), arraysWant, text);
        }
      }
      // Through the statement methods: the rows, in a transaction too.
      const want = (await client.query(ROWS(40))).rows;
      assert.deepEqual(await cluster.query(ROWS(40)), want);
      assert.deepEqual(await cluster.runTx((tx) => tx.query(ROWS(40))), want);
      assert.deepEqual(await cluster.readQuery(ROWS(40)), want);
    } finally {
      await client.end();
    }
  },
);

dbTest(
  "a failure in a text's second statement rejects as with pg, and the connection goes on",
  async (cluster) => {
    const client = await stockClient();
    try {
      const text = "select 1 as a; select 1 / 0 as b; select 3 as c";
      const want = await client.query(text).then(() => undefined, (e: pg.DatabaseError) => e);
      assert.equal(want?.code, "22012");
      const facade = cluster.pgPool();
      for (let run = 0; run < 3; run++) {
        await assert.rejects(facade.query(text), (err: pg.DatabaseError) => {
          assert.equal(err.code, want!.code);
          assert.equal(err.message, want!.message);
          return true;
        });
        assert.deepEqual((await facade.query("select 'still' as s")).rows, [{ s: "still" }]);
      }
      // COPY from stdin without a source: pg fails it with its CopyFail, so does dbx.
      const copy = "copy (select 1) to stdout; copy pg_temp.nothing from stdin";
      const copyWant = await client.query("create temp table nothing(x int)")
        .then(() => client.query("copy nothing from stdin"))
        .then(() => undefined, (e: pg.DatabaseError) => e);
      assert.equal(copyWant?.code, "57014");
      const pgc = await facade.connect();
      try {
        await pgc.query("create temp table nothing(x int)");
        await assert.rejects(pgc.query(copy), (err: pg.DatabaseError) => {
          assert.equal(err.code, copyWant!.code);
          // A leased connection's errors name its node.
          assert.ok(err.message.startsWith(copyWant!.message), err.message);
          return true;
        });
        assert.deepEqual((await pgc.query("select count(*)::int as n from nothing")).rows, [{
          n: 0,
        }]);
        await pgc.query("drop table nothing");
      } finally {
        pgc.release();
      }
    } finally {
      await client.end();
    }
  },
);

dbTest(
  "a text's rows use the config's or the cluster's types, and a throwing parser fails it as with pg",
  async () => {
    const { master } = await testDatabase();
    const types = {
      getTypeParser: ((oid: number, format?: "text" | "binary") =>
        oid === 23
          ? (text: string) => {
            if (text === "13") throw new Error("unlucky 13");
            return `int ${text}`;
          }
          : pg.types.getTypeParser(oid, format as "text")) as pg.CustomTypesConfig["getTypeParser"],
    };
    await using cluster = await connect({ master, types });
    const sql = (n: number) => `select i from generate_series(1, ${n}) as i`;
    for (let run = 0; run < 2; run++) {
      await assert.rejects(cluster.query(sql(20)), /unlucky 13/);
      assert.deepEqual(await cluster.query(sql(2)), [{ i: "int 1" }, { i: "int 2" }]);
      // Several statements: the failure is the statement's, the next text is fine.
      await assert.rejects(cluster.pgPool().query(`${sql(1)}; ${sql(13)}`), /unlucky 13/);
    }
    // A config's own types win over the cluster's.
    const own = {
      getTypeParser:
        ((oid: number, format?: "text" | "binary") =>
          oid === 23
            ? (text: string) => Number(text) * 10
            : pg.types.getTypeParser(oid, format as "text")) as pg.CustomTypesConfig[
            "getTypeParser"
          ],
    };
    const result = await cluster.pgPool().query({ text: sql(2), types: own });
    assert.deepEqual(result.rows, [{ i: 10 }, { i: 20 }]);
  },
);
