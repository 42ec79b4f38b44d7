/**
 * The value parsers of the connections dbx opens when the config names none
 * (`types`): pg's own (`pg.types`, including what an app set with
 * `pg.types.setTypeParser`), except that pg's date parser (postgres-date, for
 * `timestamptz`, `timestamp` and `date`) gets a fast path for the text
 * PostgreSQL writes with its default `DateStyle` (ISO): `2026-12-03
 * 08:11:18.123456+00`, read with character arithmetic instead of three regular
 * expressions. It gives the same `Date` for every such text; anything else
 * (`infinity`, BC, a year outside 1000–9999, another DateStyle) goes to pg's
 * parser. The date parser and pg's own `int2`/`int4` parser also have an
 * in-place form (`parserAt`), reading a field where it lies in a row's text,
 * for rows that dbx's own queries read themselves (`lean_query.ts`).
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import postgresDate from "postgres-date";
import textParsers from "pg-types/lib/textParsers.js";
import type { Buffer } from "node:buffer";

/** pg's date parser (postgres-date, the copy pg-types uses; the package has no types). */
const parseDate = postgresDate as (text: string) => Date | number | null;

/** Character codes. */
const ZERO = 48, DASH = 45, PLUS = 43, COLON = 58, DOT = 46, SPACE = 32;

/** Milliseconds in a day. */
const DAY_MS = 86_400_000;

/** Digit values by character code; NaN for every other character (and past the end). */
const DIGITS = new Float64Array(128).fill(NaN);
for (let d = 0; d <= 9; d++) DIGITS[ZERO + d] = d;

/** The two digits at `i`, or NaN. */
function two(s: string, i: number): number {
  return DIGITS[s.charCodeAt(i)]! * 10 + DIGITS[s.charCodeAt(i + 1)]!;
}

/** Powers of ten, for a fraction of a second read as an integer. */
const TENS = [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];

/** Days from 1970-01-01 to a date of the proleptic Gregorian calendar (month 1–12). */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (month > 2 ? month - 3 : month + 9) + 2) / 5) + day - 1;
  return era * 146_097 + yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy - 719_468;
}

/**
 * postgres-date's result for an ISO date or timestamp, computed directly;
 * undefined when the text is not of the common form. It reads `s` from
 * `at` to `end` (a field of a row's text, not cut out of it).
 */
function isoDate(s: string, at: number, end: number): Date | undefined {
  const year = two(s, at) * 100 + two(s, at + 2);
  if (!(year >= 1000) || s.charCodeAt(at + 4) !== DASH || s.charCodeAt(at + 7) !== DASH) {
    return undefined;
  }
  const month = two(s, at + 5), day = two(s, at + 8);
  const length = end - at;
  if (length === 10) return month >= 1 && day >= 1 ? new Date(year, month - 1, day) : undefined;
  if (
    length < 19 || s.charCodeAt(at + 10) !== SPACE || s.charCodeAt(at + 13) !== COLON ||
    s.charCodeAt(at + 16) !== COLON
  ) return undefined;
  const hour = two(s, at + 11), minute = two(s, at + 14), second = two(s, at + 17);
  if (!(month >= 1 && day >= 1 && hour >= 0 && minute >= 0 && second >= 0)) return undefined;
  let i = at + 19;
  let ms = 0;
  if (i < end && s.charCodeAt(i) === DOT) {
    // postgres-date takes 1000 * parseFloat(".ddd"); the quotient of two exact
    // integers is rounded as parseFloat rounds the same decimal: the same number.
    let fraction = 0;
    let j = i + 1;
    for (let d = DIGITS[s.charCodeAt(j)]!; j < end && d >= 0; d = DIGITS[s.charCodeAt(++j)]!) {
      fraction = fraction * 10 + d;
    }
    const digits = j - i - 1;
    if (digits === 0) return undefined;
    if (digits >= TENS.length) return undefined;
    ms = 1000 * (fraction / TENS[digits]!);
    i = j;
  }
  if (i === end) return new Date(year, month - 1, day, hour, minute, second, ms);
  // A time zone: +HH, +HH:MM or +HH:MM:SS (or -).
  const sign = s.charCodeAt(i);
  if (sign !== PLUS && sign !== DASH) return undefined;
  let offset = two(s, i + 1) * 3600;
  i += 3;
  for (let part = 60; part >= 1 && i < end; part /= 60, i += 3) {
    if (s.charCodeAt(i) !== COLON) return undefined;
    offset += two(s, i + 1) * part;
  }
  if (i !== end || !(offset >= 0)) return undefined;
  const utc = daysFromCivil(year, month, day) * DAY_MS + hour * 3_600_000 + minute * 60_000 +
    second * 1000 + Math.trunc(ms);
  return new Date(utc - (sign === DASH ? -offset : offset) * 1000);
}

/**
 * pg's date parser with the fast path in front.
 *
 * @param text A `timestamptz`, `timestamp` or `date` in PostgreSQL's text format.
 * @returns What postgres-date returns for it.
 */
export function parsePgDate(text: string): Date | number | null {
  return isoDate(text, 0, text.length) ?? parseDate(text);
}

/**
 * {@linkcode parsePgDate} of the field from `at` to `end` of `s`.
 *
 * @param s A row's text.
 * @param at Where the field starts.
 * @param end Where it ends.
 * @returns What postgres-date returns for the field.
 */
export function parsePgDateAt(s: string, at: number, end: number): Date | number | null {
  return isoDate(s, at, end) ?? parseDate(s.substring(at, end));
}

