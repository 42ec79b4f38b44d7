/**
 * COPY FROM STDIN for `cluster.copyFrom`: streams rows in PostgreSQL's text
 * format with back-pressure, escaping every value, and aborts the COPY (so
 * nothing is committed) when a row is malformed or the source throws.
 *
 * @module
 */

import { Buffer } from "node:buffer";
// @ts-types="@types/pg"
import pg from "pg";
// @ts-types="@types/pg-copy-streams"
import { from as copyFromStdin } from "pg-copy-streams";
import type { AttemptInfo } from "../call/attempt.ts";
import type { QueryOptions } from "../executor.ts";
import { describe } from "../call/validate.ts";

/**
 * Options of `copyFrom`: cancellation and a deadline. Aborting ends the COPY
 * with CopyFail, so the server keeps none of its rows.
 *
 * @example
 * ```ts
 * import { connect, type CopyOptions } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const options: CopyOptions = { timeoutMs: 30_000 };
 * await cluster.copyFrom("events", ["kind"], [["login"]], options);
 * ```
 */
export type CopyOptions = QueryOptions;

/**
 * How a COPY shows in hooks and traces.
 *
 * @param table The table.
 * @returns The attempt's description.
 */
export function copyInfo(table: string): AttemptInfo {
  return { sql: `copy ${table} from stdin`, argCount: 0, attempt: 1 };
}

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

/** Characters buffered before a chunk is written to the connection. */
const CHUNK_SIZE = 64 * 1024;

/**
 * Longest stretch of reading the source, encoding and writing without giving
 * the event loop a turn. A socket that accepts every write at once never
 * applies back-pressure, and awaiting a sync source (or an async one that
 * does no I/O) only runs microtasks: without these turns a COPY would starve
 * timers (health probes, deadlines) and other connections until it ends.
 */
const YIELD_EVERY_MS = 10;

const NEEDS_ESCAPE = /[\\\t\n\r]/;
const ESCAPES: Readonly<Record<string, string>> = {
  "\\": "\\\\",
  "\t": "\\t",
  "\n": "\\n",
  "\r": "\\r",
};

function escapeText(s: string): string {
  return NEEDS_ESCAPE.test(s) ? s.replace(/[\\\t\n\r]/g, (c) => ESCAPES[c]!) : s;
}

function pad(n: number, width = 2): string {
  return String(n).padStart(width, "0");
}

/**
 * A Date as node-postgres sends it as a query parameter (local time with
 * its offset, or UTC when `pg.defaults.parseInputDatesAsUTC` is set), so
 * `copyFrom` and `exec` store the same value, `timestamp` columns included.
 */
function dateText(d: Date): string {
  const utc = pg.defaults.parseInputDatesAsUTC === true;
  let year = utc ? d.getUTCFullYear() : d.getFullYear();
  const bc = year < 1;
  // Year 0 is 1 BC: JavaScript counts astronomical years, PostgreSQL does not.
  if (bc) year = -year + 1;
  const offset = utc ? 0 : -d.getTimezoneOffset();
  const abs = Math.abs(offset);
  return `${pad(year, 4)}-${pad((utc ? d.getUTCMonth() : d.getMonth()) + 1)}-${
    pad(utc ? d.getUTCDate() : d.getDate())
  }T${pad(utc ? d.getUTCHours() : d.getHours())}:${pad(utc ? d.getUTCMinutes() : d.getMinutes())}:${
    pad(utc ? d.getUTCSeconds() : d.getSeconds())
  }.${pad(utc ? d.getUTCMilliseconds() : d.getMilliseconds(), 3)}${offset < 0 ? "-" : "+"}${
    pad(Math.floor(abs / 60))
  }:${pad(abs % 60)}${bc ? " BC" : ""}`;
}

