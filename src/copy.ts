/**
 * COPY FROM STDIN for `cluster.copyFrom`: streams rows in PostgreSQL's text
 * format with back-pressure, escaping every value, and aborts the COPY (so
 * nothing is committed) when a row is malformed or the source throws.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
// @ts-types="@types/pg-copy-streams"
import { from as copyFromStdin } from "pg-copy-streams";

/**
 * Rows for COPY: arrays of column values, from a sync or async iterable.
 *
 * @example
 * ```ts
 * import { connect, type CopyRows } from "@codelab/dbx";
 *
 * async function* events(): AsyncGenerator<unknown[]> {
 *   yield [1, "login"];
 *   yield [2, "logout"];
 * }
 * const rows: CopyRows = events();
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * await cluster.copyFrom("events", ["id", "kind"], rows);
 * ```
 */
export type CopyRows = Iterable<readonly unknown[]> | AsyncIterable<readonly unknown[]>;

/** Bytes buffered before a chunk is written to the connection. */
const CHUNK_SIZE = 64 * 1024;

const NEEDS_ESCAPE = /[\\\t\n\r]/;
const ESCAPES: Readonly<Record<string, string>> = {
  "\\": "\\\\",
  "\t": "\\t",
  "\n": "\\n",
  "\r": "\\r",
};
const HEX: readonly string[] = Array.from(
  { length: 256 },
  (_, i) => i.toString(16).padStart(2, "0"),
);

function escapeText(s: string): string {
  return NEEDS_ESCAPE.test(s) ? s.replace(/[\\\t\n\r]/g, (c) => ESCAPES[c]!) : s;
}

/**
 * Encodes one value as a field of COPY's text format.
 *
 * - `null` / `undefined` → `\N` (SQL NULL); a string `"\N"` stays a string.
 * - strings: backslash, tab, newline and carriage return are escaped.
 * - numbers and bigints as decimal text, booleans as `t` / `f`.
 * - `Date` → ISO 8601 in UTC (for `timestamptz`); an invalid Date is an error.
 * - `Uint8Array` → `bytea` hex (`\x...`).
 * - other objects and arrays → JSON (for `json` / `jsonb`; not PostgreSQL arrays).
 *
 * @param value The value.
 * @returns The field text.
 * @throws {RangeError} for an invalid Date; {TypeError} for functions and symbols.
 *
 * @example
 * ```ts
 * import { encodeCopyValue } from "@codelab/dbx";
 *
 * console.log(encodeCopyValue("a\tb"));  // "a\\tb"
 * console.log(encodeCopyValue(null));    // "\\N"
 * ```
 */
export function encodeCopyValue(value: unknown): string {
  switch (typeof value) {
    case "string":
      return escapeText(value);
    case "number":
    case "bigint":
      return String(value);
    case "boolean":
      return value ? "t" : "f";
    case "undefined":
      return "\\N";
    case "object": {
      if (value === null) return "\\N";
      if (value instanceof Date) {
        if (Number.isNaN(value.getTime())) throw new RangeError("Cannot COPY an invalid Date");
        return value.toISOString();
      }
      if (value instanceof Uint8Array) {
        let hex = "\\\\x";
        for (const byte of value) hex += HEX[byte];
        return hex;
      }
      return escapeText(JSON.stringify(value));
    }
    default:
      throw new TypeError(`Cannot COPY a value of type ${typeof value}`);
  }
}

/**
 * Validates copyFrom's arguments before anything is sent.
 *
 * @param method The public method name, for messages.
 * @param table Table name, optionally schema-qualified.
 * @param columns Column names.
 * @param rows The rows source.
 * @throws {TypeError} naming the bad argument.
 */
