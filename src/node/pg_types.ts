/**
 * The value parsers of the connections dbx opens when the config names none
 * (`types`): pg's own (`pg.types`, including what an app set with
 * `pg.types.setTypeParser`), except that pg's date parser (postgres-date, for
 * `timestamptz`, `timestamp` and `date`) gets a fast path for the text
 * PostgreSQL writes with its default `DateStyle` (ISO): `2026-12-03
 * 08:11:18.123456+00`, read with character arithmetic instead of three regular
 * expressions. It gives the same `Date` for every such text; anything else
 * (`infinity`, BC, a year outside 1000–9999, another DateStyle) goes to pg's
 * parser.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import postgresDate from "postgres-date";

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
 * undefined when the text is not of the common form.
 */
function isoDate(s: string): Date | undefined {
  const year = two(s, 0) * 100 + two(s, 2);
  if (!(year >= 1000) || s.charCodeAt(4) !== DASH || s.charCodeAt(7) !== DASH) return undefined;
  const month = two(s, 5), day = two(s, 8);
  const length = s.length;
  if (length === 10) return month >= 1 && day >= 1 ? new Date(year, month - 1, day) : undefined;
  if (
    length < 19 || s.charCodeAt(10) !== SPACE || s.charCodeAt(13) !== COLON ||
    s.charCodeAt(16) !== COLON
  ) return undefined;
  const hour = two(s, 11), minute = two(s, 14), second = two(s, 17);
  if (!(month >= 1 && day >= 1 && hour >= 0 && minute >= 0 && second >= 0)) return undefined;
  let i = 19;
  let ms = 0;
  if (s.charCodeAt(i) === DOT) {
    // postgres-date takes 1000 * parseFloat(".ddd"); the quotient of two exact
    // integers is rounded as parseFloat rounds the same decimal: the same number.
    let fraction = 0;
    let j = i + 1;
    for (let d = DIGITS[s.charCodeAt(j)]!; d >= 0; d = DIGITS[s.charCodeAt(++j)]!) {
      fraction = fraction * 10 + d;
    }
    const digits = j - i - 1;
    if (digits === 0) return undefined;
    if (digits >= TENS.length) return undefined;
    ms = 1000 * (fraction / TENS[digits]!);
    i = j;
  }
  if (i === length) return new Date(year, month - 1, day, hour, minute, second, ms);
  // A time zone: +HH, +HH:MM or +HH:MM:SS (or -).
  const sign = s.charCodeAt(i);
  if (sign !== PLUS && sign !== DASH) return undefined;
  let offset = two(s, i + 1) * 3600;
  i += 3;
  for (let part = 60; part >= 1 && i < length; part /= 60, i += 3) {
    if (s.charCodeAt(i) !== COLON) return undefined;
    offset += two(s, i + 1) * part;
  }
  if (i !== length || !(offset >= 0)) return undefined;
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
  return isoDate(text) ?? parseDate(text);
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
