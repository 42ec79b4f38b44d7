/**
 * Values for COPY's text format, encoded as node-postgres encodes query
 * arguments (its `prepareValue` in `lib/utils.js`), so a row that works as
 * the arguments of an INSERT works in `copyFrom` and stores the same values.
 *
 * @module
 */

import { Buffer } from "node:buffer";
// @ts-types="@types/pg"
import pg from "pg";

/** A value as pg sends it as a query argument: text, bytes, or SQL NULL. */
type Prepared = string | Buffer | null;

const NEEDS_ESCAPE = /[\\\t\n\r]/;
const ESCAPES: Readonly<Record<string, string>> = {
  "\\": "\\\\",
  "\t": "\\t",
  "\n": "\\n",
  "\r": "\\r",
};

/** COPY's text format: backslash, tab, newline and carriage return are escaped. */
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
  // pg sends "NaN-NaN-..." after a deprecation warning and says it will throw.
  if (Number.isNaN(d.getTime())) throw new RangeError("Cannot COPY an invalid Date");
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

function bytes(view: ArrayBufferView): Buffer {
  return view instanceof Buffer ? view : Buffer.from(view.buffer, view.byteOffset, view.byteLength);
}

/** An array element, quoted: backslashes and double quotes are escaped. */
function quoteElement(text: string): string {
  return `"${text.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

/**
 * A JavaScript array as a PostgreSQL array literal, as pg's `arrayString`
 * writes it: nested arrays nest, `null` / `undefined` are NULL, every other
 * element is quoted (bytes excepted), elements separated by commas.
 */
function arrayText(values: readonly unknown[]): string {
  let text = "{";
  for (let i = 0; i < values.length; i++) {
    if (i > 0) text += ",";
    const item = values[i];
    if (item === null || item === undefined) {
      text += "NULL";
    } else if (Array.isArray(item)) {
      text += arrayText(item);
    } else if (ArrayBuffer.isView(item)) {
      // `\\x...` unquoted: the array parser drops one backslash, bytea reads `\x`.
      text += "\\\\x" + bytes(item).toString("hex");
    } else {
      // pg fails on a toPostgres() that gives null or bytes here; NULL and hex are meant.
      const prepared = prepare(item);
      if (prepared === null) text += "NULL";
      else if (typeof prepared === "string") text += quoteElement(prepared);
      else text += quoteElement("\\x" + prepared.toString("hex"));
    }
  }
  return text + "}";
}

/**
 * pg's `prepareValue`: one value as the text (or bytes) pg sends for a query
 * argument. Unlike pg it refuses what would send nonsense: an invalid Date
 * (pg plans to throw too), a function or a symbol (pg sends its source text
 * or its description). An `ArrayBuffer` is bytes here (pg sends `{}`).
 */
function prepare(value: unknown, seen?: unknown[]): Prepared {
  switch (typeof value) {
    case "undefined":
      return null;
    case "string":
      return value;
    case "number":
    case "bigint":
    case "boolean":
      return value.toString();
    case "object":
      break;
    default:
      throw new TypeError(`Cannot COPY a value of type ${typeof value}`);
  }
  if (value === null) return null;
  if (ArrayBuffer.isView(value)) return bytes(value);
  if (value instanceof ArrayBuffer) return Buffer.from(value);
  if (value instanceof Date) return dateText(value);
  if (Array.isArray(value)) return arrayText(value);
  const toPostgres = (value as { toPostgres?: unknown }).toPostgres;
  if (typeof toPostgres === "function") {
    const chain = seen ?? [];
    if (chain.includes(value)) {
      throw new TypeError("Cannot COPY a value whose toPostgres() leads back to itself");
    }
    chain.push(value);
    // pg hands toPostgres its own prepareValue, without the chain.
    return prepare(toPostgres.call(value, (v: unknown) => prepare(v)), chain);
  }
  // `undefined` only from a toJSON() that returned it: pg sends NULL then.
  return JSON.stringify(value) ?? null;
}

/**
 * Encodes one value as a field of COPY's text format, as node-postgres
 * encodes the same value as a query argument, so a row that works as the
 * arguments of an INSERT stores the same values through `copyFrom`.
 *
 * - `null` / `undefined` → `\N` (SQL NULL); the string `"\N"` stays a string.
 * - strings as they are; numbers, bigints and booleans by `toString()`
 *   (`true` / `false`).
 * - `Date` → ISO 8601 with its UTC offset (local time, or UTC with
 *   `pg.defaults.parseInputDatesAsUTC`).
 * - `Uint8Array`, `Buffer`, any other `ArrayBuffer` view and `ArrayBuffer` →
 *   `bytea` hex (`\x...`).
 * - arrays → PostgreSQL array literals (`{"a","b"}`, nested arrays nest,
 *   `null` elements are NULL), for array columns such as `text[]` or `int[][]`.
 *   As with a query argument, a JSON array for a `json` / `jsonb` column must
 *   be passed as `JSON.stringify(value)`.
 * - objects with a `toPostgres()` method → what it returns, encoded in turn.
 * - other objects → `JSON.stringify` (for `json` / `jsonb` columns).
 *
 * The text is then escaped for COPY: backslash, tab, newline and carriage
 * return become `\\`, `\t`, `\n` and `\r`.
 *
 * @param value The value.
 * @returns The field text, ready to be placed between tabs.
 * @throws {RangeError} for an invalid Date.
 * @throws {TypeError} for functions and symbols, a `toPostgres()` that leads
 * back to its own object, and objects `JSON.stringify` rejects (a bigint
 * inside, a cycle).
 *
 * @example Values encoded as query arguments, then escaped for COPY
 * ```ts
 * import { encodeCopyValue } from "@codelab/dbx";
 * import assert from "node:assert/strict";
 *
 * assert.equal(encodeCopyValue("a\tb"), "a\\tb");
 * assert.equal(encodeCopyValue(null), "\\N");
 * assert.equal(encodeCopyValue("\\N"), "\\\\N");
 * assert.equal(encodeCopyValue(new Uint8Array([1, 255])), "\\\\x01ff");
 * assert.equal(encodeCopyValue(["a", null, 'say "hi"']), '{"a",NULL,"say \\\\"hi\\\\""}');
 * assert.equal(encodeCopyValue([[1, 2], [3, null]]), '{{"1","2"},{"3",NULL}}');
 * assert.equal(encodeCopyValue({ tags: ["a", "b"] }), '{"tags":["a","b"]}');
 * assert.equal(encodeCopyValue(JSON.stringify([1, "two"])), '[1,"two"]');
 * ```
 */
export function encodeCopyValue(value: unknown): string {
  const prepared = prepare(value);
  if (prepared === null) return "\\N";
  if (typeof prepared === "string") return escapeText(prepared);
  // The hex form's backslash is itself escaped for the text format.
  return "\\\\x" + prepared.toString("hex");
}
