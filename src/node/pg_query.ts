/**
 * The query objects dbx hands to pg. A named statement (one the statement
 * cache prepared) runs as a {@linkcode NamedQuery}: its Parse (first time on
 * a connection), Bind, Describe (until the connection knows the statement's
 * columns), Execute and Sync leave in one buffer, built in one pass
 * (`pg_messages.ts`), and its rows are built by a function compiled once per
 * column list (`row_builder.ts`). pg's `Query` would serialise four messages
 * one by one, ask the server to describe the result on every run, and look
 * its parsers up and copy a template object for every row. Values are
 * prepared by pg's own `prepareValue` and parsed by the same type parsers
 * (`types`, `rowMode` and `pg.types.setTypeParser` work as with pg); errors,
 * notices and the connection's state stay pg's. Other statements (no
 * parameters, `binary`, `rows`, `queryMode`, ...) run as pg's `Query`.
 *
 * Once a connection knows a statement's columns, those of `int2`, `int4`,
 * `oid`, `float8` and `timestamptz` whose parser is pg's own (or dbx's date
 * parser) are asked for in binary, which the server writes and this process
 * reads for less than their text, to the same values (`pg_types.ts`
 * `binaryAt`); only on connections whose rows dbx's parser reads
 * (`pg_parser.ts` `readsRows`), since pg would read them as text.
 *
 * A described statement keeps its columns while its name lives: the server
 * refuses to run a prepared statement whose result changed (0A000), and the
 * statement cache then prepares it again under a new name.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import type { Buffer } from "node:buffer";
import {
  arrayRow,
  type ColumnParsers,
  columnParsers,
  type Field,
  objectBuilder,
  type Parser,
  plainObjects,
  type RowBuilder,
} from "./row_builder.ts";
import { type InPlace, readFields, readsRows } from "./pg_parser.ts";
import { readCommandTag } from "./command_tag.ts";
import type { BinaryAt } from "./pg_types.ts";
import { namedRunMessages } from "./pg_messages.ts";
import { type Failed, settleFailed } from "../failure.ts";

/** The parts of pg's Connection a query writes to. */
interface RawConnection {
  parsedStatements: Record<string, string>;
  submittedNamedStatements: Record<string, string>;
  stream: { writable: boolean; write(data: Uint8Array): boolean };
  sendCopyFail(message: string): void;
}

/** pg's Query class (`pg.Query`), and the parts of a query object @types/pg leaves out. */
interface RawQuery extends pg.Submittable {
  name?: string | undefined;
  types?: unknown;
  _rowMode?: string | undefined;
  _result: { constructor: new (rowMode: unknown, types: unknown) => unknown };
  _results: unknown;
}
const Query = (pg as unknown as {
  Query: {
    new (
      text: string,
      values: unknown[] | undefined,
      callback: (err: Error | null, result: pg.QueryResult) => void,
    ): RawQuery;
    prototype: object;
  };
}).Query;

/** What a connection knows of a named statement's result: its columns, and how rows are built. */
interface Described {
  readonly fields: readonly Field[];
  /** Object rows' builder, compiled on first use. */
  build?: RowBuilder;
  /** How the last run read the columns: kept while every parser stays the same. */
  read?: ColumnParsers;
}

/** Per connection: described statements by name. */
const described = new WeakMap<object, Map<string, Described>>();

/**
 * Forgets what a connection knew of a statement's result (its name was
 * dropped); every statement when `name` is undefined.
 *
 * @param connection pg's Connection of a client.
 * @param name The statement's name.
 */
export function forgetDescribed(connection: object, name?: string): void {
  if (name === undefined) described.delete(connection);
  else described.get(connection)?.delete(name);
}

/** A query's parsers before its columns are known (shared: nothing is allocated per query). */
const NO_PARSERS: readonly Parser[] = Object.freeze([]);

/** CommandComplete's tag: command, then an OID and a row count, or a row count. */
const COMMAND_TAG = /^([A-Za-z]+)(?: (\d+))?(?: (\d+))?/;

/** The result a {@linkcode NamedQuery} answers with: pg's `QueryResult` fields. */
interface NamedResult {
  command: string | null;
  rowCount: number | null;
  oid: number | null;
  rows: unknown[];
  fields: Field[];
}

/** Makes a {@linkcode NamedResult} as pg's starts: no command, no counts (`plainObjects`). */
const PlainResult = plainObjects<[unknown[], Field[]]>(
  ["rows", "fields"],
  "this.command = null; this.rowCount = null; this.oid = null; this.rows = rows; this.fields = fields;",
) as new (rows: unknown[], fields: Field[]) => NamedResult;

/**
 * A named statement run the lean way. Its prototype is pg's `Query`'s
 * (without running that constructor): a pipelined pg client takes only
 * `Query` objects, to keep portals that stay open across round trips (a
 * cursor) off a shared connection, and this query never leaves one open.
 */
