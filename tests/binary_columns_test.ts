/**
 * Binary columns (`src/node/pg_types.ts` `binaryAt`, `src/node/pg_query.ts`):
 * once a connection knows a named statement's columns, those of `int2`,
 * `int4`, `oid`, `float8` and `timestamptz` with pg's own parsers come in
 * binary, and read to the values stock pg reads from their text; an app's
 * parser keeps getting text.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import type { Cluster } from "../mod.ts";
import { dbTest, testDatabase } from "../src/testing/db_test.ts";
import { binaryAt, rowTypes } from "../src/node/pg_types.ts";

/** Rows with every Date as its time (an invalid one included), so that they compare. */
function comparable(rows: readonly unknown[]): unknown[] {
  return rows.map((row) =>
    Object.fromEntries(
      Object.entries(row as Record<string, unknown>).map((
        [k, v],
      ) => [k, v instanceof Date ? `Date ${v.getTime()}` : v]),
    )
  );
}

/** A stock pg client of the test database, in `zone` (undefined: the server's). */
async function stock<T>(
  zone: string | undefined,
  fn: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const { master } = await testDatabase();
  const client = new pg.Client({ connectionString: master });
  client.on("error", () => {});
  await client.connect();
  try {
    if (zone !== undefined) await client.query(`set time zone '${zone}'`);
    return await fn(client);
  } finally {
    await client.end();
  }
}

/**
 * Runs `sql` three times (the first describes its columns, in text; the others
 * read the binary ones) on a pipe, on a pooled connection and in a transaction,
 * each in the session time zone `zone` where it can be set, and compares every
 * result with stock pg's.
 */
async function compareWithStock(
  cluster: Cluster,
  sql: string,
  args: unknown[],
  zone: string,
): Promise<void> {
  const want = comparable(await stock(zone, async (c) => (await c.query(sql, args)).rows));
  // The server's own zone for pipes (no session of their own).
  const serverZone = comparable(
    await stock(undefined, async (c) => (await c.query(sql, args)).rows),
  );
  for (let run = 1; run <= 3; run++) {
    assert.deepEqual(comparable(await cluster.query(sql, args)), serverZone, `pipe, run ${run}`);
  }
  await cluster.withConnection(async (conn) => {
    await conn.exec(`set time zone '${zone}'`);
    for (let run = 1; run <= 3; run++) {
      assert.deepEqual(comparable(await conn.query(sql, args)), want, `pooled, run ${run}`);
    }
  });
  await cluster.runTx(async (tx) => {
    await tx.exec(`set local time zone '${zone}'`);
    for (let run = 1; run <= 3; run++) {
      assert.deepEqual(comparable(await tx.query(sql, args)), want, `transaction, run ${run}`);
    }
  });
}

Deno.test("binaryAt() reads in binary only the types and parsers that give stock pg's values", () => {
  const types = rowTypes(undefined);
  const parser = (oid: number) => types.getTypeParser(oid, "text");
  for (const oid of [21, 23, 26, 701, 1184]) {
    assert.ok(binaryAt(parser(oid), oid) !== undefined, `type ${oid}`);
  }
  // float4 (its shortest text is not the nearest double), int8 (a string), timestamp and
  // date (local time), numeric, text, bool: text.
  for (const oid of [700, 20, 1114, 1082, 1700, 25, 16]) {
    assert.equal(binaryAt(parser(oid), oid), undefined, `type ${oid}`);
  }
  // An app's parser, or pg's integer parser on another type: text.
  assert.equal(binaryAt((s: string) => Number(s), 23), undefined);
  assert.equal(binaryAt(parser(23), 20), undefined);
  assert.equal(binaryAt(parser(701), 700), undefined);
});

/** Every binary type at its edges (NULL included), between text columns with non-ASCII. */
const EDGES = `
  select n, small, 'Grüße ' || n as t1, i, o, 'ascii' as t2, f, tz, null::int4 as nothing
    from (values
      (1, '-32768'::int2, '-2147483648'::int4, 0::oid, 'NaN'::float8, 'infinity'::timestamptz),
      (2, 32767::int2, 2147483647, 4294967295::oid, 'Infinity', '-infinity'),
      (3, 0::int2, 0, 2147483648::oid, '-Infinity', '4713-01-01 00:00:00+00 BC'),
      (4, '-1'::int2, -1, 1::oid, '-0', '0044-03-15 12:00:00.123456+00 BC'),
      (5, 1::int2, 1, 26::oid, 1e-310, '0001-01-01 00:00:00+00'),
      (6, 2::int2, 123456789, 27::oid, 1.7976931348623157e308, '0099-12-31 23:59:59.999999+00'),
      (7, 3::int2, -123456789, 28::oid, 5e-324, '1969-12-31 23:59:59.9995+00'),
      (8, 4::int2, 5, 29::oid, 0.1::float8 + 0.2::float8, '1970-01-01 00:00:00.000001+00'),
      (9, 5::int2, 6, 30::oid, -123.456, '1999-12-31 23:59:59.999999+00'),
      (10, 6::int2, 7, 31::oid, 1e21, '2000-01-01 00:00:00+00'),
      (11, null, null, null, null, null),
      (12, 7::int2, 8, 32::oid, 2.5, '1900-01-01 00:00:00+00'),
      (13, 8::int2, 9, 33::oid, 3.5, '2026-12-03 08:11:18.123456+00'),
      (14, 9::int2, 10, 34::oid, 4.5, '275760-09-12 00:00:00+00'),
      (15, 10::int2, 11, 35::oid, 5.5, '275760-09-13 00:00:00.001+00'),
      (16, 11::int2, 12, 36::oid, 6.5, '294276-12-31 23:59:59.999999+00')
    ) as v(n, small, i, o, f, tz)
   where n >= $1::int
   order by n`;

