/**
 * COPY FROM STDIN for `cluster.copyFrom`: streams rows in PostgreSQL's text
 * format with back-pressure, each value encoded as a query argument would be
 * (`copy_values.ts`), and aborts the COPY (so nothing is committed) when a
 * row is malformed or the source throws.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
// @ts-types="@types/pg-copy-streams"
import { from as copyFromStdin } from "pg-copy-streams";
import type { AttemptInfo } from "../call/attempt.ts";
import type { QueryOptions } from "../executor.ts";
import { describe } from "../call/validate.ts";
import { encodeCopyValue } from "./copy_values.ts";

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

/**
 * The server's error with PostgreSQL's location of the bad data (its `where`,
 * `COPY t, line 2, column c: "..."`) appended to the message: for COPY that
 * is the one way to tell which row failed. Only what the server itself put
 * there is added; it stays in `where` as well.
 */
function withWhere(err: unknown): unknown {
  const where = (err as { where?: unknown } | null)?.where;
  if (err instanceof Error && typeof where === "string" && where !== "") {
    // A trigger or function adds its own lines above COPY's.
    err.message += ` (${where.replaceAll("\n", "; ")})`;
  }
  return err;
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
 * @throws the driver's error when the server rejects the data (its message
 * ending with PostgreSQL's `where`: table, line and column) or the connection fails.
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
    throw err === failure?.error ? withWhere(err) : err;
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  return stream.rowCount;
}
