/**
 * The frontend messages of one run of a named statement (`pg_query.ts`),
 * written into one buffer in one pass: Parse (the first time on a
 * connection), Bind, Describe of the portal (until the connection knows the
 * result's columns), Execute and Sync. Values are prepared by pg's own
 * `prepareValue`, as pg's `Query` binds them: text, or binary for a Buffer.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import { Buffer } from "node:buffer";

/** pg's value serialiser (what its `Query` binds values with). */
const prepareValue = (pg as unknown as { utils: { prepareValue(value: unknown): unknown } })
  .utils.prepareValue;

/** Describe of the unnamed portal, Execute of it with no row limit, and Sync. */
const DESCRIBE = Buffer.from([0x44, 0, 0, 0, 6, 0x50, 0]);
const EXECUTE_SYNC = Buffer.from([0x45, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0x53, 0, 0, 0, 4]);

/** One run of a named statement. */
export interface NamedRun {
  readonly name: string;
  readonly text: string;
  readonly values: readonly unknown[];
  /** Parse it first: the connection has not prepared it. */
  readonly parse: boolean;
  /** Describe the portal: the connection does not know the result's columns. */
  readonly describe: boolean;
  /**
   * By result column, a defined entry for a column asked for in binary;
   * undefined: every column in text.
   */
  readonly binary: readonly unknown[] | undefined;
}

/**
 * The messages of `run`.
 *
 * @param run The statement, its values and what the connection knows of it.
 * @returns One buffer holding them all.
 * @throws What pg's `prepareValue` throws for a value it cannot serialise.
 */
export function namedRunMessages(run: NamedRun): Buffer {
  const { name, text, values, parse, binary } = run;
  const n = values.length;
  const prepared = new Array<Buffer | string | null>(n);
  const sizes = new Array<number>(n);
  const nameBytes = Buffer.byteLength(name);
  // Bind: code, length, portal "", name, format count and codes, value count, values,
  // result format count and codes (one for every column, or one for all).
  let bind = 1 + 4 + 1 + nameBytes + 1 + 2 + 2 * n + 2 + 2 + 2 * (binary?.length ?? 1);
  for (let i = 0; i < n; i++) {
    const value = prepareValue(values[i]) as Buffer | string | null | undefined;
    if (value === null || value === undefined) {
      prepared[i] = null;
      sizes[i] = 0;
    } else {
      prepared[i] = value;
      sizes[i] = typeof value === "string" ? Buffer.byteLength(value) : value.length;
    }
    bind += 4 + sizes[i]!;
  }
  const parseSize = parse ? 1 + 4 + nameBytes + 1 + Buffer.byteLength(text) + 1 + 2 : 0;
  const describe = run.describe ? DESCRIBE.length : 0;
  const buf = Buffer.allocUnsafe(parseSize + bind + describe + EXECUTE_SYNC.length);
  let at = 0;
  if (parse) {
    buf[at++] = 0x50;
    at = buf.writeInt32BE(parseSize - 1, at);
    at += buf.write(name, at, "utf8");
    buf[at++] = 0;
    at += buf.write(text, at, "utf8");
    buf[at++] = 0;
    at = buf.writeInt16BE(0, at);
  }
  buf[at++] = 0x42;
  at = buf.writeInt32BE(bind - 1, at);
  buf[at++] = 0;
  at += buf.write(name, at, "utf8");
  buf[at++] = 0;
  at = buf.writeInt16BE(n, at);
  for (let i = 0; i < n; i++) at = buf.writeInt16BE(prepared[i] instanceof Buffer ? 1 : 0, at);
  at = buf.writeInt16BE(n, at);
  for (let i = 0; i < n; i++) {
    const value = prepared[i]!;
    if (value === null) {
      at = buf.writeInt32BE(-1, at);
      continue;
    }
    at = buf.writeInt32BE(sizes[i]!, at);
    at += typeof value === "string" ? buf.write(value, at, "utf8") : value.copy(buf, at);
  }
  if (binary === undefined) {
    at = buf.writeInt16BE(1, at);
    at = buf.writeInt16BE(0, at);
  } else {
    at = buf.writeInt16BE(binary.length, at);
    for (const column of binary) at = buf.writeInt16BE(column === undefined ? 0 : 1, at);
  }
  if (describe > 0) at += DESCRIBE.copy(buf, at);
  EXECUTE_SYNC.copy(buf, at);
  return buf;
}