for (const zone of ["UTC", "Europe/Amsterdam", "Asia/Kolkata", "America/St_Johns"]) {
  dbTest(
    `binary columns at their edges read as stock pg reads their text (${zone})`,
    async (cluster) => {
      await compareWithStock(cluster, EDGES, [1], zone);
    },
  );
}

dbTest(
  "10 000 timestamptz values over ±2 700 years read as stock pg reads their text",
  async (cluster) => {
    const sql = `
    select timestamptz '2000-01-01 00:00:00+00'
             + ((i * 7919) % 2000000 - 1000000) * interval '1 day'
             + ((i::int8 * 2654435761) % 86400000000) * interval '1 microsecond' as t,
           i
      from generate_series(1, $1::int) as i`;
    await compareWithStock(cluster, sql, [10_000], "Europe/Amsterdam");
  },
);

dbTest(
  "a float8 column is read in binary once its connection knows the statement",
  async (cluster) => {
    // With extra_float_digits 0 the server rounds a float8's text to 15 digits: the
    // first run (which describes the columns) reads that text; the next ones the exact
    // binary value.
    await cluster.withConnection(async (conn) => {
      await conn.exec("set extra_float_digits = 0");
      const sql = "select $1::float8 + 0.2::float8 as f, $2::text as t";
      assert.deepEqual(await conn.query(sql, [0.1, "x"]), [{ f: 0.3, t: "x" }]);
      assert.deepEqual(await conn.query(sql, [0.1, "y"]), [{ f: 0.30000000000000004, t: "y" }]);
    });
  },
);

dbTest(
  "the last instant a Date holds is read as itself, where stock pg's text parse overflows",
  async (cluster) => {
    // postgres-date adds the zone's offset after building the local time: east of UTC the
    // local time of the last instant is past Date's range, and the result is an invalid Date.
    const sql = "select timestamptz '275760-09-13 00:00:00+00' as tz, $1::int as i";
    const text = await stock("Asia/Kolkata", async (c) => (await c.query(sql, [1])).rows);
    assert.deepEqual(comparable(text), [{ tz: "Date NaN", i: 1 }]);
    await cluster.withConnection(async (conn) => {
      await conn.exec("set time zone 'Asia/Kolkata'");
      // The first run reads the text, as pg does; the next ones the binary value.
      assert.deepEqual(comparable(await conn.query(sql, [1])), [{ tz: "Date NaN", i: 1 }]);
      assert.deepEqual(comparable(await conn.query(sql, [2])), [{
        tz: "Date 8640000000000000",
        i: 2,
      }]);
    });
  },
);

dbTest(
  "an app's parser set after a statement was read in binary gets text again",
  async (cluster) => {
    const sql = "select $1::int as i, 1.5::float8 as f, timestamptz '2026-12-03 08:00:00+00' as tz";
    await cluster.withConnection(async (conn) => {
      for (let run = 0; run < 2; run++) {
        assert.deepEqual(comparable(await conn.query(sql, [7])), [
          { i: 7, f: 1.5, tz: `Date ${Date.UTC(2026, 11, 3, 8)}` },
        ]);
      }
      const saved = [23, 701, 1184].map((oid) =>
        [oid, pg.types.getTypeParser(oid, "text")] as const
      );
      for (const [oid] of saved) pg.types.setTypeParser(oid, (text: string) => `app ${text}`);
      try {
        await conn.exec("set time zone 'UTC'");
        assert.deepEqual(await conn.query(sql, [7]), [
          { i: "app 7", f: "app 1.5", tz: "app 2026-12-03 08:00:00+00" },
        ]);
      } finally {
        for (const [oid, parser] of saved) pg.types.setTypeParser(oid, parser);
      }
      // pg's parsers back: binary again.
      assert.deepEqual(comparable(await conn.query(sql, [8])), [
        { i: 8, f: 1.5, tz: `Date ${Date.UTC(2026, 11, 3, 8)}` },
      ]);
    });
  },
);