export function checkCopyArgs(
  method: string,
  table: unknown,
  columns: unknown,
  rows: unknown,
): void {
  if (typeof table !== "string" || table.trim() === "" || table.split(".").some((p) => p === "")) {
    throw new TypeError(
      `Cannot run ${method}() as 'table' must be a table name (optionally schema.table): current value is ${
        typeof table === "string" ? JSON.stringify(table) : typeof table
      }`,
    );
  }
  if (
    !Array.isArray(columns) || columns.length === 0 ||
    columns.some((c) => typeof c !== "string" || c === "")
  ) {
    throw new TypeError(
      `Cannot run ${method}() as 'columns' must be a non-empty array of column names: current value is ${
        Array.isArray(columns) ? JSON.stringify(columns) : typeof columns
      }`,
    );
  }
  const duplicate = columns.find((c, i) => columns.indexOf(c) !== i);
  if (duplicate !== undefined) {
    throw new TypeError(`Cannot run ${method}() as 'columns' names "${duplicate}" twice`);
  }
  const iterable = rows !== null && typeof rows === "object" &&
    (Symbol.iterator in rows || Symbol.asyncIterator in rows);
  if (!iterable) {
    throw new TypeError(
      `Cannot run ${method}() as 'rows' must be an iterable or async iterable of arrays: current value is ${
        rows === null ? "null" : typeof rows
      }`,
    );
  }
}

function quoteTable(table: string): string {
  return table.split(".").map((part) => pg.escapeIdentifier(part)).join(".");
}

/** Waits until the stream can take more data (or failed). */
function drained(stream: NodeJS.WritableStream & { destroyed?: boolean }): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = () => {
      stream.off("error", onError);
      resolve();
    };
    const onError = (err: Error) => {
      stream.off("drain", onDrain);
      reject(err);
    };
    stream.once("drain", onDrain);
    stream.once("error", onError);
  });
}

/**
 * Streams `rows` into `table` with `COPY ... FROM STDIN` on `client`. A row
 * of the wrong width, an unencodable value or a failing source aborts the
 * COPY (CopyFail), so the server keeps nothing; the connection stays usable.
 *
 * @param client A connection taken from the primary's pool.
 * @param table Table name (`schema.table` allowed).
 * @param columns Column names.
 * @param rows The rows.
 * @returns Rows copied, as counted by the server.
 * @throws {RangeError} for a row of the wrong width (naming its index).
 */
export async function copyIn(
  client: pg.PoolClient,
  table: string,
  columns: readonly string[],
  rows: CopyRows,
): Promise<number> {
  const sql = `copy ${quoteTable(table)} (${
    columns.map((c) => pg.escapeIdentifier(c)).join(", ")
  }) from stdin`;
  const stream = client.query(copyFromStdin(sql));
  const finished = new Promise<void>((resolve, reject) => {
    stream.once("finish", resolve);
    stream.once("error", reject);
  });
  // Until the end, a rejection of `finished` is handled below; keep it from
  // being reported as unhandled meanwhile.
  finished.catch(() => {});
  const width = columns.length;
  let chunk = "";
  let index = 0;
  /** Appends a row to the chunk; true when the chunk should be written. */
  const add = (row: readonly unknown[]): boolean => {
    if (!Array.isArray(row) || row.length !== width) {
      throw new RangeError(
        `Cannot COPY row ${index} into ${table}: it has ${
          Array.isArray(row) ? `${row.length} values` : "no array of values"
        }, ${width} columns expected`,
      );
    }
    let line = "";
    for (let i = 0; i < width; i++) {
      if (i > 0) line += "\t";
      line += encodeCopyValue(row[i]);
    }
    chunk += line + "\n";
    index++;
    return chunk.length >= CHUNK_SIZE;
  };
  /** Writes the chunk, waiting only when the connection asks for back-pressure. */
  const flush = async (): Promise<void> => {
    const ok = stream.write(chunk);
    chunk = "";
    if (!ok) await drained(stream);
  };
  try {
    if (Symbol.asyncIterator in rows) {
      for await (const row of rows as AsyncIterable<readonly unknown[]>) {
        if (add(row)) await flush();
      }
    } else {
      for (const row of rows as Iterable<readonly unknown[]>) if (add(row)) await flush();
    }
    if (chunk.length > 0) stream.write(chunk);
    stream.end();
  } catch (err) {
    // CopyFail: the server discards everything sent so far.
    stream.destroy(err instanceof Error ? err : new Error(String(err)));
    await finished.catch(() => {});
    throw err;
  }
  await finished;
  return stream.rowCount;
}
