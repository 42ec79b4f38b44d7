/**
 * The query object dbx hands to pg for a statement it runs itself
 * ({@linkcode LeanQuery}): a named statement (one the statement cache
 * prepared), or a text without parameters. One class for both, so that the
 * code reading every row sees objects of one shape (two classes sharing
 * those methods cost Deno's 100-row selects a few per cent; an object of its
 * own for the answer, a few dozen bytes per statement).
 *
 * A named statement's Parse (first time on a connection), Bind, Describe
 * (until the connection knows the statement's columns), Execute and Sync
 * leave in one buffer, built in one pass (`pg_messages.ts`). A text without
 * parameters goes as pg sends it, in the simple protocol: one Query message;
 * the text may hold several statements, each answered with a result of its
 * own, as pg's `Query` makes them (`_checkForMultirow`). Either way the rows
 * are built by a function compiled once per column list (`row_builder.ts`),
 * from the bytes of each DataRow when `pg_parser.ts` hands them over
 * (`readRow`), or from pg's fields; pg's `Query` would ask the server to
 * describe a named statement's result on every run, and look its parsers up,
 * copy a template object for every row, and decode each field on its own.
 * Values are prepared by pg's own `prepareValue` and parsed by the same type
 * parsers (`types`, `rowMode` and `pg.types.setTypeParser` work as with pg);
 * errors, notices and the connection's state stay pg's; a row a parser fails
 * on fails the statement once it is answered, as with pg.
 *
 * Once a connection knows a named statement's columns, those of `int2`,
 * `int4`, `oid`, `float8` and `timestamptz` whose parser is pg's own (or
 * dbx's date parser) are asked for in binary, which the server writes and
 * this process reads for less than their text, to the same values
 * (`pg_types.ts` `binaryAt`); only on connections whose rows dbx's parser
 * reads (`pg_parser.ts` `readsRows`), since pg would read them as text.
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
import { namedRunMessages, queryMessage } from "./pg_messages.ts";

/** The parts of pg's Connection a query writes to. */
interface RawConnection {
  parsedStatements: Record<string, string>;
  submittedNamedStatements: Record<string, string>;
  stream: { writable: boolean; write(data: Uint8Array): boolean };
  sendCopyFail(message: string): void;
}

/** The result a query answers with, for each statement of its text: pg's `QueryResult` fields. */
export interface LeanResult {
  command: string | null;
  rowCount: number | null;
  oid: number | null;
  rows: unknown[];
  fields: Field[];
}

/** pg's callback of a query: one result, or one per statement of a text that has several. */
export type LeanCallback = (err: Error | null, result?: LeanResult | LeanResult[]) => void;

/** Makes a {@linkcode LeanResult} as pg's starts: no command, no counts (`plainObjects`). */
const PlainResult = plainObjects<[unknown[], Field[]]>(
  ["rows", "fields"],
  "this.command = null; this.rowCount = null; this.oid = null; this.rows = rows; this.fields = fields;",
) as new (rows: unknown[], fields: Field[]) => LeanResult;

/** A query's parsers before its columns are known (shared: nothing is allocated per query). */
const NO_PARSERS: readonly Parser[] = Object.freeze([]);

/** CommandComplete's tag: command, then an OID and a row count, or a row count. */
const COMMAND_TAG = /^([A-Za-z]+)(?: (\d+))?(?: (\d+))?/;

/** pg's Query class, whose prototype a pipelined pg client asks of the queries it takes. */
const Query = (pg as unknown as { Query: { prototype: object } }).Query;

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

/**
 * A statement run the lean way: named (with its values), or a text without
 * parameters (`name` undefined). Its prototype chain holds pg's `Query`'s
 * (without running that constructor): a pipelined pg client takes only
 * `Query` objects, to keep portals that stay open across round trips (a
 * cursor) off a shared connection, and this query never leaves one open.
 */
export class LeanQuery {
  readonly text: string;
  /** The prepared statement's name; undefined: the text goes in the simple protocol. */
  readonly name: string | undefined;
  readonly values: readonly unknown[] | undefined;
  callback: LeanCallback;
  /** The value parsers: the config's `types`, else the connection's. */
  readonly #types: pg.CustomTypesConfig;
  /** `rowMode: "array"`. */
  readonly #arrayRows: boolean;
  #connection: RawConnection | undefined;
  /** What the connection knew of a named statement's result; undefined: Describe was sent. */
  #described: Described | undefined;
  /** A RowDescription came. */
  #rowDescribed = false;
  /** The current statement's parsers, by column. */
  #parsers: readonly Parser[] = NO_PARSERS;
  /** In-place parsers by column (`readRow`), if any column has one. */
  #inPlace: readonly (InPlace | undefined)[] | undefined;
  /** Binary readers by column, if any column is asked for in binary. */
  #binary: readonly (BinaryAt | undefined)[] | undefined;
  /** {@linkcode #parsers} with the identity for the columns read in place or in binary. */
  #rawParsers: readonly Parser[] = NO_PARSERS;
  #build: RowBuilder = arrayRow;
  /** The current statement's columns, once known; undefined: none. */
  #fields: Field[] | undefined;
  /** Made at the first row, so as young as its rows (`plainObjects`, `row_builder.ts`). */
  #rows: unknown[] | undefined;
  #rowError: Error | undefined;
  /** The fields of the row being read, reused from row to row. */
  #scratch: unknown[] | undefined;
  /** The current statement's result, once it completed (or the answer ended). */
  #result: LeanResult | undefined;
  /** Every statement's result, once a text's second statement answered. */
  #results: LeanResult[] | undefined;