class NamedQuery {
  readonly text: string;
  readonly name: string;
  readonly values: readonly unknown[];
  callback: (err: Error | null, result?: NamedResult) => void;
  readonly #types: pg.CustomTypesConfig;
  readonly #arrayRows: boolean;
  #connection: RawConnection | undefined;
  /** What the connection knew of the result when this was sent; undefined: Describe was sent. */
  #described: Described | undefined;
  /** The result's columns, once known (a copy for this result); undefined: none. */
  #fields: Field[] | undefined;
  #parsers: readonly Parser[] = NO_PARSERS;
  /** In-place parsers by column (`readRow`), if any column has one. */
  #inPlace: readonly (InPlace | undefined)[] | undefined;
  /** Binary readers by column, if any column is asked for in binary. */
  #binary: readonly (BinaryAt | undefined)[] | undefined;
  /** {@linkcode #parsers} with the identity for the columns read in place or in binary. */
  #rawParsers: readonly Parser[] = NO_PARSERS;
  #build: RowBuilder = arrayRow;
  /** Made at the first row, so as young as its rows (`plainObjects`, `row_builder.ts`). */
  #rows: unknown[] | undefined;
  #rowError: Error | undefined;
  /** The fields of the row being read, reused from row to row. */
  #scratch: unknown[] | undefined;
  #result: NamedResult | undefined;

  constructor(
    text: string,
    name: string,
    values: readonly unknown[],
    types: pg.CustomTypesConfig,
    arrayRows: boolean,
    callback: (err: Error | null, result?: NamedResult) => void,
  ) {
    this.text = text;
    this.name = name;
    this.values = values;
    this.#types = types;
    this.#arrayRows = arrayRows;
    this.callback = callback;
  }

  /** Called by pg when the query is sent: every message in one write. */
  submit(connection: RawConnection): Error | null {
    const { name, text } = this;
    const parsed = connection.parsedStatements[name];
    const previous = parsed ?? connection.submittedNamedStatements[name];
    if (previous !== undefined && previous !== text) {
      return new Error(
        `Prepared statements must be unique - '${name}' was used for a different statement`,
      );
    }
    let bytes: Buffer;
    try {
      bytes = this.#messages(previous === undefined, parsed !== undefined, connection);
    } catch (err) {
      // A value pg cannot serialise: nothing was sent, pg answers with the error.
      return err as Error;
    }
    this.#connection = connection;
    if (previous === undefined) connection.submittedNamedStatements[name] = text;
    if (connection.stream.writable) connection.stream.write(bytes);
    return null;
  }

  /** Parse when needed, Bind, Describe when the columns are not known, Execute, Sync. */
  #messages(parse: boolean, parsed: boolean, connection: RawConnection): Buffer {
    const known = parsed ? described.get(connection)?.get(this.name) : undefined;
    this.#described = known;
    if (known !== undefined) this.#columns(known, readsRows(connection));
    const describe = known === undefined;
    return namedRunMessages(this.name, this.text, this.values, parse, describe, this.#binary);
  }