/**
 * Encodes one value as a field of COPY's text format.
 *
 * - `null` / `undefined` → `\N` (SQL NULL); the string `"\N"` stays a string.
 * - strings: backslash, tab, newline and carriage return are escaped.
 * - numbers and bigints as decimal text, booleans as `t` / `f`.
 * - `Date` → ISO 8601 with its UTC offset, as node-postgres sends Dates as
 *   parameters (local time, or UTC with `pg.defaults.parseInputDatesAsUTC`).
 * - `Uint8Array`, `Buffer`, any other `ArrayBuffer` view and `ArrayBuffer` →
 *   `bytea` hex (`\x...`).
 * - other objects and arrays → `JSON.stringify` (for `json` / `jsonb`
 *   columns). Arrays are JSON arrays, not PostgreSQL array literals.
 *
 * @param value The value.
 * @returns The field text, ready to be placed between tabs.
 * @throws {RangeError} for an invalid Date.
 * @throws {TypeError} for functions and symbols, and objects `JSON.stringify`
 * rejects (a bigint inside, a cycle).
 *
 * @example Escaping for COPY's text format
 * ```ts
 * import { encodeCopyValue } from "@codelab/dbx";
 * import assert from "node:assert/strict";
 *
 * assert.equal(encodeCopyValue("a\tb"), "a\\tb");
 * assert.equal(encodeCopyValue(null), "\\N");
 * assert.equal(encodeCopyValue("\\N"), "\\\\N");
 * assert.equal(encodeCopyValue(new Uint8Array([1, 255])), "\\\\x01ff");
 * assert.equal(encodeCopyValue({ tags: ["a", "b"] }), '{"tags":["a","b"]}');
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
        return dateText(value);
      }
      if (ArrayBuffer.isView(value)) {
        // The hex form's backslash is itself escaped for the text format.
        return "\\\\x" +
          Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("hex");
      }
      if (value instanceof ArrayBuffer) return "\\\\x" + Buffer.from(value).toString("hex");
      return escapeText(JSON.stringify(value));
    }
    default:
      throw new TypeError(`Cannot COPY a value of type ${typeof value}`);
  }
}

/**
 * Validates `copyFrom`'s arguments before anything is sent. Internal.
 *
 * @param method The public method name, for messages.
 * @param table Table name, optionally schema-qualified (`schema.table`).
 * @param columns Column names: a non-empty array of non-empty, distinct strings.
 * @param rows A sync or async iterable of rows (a string is refused).
 * @throws {TypeError} when an argument has the wrong type.
 * @throws {RangeError} for an empty table name, an empty column list, an
 * empty column name or a column named twice.
 */
export function checkCopyArgs(
  method: string,
  table: unknown,
  columns: unknown,
  rows: unknown,
): void {
  if (typeof table !== "string") {
    throw new TypeError(
      `Cannot run ${method}() as 'table' must be a string (table or schema.table): current value is ${
        describe(table)
      }`,
    );
  }
  const dot = table.indexOf(".");
  if (table.trim() === "" || (dot >= 0 && (dot === 0 || dot === table.length - 1))) {
    throw new RangeError(
      `Cannot run ${method}() as 'table' must be a table name (table or schema.table): current value is ${
        describe(table)
      }`,
    );
  }
  if (!Array.isArray(columns)) {
    throw new TypeError(
      `Cannot run ${method}() as 'columns' must be a non-empty array of column names: current value is ${
        describe(columns)
      }`,
    );
  }
  if (columns.length === 0) {
    throw new RangeError(
      `Cannot run ${method}() as 'columns' must be a non-empty array of column names: current value is []`,
    );
  }
  columns.forEach((c: unknown, i) => {
    if (typeof c !== "string") {
      throw new TypeError(
        `Cannot run ${method}() as 'columns[${i}]' must be a column name: current value is ${
          describe(c)
        }`,
      );
    }
    if (c === "") {
      throw new RangeError(`Cannot run ${method}() as 'columns[${i}]' must not be empty`);
    }
    if (columns.indexOf(c) !== i) {
      throw new RangeError(`Cannot run ${method}() as 'columns' names "${c}" twice`);
    }
  });
  const iterable = rows !== null && typeof rows === "object" &&
    (Symbol.iterator in rows || Symbol.asyncIterator in rows);
  if (!iterable) {
    throw new TypeError(
      `Cannot run ${method}() as 'rows' must be an iterable or async iterable of arrays: current value is ${
        describe(rows)
      }`,
    );
  }
}

/** `schema.table` splits on the first dot; each part is quoted as one identifier. */
function quoteTable(table: string): string {
  const dot = table.indexOf(".");
  return dot < 0
    ? pg.escapeIdentifier(table)
    : `${pg.escapeIdentifier(table.slice(0, dot))}.${pg.escapeIdentifier(table.slice(dot + 1))}`;
}

