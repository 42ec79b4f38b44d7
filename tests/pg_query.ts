/** One statement on a short-lived pg connection, for tests that check servers from outside dbx. */

// @ts-types="@types/pg"
import pg from "pg";

/**
 * Runs `text` on a fresh connection to `url`, always closed afterwards.
 *
 * @param url Connection URL.
 * @param text The statement.
 * @param values Its parameters.
 * @returns The rows.
 */
export async function query<T = Record<string, unknown>>(
  url: string,
  text: string,
  values: unknown[] = [],
): Promise<T[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  client.on("error", () => {});
  await client.connect();
  try {
    return (await client.query(text, values)).rows as T[];
  } finally {
    await client.end();
  }
}
