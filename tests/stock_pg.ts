/**
 * What the tests comparing dbx's query objects (`src/node/lean_query.ts`)
 * with stock pg share: a stock client, a result shown as pg documents it,
 * and a select of many types.
 */

// @ts-types="@types/pg"
import pg from "pg";
import { testDatabase } from "../src/testing/db_test.ts";
import { useRowParser } from "../src/node/pg_parser.ts";

/**
 * A stock pg client on the test database, closed by `end()`.
 *
 * @param pipeline A pipelined client, its rows read by dbx's parser.
 * @returns The connected client.
 */
export async function stockClient(pipeline = false): Promise<pg.Client> {
  const { master } = await testDatabase();
  const client = new pg.Client(
    { connectionString: master, ...(pipeline ? { pipeline } : {}) } as pg.ClientConfig,
  );
  client.on("error", () => {});
  if (pipeline) useRowParser(client);
  await client.connect();
  return client;
}

/**
 * Types, NULLs and non-ASCII: `count` rows.
 *
 * @param count How many rows: a parameter (`$1::int`) or a number.
 * @returns The statement.
 */
export function typedRows(count: string): string {
  return `
  select i,
         case when i % 3 = 0 then null else 'Grüße ' || i || ' 🎉' end as utf8,
         i * 1.5::float8 as float,
         (i * 1000000000000)::int8 as big,
         timestamptz '2026-12-03 08:11:18.123456+00' + i * interval '37 days 3 hours' as tz,
         jsonb_build_object('i', i) as j,
         array[i, i + 1] as arr
    from generate_series(1, ${count}) as i`;
}

/**
 * What a test compares of a pg result: everything pg's `QueryResult`
 * documents (of each, for a text of several statements).
 *
 * @param result The result.
 * @returns Its documented fields.
 */
export function shown(result: pg.QueryResult | pg.QueryResult[]): unknown {
  if (Array.isArray(result)) return result.map(shown);
  return {
    command: result.command,
    rowCount: result.rowCount,
    oid: result.oid,
    rows: result.rows,
    fields: result.fields.map((f) => ({ ...f })),
  };
}