  /**
   * @param text The statement's text.
   * @param name Its prepared statement's name; undefined for a text without parameters.
   * @param values Its bind parameters (a named statement's).
   * @param types The value parsers.
   * @param arrayRows `rowMode: "array"`.
   * @param callback pg's callback for its answer.
   */
  constructor(
    text: string,
    name: string | undefined,
    values: readonly unknown[] | undefined,
    types: pg.CustomTypesConfig,
    arrayRows: boolean,
    callback: LeanCallback,
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
    let bytes: Buffer;
    if (name === undefined) bytes = queryMessage(text);
    else {
      const parsed = connection.parsedStatements[name];
      const previous = parsed ?? connection.submittedNamedStatements[name];
      if (previous !== undefined && previous !== text) {
        return new Error(
          `Prepared statements must be unique - '${name}' was used for a different statement`,
        );
      }
      try {
        bytes = this.#messages(name, previous === undefined, parsed !== undefined, connection);
      } catch (err) {
        // A value pg cannot serialise: nothing was sent, pg answers with the error.
        return err as Error;
      }
      if (previous === undefined) connection.submittedNamedStatements[name] = text;
    }
    this.#connection = connection;
    if (connection.stream.writable) connection.stream.write(bytes);
    return null;
  }

  /** Parse when needed, Bind, Describe when the columns are not known, Execute, Sync. */
  #messages(name: string, parse: boolean, parsed: boolean, connection: RawConnection): Buffer {
    const known = parsed ? described.get(connection)?.get(name) : undefined;
    this.#described = known;
    if (known !== undefined) this.#known(known, readsRows(connection));
    const describe = known === undefined;
    return namedRunMessages(name, this.text, this.values!, parse, describe, this.#binary);
  }

  /**
   * Takes a named statement's columns: their parsers now (an app may set one
   * at any time), the builder once. With `binaryRows`, the columns whose
   * binary form reads to the same value as their text with their parser are
   * asked for in binary (`pg_types.ts` `binaryAt`).
   */
  #known(known: Described, binaryRows: boolean): void {
    const fields = known.fields;
    const read = known.read = columnParsers(this.#types, fields, binaryRows, known.read);
    this.#columns(
      read,
      fields.slice(),
      this.#arrayRows ? undefined : known.build ??= objectBuilder(fields),
    );
  }

  handleRowDescription(msg: { fields: Field[] }): void {
    this.#rowDescribed = true;
    const name = this.name;
    if (name === undefined) {
      // A statement of a text: its rows come in text.
      this.#nextStatement();
      this.#columns(columnParsers(this.#types, msg.fields, false), msg.fields);
      return;
    }
    const known: Described = { fields: msg.fields };
    if (this.#connection !== undefined) {
      let byName = described.get(this.#connection);
      if (byName === undefined) described.set(this.#connection, byName = new Map());
      byName.set(name, known);
    }
    // The rows of this run come in text: the Describe asked for none in binary.
    this.#known(known, false);
  }

  /**
   * The current statement's rows are read by `read` (`columnParsers`), with
   * `fields` as the result's columns and `build` (when the rows are objects).
   */
  #columns(read: ColumnParsers, fields: Field[], build?: RowBuilder): void {
    this.#parsers = read.parsers;
    this.#inPlace = read.inPlace;
    this.#binary = read.binary;
    this.#rawParsers = read.rawParsers;
    this.#fields = fields;
    this.#build = this.#arrayRows ? arrayRow : build ?? objectBuilder(fields);
  }

  /**
   * A RowDescription or CommandComplete came: when the current statement
   * completed already, it is the next statement's, and the answer becomes
   * one result per statement (pg's `_checkForMultirow`).
   */
  #nextStatement(): void {
    const done = this.#result;
    if (done?.command == null) return;
    (this.#results ??= []).push(done);
    this.#result = this.#fields = this.#rows = undefined;
    this.#parsers = this.#rawParsers = NO_PARSERS;
    this.#inPlace = this.#binary = undefined;
    this.#build = arrayRow;
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

  /** A statement completed: its result, to be given the tag's figures. */
  #completed(): LeanResult {
    if (
      this.#described === undefined && this.name !== undefined && !this.#rowDescribed &&
      this.#connection !== undefined
    ) {
      // Described, and no RowDescription came (NoData): a statement without rows.
      let byName = described.get(this.#connection);
      if (byName === undefined) described.set(this.#connection, byName = new Map());
      byName.set(this.name, { fields: [] });
    }
    this.#nextStatement();
    return this.#answer();
  }

  /** The current statement's result, as pg's starts: no command, no counts. */
  #answer(): LeanResult {
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
    const result = this.#answer();
    const results = this.#results;
    if (results === undefined) return this.callback(null, result);
    // One result per statement of the text.
    results.push(result);
    this.callback(null, results);
  }
}
Object.setPrototypeOf(LeanQuery.prototype, Query.prototype);