function nextTurn(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/**
 * Streams `rows` into `table` with `COPY ... FROM STDIN` (text format) on
 * `client`, at most one ~64 KiB chunk ahead of the connection. A row of the
 * wrong width, an unencodable value or a failing source aborts the COPY
 * (CopyFail), so the server keeps nothing. Either way the connection is
 * handed back idle. Internal: the public entry is `cluster.copyFrom`.
 *
 * @param client A connection taken from the primary's pool, idle.
 * @param table Table name (`schema.table` allowed: split on the first dot).
 * @param columns Column names.
 * @param rows The rows, sync or async.
 * @param signal Aborting stops feeding rows and sends CopyFail (nothing is kept).
 * @returns Rows copied, as counted by the server.
 * @throws {RangeError} for a row of the wrong width, naming its index.
 * @throws {TypeError} for a row that is not an array, or a value that cannot be encoded.
 * @throws the source's own error when iterating it throws.
 * @throws the driver's error when the server rejects the data or the connection fails.
 */
export async function copyIn(
  client: pg.PoolClient,
  table: string,
  columns: readonly string[],
  rows: CopyRows,
  signal?: AbortSignal,
): Promise<number> {
  signal?.throwIfAborted();
  const sql = `copy ${quoteTable(table)} (${
    columns.map((c) => pg.escapeIdentifier(c)).join(", ")
  }) from stdin`;
  const stream = client.query(copyFromStdin(sql));
  // The server's (or the connection's) error, once the COPY failed on its side.
  let failure: { error: unknown } | undefined;
  let drainWaiter: (() => void) | undefined;
  const finished = new Promise<void>((resolve, reject) => {
    // 'finish' comes after ReadyForQuery: the rows are visible and the
    // connection is idle again.
    stream.once("finish", resolve);
    // Not `once`: a second 'error' without a listener would crash the process.
    stream.on("error", (error) => {
      failure ??= { error };
      reject(error);
      drainWaiter?.();
    });
  });
  // Rejections of `finished` are handled below; until then they must not be
  // reported as unhandled.
  finished.catch(() => {});
  stream.on("drain", () => drainWaiter?.());
  const onAbort = () => drainWaiter?.();
  signal?.addEventListener("abort", onAbort, { once: true });
  /** Stops feeding a COPY the server already gave up on. */
  const throwIfFailed = (): void => {
    if (failure !== undefined) throw failure.error;
    signal?.throwIfAborted();
  };

  const width = columns.length;
  let chunk = "";
  let index = 0;
  let turnStarted = performance.now();
  /** Appends a row to the chunk. */
  const add = (row: readonly unknown[]): void => {
    if (!Array.isArray(row)) {
      throw new TypeError(
        `Cannot COPY row ${index} into ${table}: it must be an array of ${width} values, not ${
          describe(row)
        }`,
      );
    }
    if (row.length !== width) {
      throw new RangeError(
        `Cannot COPY row ${index} into ${table}: it has ${row.length} values, ${width} columns expected`,
      );
    }
    let line = encodeCopyValue(row[0]);
    for (let i = 1; i < width; i++) line += "\t" + encodeCopyValue(row[i]);
    chunk += line + "\n";
    index++;
  };
  /** Writes the chunk, then waits for the connection when it asks for back-pressure. */
  const flush = async (): Promise<void> => {
    throwIfFailed();
    const ok = stream.write(chunk);
    chunk = "";
    if (!ok && failure === undefined) {
      await new Promise<void>((resolve) => {
        drainWaiter = resolve;
      });
      drainWaiter = undefined;
      throwIfFailed();
    }
  };
  /** Gives the event loop a turn when this COPY has held it for long enough. */
  const pause = async (): Promise<void> => {
    signal?.throwIfAborted();
    if (performance.now() - turnStarted < YIELD_EVERY_MS) return;
    await nextTurn();
    turnStarted = performance.now();
  };

  try {
    if (Symbol.asyncIterator in rows) {
      for await (const row of rows as AsyncIterable<readonly unknown[]>) {
        add(row);
        if (chunk.length >= CHUNK_SIZE) await flush();
        // The clock is read every 64 rows only; a slow source still gets turns.
        if ((index & 63) === 0) await pause();
      }
    } else {
      for (const row of rows as Iterable<readonly unknown[]>) {
        add(row);
        if (chunk.length >= CHUNK_SIZE) await flush();
        if ((index & 63) === 0) await pause();
      }
    }
    throwIfFailed();
    if (chunk.length > 0) stream.write(chunk);
    stream.end();
    await finished;
  } catch (err) {
    if (failure === undefined) {
      // Our side failed (a bad row, the source threw): CopyFail makes the
      // server discard everything sent so far. `finished` then rejects with
      // the server's "COPY from stdin failed" error, which says less than ours.
      stream.destroy(err instanceof Error ? err : new Error(String(err)));
      await finished.catch(() => {});
    }
    // The stream errors on the server's ErrorResponse, before the
    // ReadyForQuery that follows it: wait for that (an empty query is
    // answered right after it), so the connection is handed back idle and
    // with its transaction status current.
    await client.query("").catch(() => {});
    throw err;
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  return stream.rowCount;
}
