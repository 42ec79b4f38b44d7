/**
 * Row builders for dbx's own queries (`lean_query.ts`): an object row is built
 * by a constructor compiled once per column list (the columns assigned in
 * order, so every row of the list has one shape; {@linkcode plainObjects});
 * an array row by a loop. Both call the connection's parsers as pg does, and
 * leave NULL as null.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import type { InPlace } from "./pg_parser.ts";
import { type BinaryAt, binaryAt, parserAt } from "./pg_types.ts";

/** A row description field, as pg-protocol parses it. */
export type Field = pg.FieldDef;
/** A value parser. */
export type Parser = (text: string) => unknown;
/** Builds one row from a DataRow's field texts. */
export type RowBuilder = (parsers: readonly Parser[], texts: readonly (string | null)[]) => unknown;

/** The "parser" of a column whose value `readFields` (`pg_parser.ts`) parsed in place. */
const parsedInPlace: Parser = (value) => value;

/** How a result's columns are read ({@linkcode columnParsers}). */
export interface ColumnParsers {
  /** The parsers they were looked up in, and whether binary columns were allowed. */
  readonly types: pg.CustomTypesConfig;
  readonly binaryRows: boolean;
  /** By column, the connection's parser. */
  readonly parsers: readonly Parser[];
  /** The in-place form of those that have one (`pg_types.ts`), if any. */
  readonly inPlace: readonly (InPlace | undefined)[] | undefined;
  /** The binary reader of those that have one, if any and when `binaryRows`. */
  readonly binary: readonly (BinaryAt | undefined)[] | undefined;
  /** The parsers for rows read in place (the identity for columns read in place or in binary). */
  readonly rawParsers: readonly Parser[];
}

/**
 * A result's parsers, looked up now (an app may set one at any time), and
 * how each column is read. When every parser is the one `previous` found,
 * `previous` is returned as it is.
 *
 * @param types The connection's parsers.
 * @param fields The result's columns.
 * @param binaryRows Whether the rows may come with binary columns (`pg_parser.ts` `readsRows`).
 * @param previous What the last run of the same statement found, if any.
 * @returns How the columns are read.
 */
export function columnParsers(
  types: pg.CustomTypesConfig,
  fields: readonly Field[],
  binaryRows: boolean,
  previous?: ColumnParsers,
): ColumnParsers {
  const count = fields.length;
  if (previous?.types === types && previous.binaryRows === binaryRows) {
    let i = 0;
    while (
      i < count && types.getTypeParser(fields[i]!.dataTypeID, "text") === previous.parsers[i]
    ) i++;
    if (i === count) return previous;
  }
  const parsers = new Array<Parser>(count);
  for (let i = 0; i < count; i++) {
    parsers[i] = types.getTypeParser(fields[i]!.dataTypeID, "text") as Parser;
  }
  let inPlace: (InPlace | undefined)[] | undefined;
  let binary: (BinaryAt | undefined)[] | undefined;
  let rawParsers = parsers;
  for (let i = 0; i < count; i++) {
    const read = binaryRows ? binaryAt(parsers[i], fields[i]!.dataTypeID) : undefined;
    const at = read === undefined ? parserAt(parsers[i]) : undefined;
    if (read === undefined && at === undefined) continue;
    if (rawParsers === parsers) rawParsers = parsers.slice();
    rawParsers[i] = parsedInPlace;
    if (read !== undefined) (binary ??= new Array<BinaryAt | undefined>(count))[i] = read;
    else (inPlace ??= new Array<InPlace | undefined>(count))[i] = at;
  }
  return { types, binaryRows, parsers, inPlace, binary, rawParsers };
}

/** Object row builders by column list, shared by every connection. */
const builders = new Map<string, RowBuilder>();
/** Bound on {@linkcode builders}: past it a column list gets the loop below. */
const MAX_BUILDERS = 2_000;

/**
 * A constructor whose objects are plain objects, as an object literal's are
 * in all a program can see (prototype `Object.prototype`, `constructor`
 * `Object`, own keys in the order they were set), for what holds an answer's
 * data: its rows, and its result (`lean_query.ts`). A literal has an
 * allocation site, and V8 moves a site whose objects outlive collections to
 * the old generation ("pretenuring"). On Deno, reads of several connections
 * are handled before the callers they answer resume, up to ~100 answers
 * waiting at 256 callers of 100-row selects: the row literal and the result
 * literal were moved, and from then on every collection kept each row's
 * values too, until a full one. That halved the rate at 128 and 256 callers
 * in most sustained runs. Made by a constructor, they have no site to move.
 *
 * @param params Its parameter names.
 * @param body Its body (`this` is the object).
 * @returns The constructor.
 */
export function plainObjects<A extends unknown[]>(
  params: readonly string[],
  body: string,
): new (...args: A) => unknown {
  const make = new Function(...params, body) as unknown as new (...args: A) => unknown;
  make.prototype = Object.prototype;
  return make;
}

/**
 * The object row builder of a column list: a constructor assigning the
 * columns in order ({@linkcode plainObjects}), so every row of the list has
 * one shape. As with pg, a repeated name keeps its first place and its last
 * value.
 */
export function objectBuilder(fields: readonly Field[]): RowBuilder {
  const key = fields.map((f) => f.name).join("\0");
  let build = builders.get(key);
  if (build !== undefined) return build;
  if (builders.size >= MAX_BUILDERS || fields.some((f) => f.name === "__proto__")) {
    // pg's own way (`__proto__` assigned would set the prototype instead).
    const template: Record<string, unknown> = Object.create(null);
    for (const f of fields) template[f.name] = null;
    return (parsers, texts) => {
      const row: Record<string, unknown> = { ...template };
      for (let i = 0; i < texts.length; i++) {
        const text = texts[i]!;
        row[fields[i]!.name] = text === null ? null : parsers[i]!(text);
      }
      return row;
    };
  }
  const body = fields.map((f, i) =>
    `this[${JSON.stringify(f.name)}] = t[${i}] === null ? null : p[${i}](t[${i}]);`
  );
  const Row = plainObjects<[readonly Parser[], readonly (string | null)[]]>(
    ["p", "t"],
    body.join("\n"),
  );
  build = (parsers, texts) => new Row(parsers, texts);
  builders.set(key, build);
  return build;
}

/** An array row. */
export function arrayRow(parsers: readonly Parser[], texts: readonly (string | null)[]): unknown[] {
  const row = new Array<unknown>(texts.length);
  for (let i = 0; i < texts.length; i++) {
    const text = texts[i]!;
    row[i] = text === null ? null : parsers[i]!(text);
  }
  return row;
}