/** pg-types' own text parsers by type OID: `pg.types` may hold an app's parser by now. */
const stockParsers = (() => {
  const parsers = new Map<number, unknown>();
  (textParsers as { init(register: (oid: number, parser: unknown) => void): void }).init(
    (oid, parser) => parsers.set(oid, parser),
  );
  return parsers;
})();

/** pg's own parser of `int2`, `int4` and `oid` (`parseInt(text, 10)`). */
const parseInteger = stockParsers.get(23);

/**
 * pg's `int2`/`int4` parser's result for the field from `at` to `end` of `s`:
 * its digits read in place when it is an optional minus and up to 10 digits
 * (all `int4` texts), else `parseInt` of the field.
 *
 * @param s A row's text.
 * @param at Where the field starts.
 * @param end Where it ends.
 * @returns The number.
 */
export function parseIntegerAt(s: string, at: number, end: number): number {
  const minus = s.charCodeAt(at) === DASH;
  let i = minus ? at + 1 : at;
  if (i === end || end - i > 10) return parseInt(s.substring(at, end), 10);
  let n = 0;
  for (; i < end; i++) {
    const d = DIGITS[s.charCodeAt(i)]!;
    if (!(d >= 0)) return parseInt(s.substring(at, end), 10);
    n = n * 10 + d;
  }
  return minus ? -n : n;
}

/**
 * The in-place parser equal to `parser`, for the parsers whose field can be
 * read inside a row's text: dbx's date parser, pg's `int2`/`int4` parser.
 *
 * @param parser A column's parser.
 * @returns Its in-place form, or undefined.
 */
export function parserAt(
  parser: unknown,
): ((s: string, at: number, end: number) => unknown) | undefined {
  if (parser === parsePgDate) return parsePgDateAt;
  if (parser === parseInteger) return parseIntegerAt;
  return undefined;
}

/** Reads a value from its binary form: `n` bytes at `at` of `bytes`. */
export type BinaryAt = (bytes: Buffer, at: number, n: number) => unknown;

/** 2000-01-01T00:00:00Z, PostgreSQL's epoch, in ms since 1970. */
const PG_EPOCH_MS = 946_684_800_000;

const int2At: BinaryAt = (b, at) => ((b[at]! << 24) | (b[at + 1]! << 16)) >> 16;
const int4At: BinaryAt = (b, at) =>
  (b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!;
const oidAt: BinaryAt = (b, at) => (int4At(b, at, 4) as number) >>> 0;
const float8At: BinaryAt = (b, at) => b.readDoubleBE(at);

/**
 * A `timestamptz` from its binary form (microseconds since 2000-01-01 UTC,
 * int64): what postgres-date gives for its text. That Date keeps whole ms,
 * the fraction cut toward the earlier time, as `Math.floor` does here;
 * `infinity` and `-infinity` are the numbers. The division is exact: with
 * 2³² = 4 294 967 × 1000 + 296, `hi × 296 + lo` stays far below 2⁵³, and so
 * does `hi × 4 294 967` for every time a Date can hold.
 */
const timestamptzAt: BinaryAt = (b, at) => {
  const hi = int4At(b, at, 4) as number;
  const lo = (int4At(b, at + 4, 4) as number) >>> 0;
  if (hi === 0x7fffffff && lo === 0xffffffff) return Infinity;
  if (hi === -0x80000000 && lo === 0) return -Infinity;
  return new Date(PG_EPOCH_MS + hi * 4_294_967 + Math.floor((hi * 296 + lo) / 1000));
};

/**
 * The binary reader that gives what `parser` gives for the text of a value
 * of type `oid`, for the types whose binary form the server writes and this
 * process reads faster than their text: `int2`, `int4`, `oid` and `float8`
 * with pg's own parsers, `timestamptz` with pg's or dbx's date parser. A
 * column with any other parser stays text, so an app's parser sees text.
 *
 * `float8` is read exactly: the server writes a float's shortest exact text
 * by default (`extra_float_digits` 1), which `parseFloat` reads back to the
 * same number; a session that lowered `extra_float_digits` gets the exact
 * value here instead of a rounded one. (`float4` stays text: its shortest
 * text is not the double nearest to the float.)
 *
 * @param parser The column's text parser.
 * @param oid The column's type.
 * @returns The reader, or undefined.
 */
export function binaryAt(parser: unknown, oid: number): BinaryAt | undefined {
  switch (oid) {
    case 21:
      return parser === parseInteger ? int2At : undefined;
    case 23:
      return parser === parseInteger ? int4At : undefined;
    case 26:
      return parser === parseInteger ? oidAt : undefined;
    case 701:
      return parser === stockParsers.get(701) ? float8At : undefined;
    case 1184:
      return parser === parsePgDate || parser === stockParsers.get(1184)
        ? timestamptzAt
        : undefined;
  }
  return undefined;
}

/** pg's parsers, with {@linkcode parsePgDate} where pg's is postgres-date's. */
const fastTypes: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: "text" | "binary") => {
    const parser = pg.types.getTypeParser(oid, format as "text");
    return parser === (parseDate as unknown) ? parsePgDate : parser;
  }) as pg.CustomTypesConfig["getTypeParser"],
};

/**
 * The value parsers for a node's connections.
 *
 * @param types The config's `types`, if any: used as they are.
 * @returns Them, or pg's with the fast date path.
 */
export function rowTypes(types: pg.CustomTypesConfig | undefined): pg.CustomTypesConfig {
  return types ?? fastTypes;
}
