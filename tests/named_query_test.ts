/**
 * Named statements (`src/node/lean_query.ts`), on pipes and pooled connections: what they return is
 * what stock pg returns (rows, `rowMode: "array"`, `types`, fields, command
 * and counts), on the run that describes the statement and on the runs that
 * reuse its description; a connection describes a statement once; parser
 * errors and `pg.types.setTypeParser` behave as with pg.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { dbTest, testDatabase } from "../src/testing/db_test.ts";
import { pgQuery } from "../src/node/pg_query.ts";
import { shown, stockClient, typedRows } from "./stock_pg.ts";

/** Types, NULLs and non-ASCII, selected by a parameter. */
const ROWS = typedRows("$1::int");

dbTest(
  "a named statement on a pipe returns what stock pg returns, on every run",
  async (cluster) => {
    const client = await stockClient();
    try {
      const facade = cluster.pgPool();
      for (let run = 0; run < 3; run++) {
        for (const n of [0, 1, 40]) {
          const want = (await client.query(ROWS, [n])).rows;
          assert.deepEqual(await cluster.query(ROWS, [n]), want);
          // On a pooled connection: a transaction, and one of its own.
          assert.deepEqual(await cluster.runTx((tx) => tx.query(ROWS, [n])), want);
          assert.deepEqual(await cluster.withConnection((conn) => conn.query(ROWS, [n])), want);
          const config = { text: ROWS, values: [n] };
          assert.deepEqual(shown(await facade.query(config)), shown(await client.query(config)));
          const arrays = { ...config, rowMode: "array" as const };
          assert.deepEqual(shown(await facade.query(arrays)), shown(await client.query(arrays)));
        }
      }
      await client.query("create temp table named_q(id int, v text)");
      await cluster.exec("drop table if exists named_q");
      await cluster.exec("create table named_q(id int, v text)");
      try {
        const insert = "insert into named_q values ($1, $2)";
        const update = "update named_q set v = $2 where id >= $1";
        for (let run = 0; run < 3; run++) {
          assert.deepEqual(
            shown(await facade.query(insert, [run, `v${run}`])),
            shown(await client.query(insert, [run, `v${run}`])),
          );
          assert.deepEqual(
            shown(await facade.query(update, [0, "w"])),
            shown(await client.query(update, [0, "w"])),
          );
        }
        // Commands whose tags the client reads undecoded (`pg_parser.ts` `readCommandTag`).
        const merge = `merge into named_q t using (select $1::int as id) s on t.id = s.id
                       when matched then update set v = 'm' when not matched then insert values (s.id, 'm')`;
        for (
          const [text, values] of [[merge, [7]], [merge, [1]], [
            "delete from named_q where id > $1",
            [0],
          ]] as const
        ) {
          assert.deepEqual(
            shown(await facade.query(text, [...values])),
            shown(await client.query(text, [...values])),
          );
        }
      } finally {
        await cluster.exec("drop table named_q");
      }
    } finally {
      await client.end();
    }
  },
);

dbTest("column names are read as pg reads them: repeated, quoted, __proto__", async (cluster) => {
  const client = await stockClient();
  try {
    for (
      const sql of [
        `select $1::int as a, 2 as a, 'x' as "b""c", 3 as "constructor"`,
        `select $1::int as "__proto__", 2 as b`,
        `select $1::int as b, 2 as "__proto__", 3 as b`,
      ]
    ) {
      for (let run = 0; run < 2; run++) {
        const got = await cluster.query(sql, [1]);
        const want = (await client.query(sql, [1])).rows;
        assert.deepEqual(got, want, sql);
        assert.deepEqual(Object.getPrototypeOf(got[0]), Object.getPrototypeOf(want[0]), sql);
        assert.deepEqual(Object.keys(got[0]!), Object.keys(want[0]!), sql);
      }
    }
  } finally {
    await client.end();
  }
});

dbTest("a connection describes a named statement once and reuses its columns", async () => {
  const client = await stockClient(true);
  const seen: string[] = [];
  const connection = (client as unknown as { connection: pg.Connection }).connection;
  connection.on("message", (m: { name: string }) => seen.push(m.name));
  const run = (text: string, values: unknown[], name: string) =>
    new Promise<pg.QueryResult>((resolve, reject) => {
      const query = pgQuery(client, { text, values, name }, (err, result) => {
        if (err) reject(err);
        else resolve(result);
      });
      assert.ok(query !== undefined);
      client.query(query as pg.Submittable);
    });
  try {
    const text = "select $1::int as i, 'x' as s";
    // Two at once: the second is sent before the first's description arrives, and describes too.
    const [a, b] = await Promise.all([run(text, [1], "nq_1"), run(text, [2], "nq_1")]);
    assert.deepEqual([a.rows, b.rows], [[{ i: 1, s: "x" }], [{ i: 2, s: "x" }]]);
    assert.equal(seen.filter((m) => m === "rowDescription").length, 2, seen.join(" "));
    seen.length = 0;
    const c = await run(text, [3], "nq_1");
    assert.deepEqual(c.rows, [{ i: 3, s: "x" }]);
    assert.deepEqual(c.fields.map((f) => [f.name, f.dataTypeID]), [["i", 23], ["s", 25]]);
    assert.deepEqual(seen, ["bindComplete", "dataRow", "commandComplete", "readyForQuery"]);
    // A statement without rows: NoData once, then nothing of the kind.
    await client.query("create temp table nq_t(x int)");
    seen.length = 0;
    await run("insert into nq_t values ($1)", [1], "nq_2");
    assert.ok(seen.includes("noData"), seen.join(" "));
    seen.length = 0;
    const inserted = await run("insert into nq_t values ($1)", [2], "nq_2");
    assert.deepEqual(seen, ["bindComplete", "commandComplete", "readyForQuery"]);
    assert.deepEqual([inserted.command, inserted.rowCount, inserted.rows], ["INSERT", 1, []]);
  } finally {
    await client.end();
  }
});

dbTest("a parser that throws fails its statement as with pg, and the pipe goes on", async () => {
  const { master } = await testDatabase();
  const { connect } = await import("../mod.ts");
  const types = {
    getTypeParser: ((oid: number, format?: "text" | "binary") =>
      oid === 23
        ? (text: string) => {
          if (text === "13") throw new Error("unlucky 13");
          return Number(text);
        }
        : pg.types.getTypeParser(oid, format as "text")) as pg.CustomTypesConfig["getTypeParser"],
  };
  await using cluster = await connect({ master, types });
  const sql = "select i from generate_series(1, $1::int) as i";
  for (let run = 0; run < 2; run++) {
    await assert.rejects(cluster.query(sql, [20]), /unlucky 13/);
    assert.deepEqual(await cluster.query(sql, [2]), [{ i: 1 }, { i: 2 }]);
  }
});

dbTest("pg.types.setTypeParser applies to a statement already described", async (cluster) => {
  const sql = "select point($1::float8, 2) as p";
  const [before] = await cluster.query<{ p: unknown }>(sql, [1]);
  assert.deepEqual(before!.p, { x: 1, y: 2 });
  const POINT = 600 as Parameters<typeof pg.types.getTypeParser>[0]; // point
  const stock = pg.types.getTypeParser(POINT, "text");
  pg.types.setTypeParser(POINT, (text: string) => `point ${text}`);
  try {
    const [after] = await cluster.query<{ p: unknown }>(sql, [1]);
    assert.equal(after!.p, "point (1,2)");
  } finally {
    pg.types.setTypeParser(POINT, stock);
  }
});