  /**
   * Takes the result's columns: their parsers now (an app may set one at any
   * time), the builder once. With `binaryRows`, the columns whose binary form
   * reads to the same value as their text with their parser are asked for in
   * binary (`pg_types.ts` `binaryAt`).
   */
  #columns(known: Described, binaryRows: boolean): void {
    const fields = known.fields;
    const read = known.read = columnParsers(this.#types, fields, binaryRows, known.read);
    const { parsers, inPlace, binary, rawParsers } = read;
    this.#parsers = parsers;
    this.#inPlace = inPlace;
    this.#binary = binary;
    this.#rawParsers = rawParsers;
    this.#fields = fields.slice();
    if (!this.#arrayRows) this.#build = known.build ??= objectBuilder(fields);
  }

  handleRowDescription(msg: { fields: Field[] }): void {
    const known: Described = { fields: msg.fields };
    if (this.#connection !== undefined) {
      let byName = described.get(this.#connection);
      if (byName === undefined) described.set(this.#connection, byName = new Map());
      byName.set(this.name, known);
    }
    // The rows of this run come in text: the Describe asked for none in binary.
    this.#columns(known, false);
  }

  /** Some columns come in binary: every row must reach {@linkcode readRow} (`pg_parser.ts`). */
  get binaryRows(): boolean {
    return this.#binary !== undefined;
  }

  handleDataRow(msg: { fields: (string | null)[] }): void {
    if (this.#rowError !== undefined) return;
    try {
      (this.#rows ??= []).push(this.#build(this.#parsers, msg.fields));
    } catch (err) {
      // As pg: the statement fails with the parser's error once it is answered.
      this.#rowError = err as Error;
    }
  }

  /**
   * A DataRow read from the protocol buffer (`pg_parser.ts`): its fields
   * array is reused, and dates and integers are parsed where they lie in the
   * row's text, not cut out of it first.
   */
  readRow(bytes: Buffer, offset: number, length: number): void {
    if (this.#rowError !== undefined) return;
    try {
      // The builders copy what they read of it into a new row.
      const fields = readFields(
        bytes,
        offset,
        length,
        this.#scratch,
        this.#inPlace,
        this.#binary,
      );
      this.#scratch = fields;
      (this.#rows ??= []).push(this.#build(this.#rawParsers, fields as (string | null)[]));
    } catch (err) {
      this.#rowError = err as Error;
    }
  }

  handleCommandComplete(msg: { text: string }): void {
    const result = this.#completed();
    const match = COMMAND_TAG.exec(msg.text);
    if (match === null) return;
    result.command = match[1]!;
    if (match[3] !== undefined) {
      result.oid = parseInt(match[2]!, 10);
      result.rowCount = parseInt(match[3], 10);
    } else if (match[2] !== undefined) result.rowCount = parseInt(match[2], 10);
  }

  /** A CommandComplete read from the protocol buffer (`pg_parser.ts`): the same, undecoded. */
  readCommandComplete(bytes: Buffer, offset: number, length: number): void {
    readCommandTag(bytes, offset, length, this.#completed());
  }

  /** The statement completed: its result, to be given the tag's figures. */
  #completed(): NamedResult {
    if (this.#described === undefined && !this.#fields?.length && this.#connection) {
      // Described, and no RowDescription came (NoData): a statement without rows.
      let byName = described.get(this.#connection);
      if (byName === undefined) described.set(this.#connection, byName = new Map());
      byName.set(this.name, { fields: [] });
    }
    return this.#answer();
  }

  /** The result, as pg's starts: no command, no counts. */
  #answer(): NamedResult {
    return this.#result ??= new PlainResult(this.#rows ?? [], this.#fields ?? []);
  }

  handleEmptyQuery(): void {}

  handlePortalSuspended(): void {}

  handleCopyInResponse(connection: RawConnection): void {
    connection.sendCopyFail("No source stream defined");
  }

  handleCopyData(): void {}

  handleError(err: Error): void {
    const rowError = this.#rowError;
    this.#rowError = undefined;
    this.callback(rowError ?? err);
  }

  handleReadyForQuery(): void {
    if (this.#rowError !== undefined) return this.handleError(this.#rowError);
    this.callback(null, this.#answer());
  }
}
Object.setPrototypeOf(NamedQuery.prototype, Query.prototype);

/**
 * The query object pg runs for `config`: a {@linkcode NamedQuery} for a
 * named statement with values and nothing else but `rowMode` and `types`;
 * pg's `Query`, built from the text, for one with only a text, values,
 * `rowMode` and `types` (pg copies a config object property by property,
 * descriptors included, a cost on every statement); undefined for others
 * (`queryMode`, `binary`, `rows`, ...), which are left to pg.
 *
 * @param client The connection it goes to: its value parsers (pg's
 *   `types`, and any `client.setTypeParser`) read the rows, unless the query
 *   brings its own `types`.
 * @param config The statement.
 * @param callback pg's callback for its answer.
 * @returns The query for `client.query()`; undefined: pass `config` and `callback` to it.
 */
export function pgQuery(
  client: pg.ClientBase,
  config: pg.QueryConfig,
  callback: (err: Error | null, result: pg.QueryResult) => void,
): pg.Submittable | undefined {
  const c = config as pg.QueryConfig & Partial<pg.QueryArrayConfig> & Record<string, unknown>;
  if (
    c.queryMode !== undefined || c.binary !== undefined || c.portal !== undefined ||
    c.rows !== undefined || c.query_timeout !== undefined || c.callback !== undefined
  ) return undefined;
  const { name, values } = config;
  if (name !== undefined && Array.isArray(values) && typeof config.text === "string") {
    return new NamedQuery(
      config.text,
      name,
      values,
      (c.types as pg.CustomTypesConfig | undefined) ??
        (client as unknown as { _types: pg.CustomTypesConfig })._types,
      c.rowMode === "array",
      callback as (err: Error | null, result?: NamedResult) => void,
    ) as unknown as pg.Submittable;
  }
  const query = new Query(config.text, config.values, callback);
  if (name !== undefined) query.name = name;
  if (c.rowMode !== undefined || c.types !== undefined) {
    // As pg's constructor does with a config: the result reads rows by these.
    query.types = c.types;
    query._rowMode = c.rowMode;
    query._result = query._results = new query._result.constructor(c.rowMode, c.types) as never;
  }
  return query;
}

/**
 * Sends one statement on a client the way {@linkcode pgQuery} builds it.
 *
 * @param client A connection (pooled or leased).
 * @param config The statement.
 * @param failed What a failure becomes (`settleFailed`).
 * @returns pg's result.
 */
export function sendQuery(
  client: pg.ClientBase,
  config: pg.QueryConfig,
  failed: Failed,
): Promise<pg.QueryResult> {
  return new Promise((resolve) => {
    const answered = (err: Error | null, result: pg.QueryResult) =>
      err ? settleFailed(err, failed, resolve) : resolve(result);
    try {
      const query = pgQuery(client, config, answered);
      if (query === undefined) client.query(config, answered);
      else client.query(query);
    } catch (err) {
      settleFailed(err, failed, resolve);
    }
  });
}
