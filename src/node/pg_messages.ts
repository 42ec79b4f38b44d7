/**
 * The frontend messages of one run of a named statement (`lean_query.ts`),
 * written into one buffer in one pass: Parse (the first time on a
 * connection), Bind, Describe of the portal (until the connection knows the
 * result's columns), Execute and Sync. Values are prepared as pg's `Query`
 * binds them (pg's own `prepareValue`, but for a string or a number, which
 * it gives as text): text, or binary for a Buffer. And the Query message of a
 * text without parameters.
 *
 * Short ASCII strings (names, most values) are written byte by byte, and
 * integers likewise: on Bun and Deno a `Buffer` method called from
 * JavaScript costs more than the loop.
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
const DESCRIBE = [0x44, 0, 0, 0, 6, 0x50, 0];
const EXECUTE_SYNC = [0x45, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0x53, 0, 0, 0, 4];

/** Strings up to this long are measured and written by a loop when ASCII. */
const SHORT = 64;

/**
 * Each value's prepared form and size, reused from run to run: a run
 * allocates its buffer and nothing else. A value's `toPostgres` may send a
 * statement while its run is written (pg submits it at once when
 * pipelining): that run gets arrays of its own.
 */
const PREPARED: (Buffer | string | null)[] = [];
/** Per value: its size (negative: a short ASCII string, minus its length). */
const SIZES: number[] = [];
let scratchInUse = false;

/** A string's UTF-8 length; negative (minus it) when it is written by a loop (short ASCII). */
function utf8Size(s: string): number {
  const n = s.length;
  if (n > SHORT) return Buffer.byteLength(s);
  for (let i = 0; i < n; i++) if (s.charCodeAt(i) > 0x7f) return Buffer.byteLength(s);
  return -n;
}

/** Writes `s` (its {@linkcode utf8Size} `size`) at `at`; returns the position after it. */
function putString(buf: Buffer, at: number, s: string, size: number): number {
  if (size >= 0) return at + buf.write(s, at, "utf8");
  for (let i = 0; i < s.length; i++) buf[at++] = s.charCodeAt(i);
  return at;
}

/** Writes a big-endian int32 at `at`; returns the position after it. */
function putInt32(buf: Buffer, at: number, v: number): number {
  buf[at] = v >>> 24;
  buf[at + 1] = v >>> 16;
  buf[at + 2] = v >>> 8;
  buf[at + 3] = v;
  return at + 4;
}

/** Writes a big-endian int16 at `at`; returns the position after it. */
function putInt16(buf: Buffer, at: number, v: number): number {
  buf[at] = v >>> 8;
  buf[at + 1] = v;
  return at + 2;
}

/** Writes constant bytes at `at`; returns the position after them. */
function putBytes(buf: Buffer, at: number, bytes: readonly number[]): number {
  for (let i = 0; i < bytes.length; i++) buf[at++] = bytes[i]!;
  return at;
}

/**
 * A Query message (the simple protocol): a text without parameters, which
 * may hold several statements.
 *
 * @param text The text.
 * @returns The message.
 */
export function queryMessage(text: string): Buffer {
  const size = utf8Size(text);
  const bytes = Math.abs(size);
  const buf = Buffer.allocUnsafe(1 + 4 + bytes + 1);
  buf[0] = 0x51;
  putInt32(buf, 1, 4 + bytes + 1);
  buf[putString(buf, 5, text, size)] = 0;
  return buf;
}

/**
 * The messages of one run of a named statement. Its arguments are plain
 * parameters, not an object: this runs for every statement.
 *
 * @param name The statement's name.
 * @param text Its text (sent when `parse`).
 * @param values Its bind parameters.
 * @param parse Parse it first: the connection has not prepared it.
 * @param describeIt Describe the portal: the connection does not know the result's columns.
 * @param binary By result column, a defined entry for a column asked for in
 *   binary; undefined: every column in text.
 * @returns One buffer holding them all.
 * @throws What pg's `prepareValue` throws for a value it cannot serialise.
 */
export function namedRunMessages(
  name: string,
  text: string,
  values: readonly unknown[],
  parse: boolean,
  describeIt: boolean,
  binary: readonly unknown[] | undefined,
): Buffer {
  const n = values.length;
  const nameSize = utf8Size(name);
  const nameBytes = Math.abs(nameSize);
  // Bind: code, length, portal "", name, format count and codes, value count, values,
  // result format count and codes (one for every column, or one for all).
  let bind = 1 + 4 + 1 + nameBytes + 1 + 2 + 2 * n + 2 + 2 + 2 * (binary?.length ?? 1);
  // Only preparing the values runs code of the app's (`toPostgres`).
  const reuse = !scratchInUse;
  const prepared = reuse ? PREPARED : new Array<Buffer | string | null>(n);
  const sizes = reuse ? SIZES : new Array<number>(n);
  scratchInUse = true;
  try {
    bind += prepareValues(values, prepared, sizes);
  } catch (err) {
    if (reuse) PREPARED.length = 0;
    throw err;
  } finally {
    if (reuse) scratchInUse = false;
  }
  const textSize = parse ? Buffer.byteLength(text) : 0;
  const parseSize = parse ? 1 + 4 + nameBytes + 1 + textSize + 1 + 2 : 0;
  const describe = describeIt ? DESCRIBE.length : 0;
  const buf = Buffer.allocUnsafe(parseSize + bind + describe + EXECUTE_SYNC.length);
  let at = 0;
  if (parse) {
    buf[at++] = 0x50;
    at = putInt32(buf, at, parseSize - 1);
    at = putString(buf, at, name, nameSize);
    buf[at++] = 0;
    at += buf.write(text, at, "utf8");
    buf[at++] = 0;
    at = putInt16(buf, at, 0);
  }
  buf[at++] = 0x42;
  at = putInt32(buf, at, bind - 1);
  buf[at++] = 0;
  at = putString(buf, at, name, nameSize);
  buf[at++] = 0;
  at = putInt16(buf, at, n);
  for (let i = 0; i < n; i++) at = putInt16(buf, at, prepared[i] instanceof Buffer ? 1 : 0);
  at = putInt16(buf, at, n);
  for (let i = 0; i < n; i++) {
    const value = prepared[i]!;
    if (value === null) {
      at = putInt32(buf, at, -1);
      continue;
    }
    const size = sizes[i]!;
    at = putInt32(buf, at, Math.abs(size));
    at = typeof value === "string" ? putString(buf, at, value, size) : at + value.copy(buf, at);
  }
  if (binary === undefined) {
    at = putInt16(buf, at, 1);
    at = putInt16(buf, at, 0);
  } else {
    at = putInt16(buf, at, binary.length);
    for (let i = 0; i < binary.length; i++) at = putInt16(buf, at, binary[i] === undefined ? 0 : 1);
  }
  if (describe > 0) at = putBytes(buf, at, DESCRIBE);
  putBytes(buf, at, EXECUTE_SYNC);
  // Nothing of a run is held after it.
  if (reuse) PREPARED.length = 0;
  return buf;
}

/**
 * Prepares `values` as pg's `Query` binds them, into `prepared`, with
 * their sizes into `sizes`.
 *
 * @returns The bytes they take in a Bind, with their length fields.
 */
function prepareValues(
  values: readonly unknown[],
  prepared: (Buffer | string | null)[],
  sizes: number[],
): number {
  let bytes = 0;
  for (let i = 0; i < values.length; i++) {
    const raw = values[i];
    // What pg's prepareValue gives a string or a number, without the call.
    const value =
      (typeof raw === "string" ? raw : typeof raw === "number" ? String(raw) : prepareValue(raw)) as
        | Buffer
        | string
        | null
        | undefined;
    if (value === null || value === undefined) {
      prepared[i] = null;
      sizes[i] = 0;
    } else {
      prepared[i] = value;
      sizes[i] = typeof value === "string" ? utf8Size(value) : value.length;
    }
    bytes += 4 + Math.abs(sizes[i]!);
  }
  return bytes;
}
