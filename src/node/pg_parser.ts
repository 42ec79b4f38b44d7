/**
 * A faster reader of result rows for the connections dbx opens. pg's protocol
 * parser (pg-protocol) decodes every field of a DataRow with its own
 * `Buffer#toString` call; on a 100-row result that is the client's largest
 * cost (about half of its CPU on Bun). Here a row is decoded with one call,
 * and its fields are slices of it when that is what decoding each gives
 * ({@linkcode readDataRow}). Everything pg does with a row (type parsers,
 * `rowMode`, `types`) is unchanged: this is pg-protocol's own `Parser` with a
 * DataRow read differently, and a ReadyForQuery given as one of three
 * constant messages (the reads are cut into messages by `pg_frames.ts`). A
 * query that reads its rows itself (dbx's own queries) is handed the
 * bytes of its DataRows and CommandComplete instead of messages
 * ({@linkcode RowReader}), and its BindComplete, which nothing in pg listens
 * to, is not emitted.
 *
 * Used only when the `pg-protocol` that dbx imports is the one `pg` uses
 * (same module, so `pg.DatabaseError` stays the class of server errors);
 * otherwise pg's parser is left as it is.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

import type { Buffer } from "node:buffer";
import type { EventEmitter } from "node:events";
// @ts-types="@types/pg"
import pg from "pg";
import { Parser } from "pg-protocol/dist/parser.js";
import { DatabaseError } from "pg-protocol/dist/messages.js";
import type { BinaryAt } from "./pg_types.ts";
import { DATA_ROW, MessageReader } from "./pg_frames.ts";

/** The CommandComplete message code ('C'). */
const COMMAND_COMPLETE = 67;
/** The ReadyForQuery message code ('Z'). */
const READY_FOR_QUERY = 90;
/** The BindComplete message code ('2'). */
const BIND_COMPLETE = 50;

/**
 * ReadyForQuery messages by their status byte ('I', 'T', 'E'): pg's client
 * reads only `status`, and pg-protocol decodes that one byte with a
 * `Buffer#toString` call and allocates a message on every statement.
 */
const READY = new Map(
  ["I", "T", "E"].map((status) => [
    status.charCodeAt(0),
    Object.freeze({ name: "readyForQuery", length: 5, status }),
  ]),
);

/** What pg's connection needs of a DataRow message (pg-protocol's own shape). */
class DataRowMessage {
  readonly name = "dataRow";
  readonly fieldCount: number;
  constructor(readonly length: number, readonly fields: (string | null)[]) {
    this.fieldCount = fields.length;
  }
}

/** The parts of pg-protocol's Parser that its types keep private. */
interface RawParser {
  handlePacket(offset: number, code: number, length: number, bytes: Buffer): unknown;
}

/** Buffer's own UTF-8 decoder (Node, Deno and Bun all have it; not in @types/node's Buffer). */
type Utf8 = { utf8Slice(start: number, end: number): string };

/**
 * Reads one DataRow: the row's bytes are decoded as UTF-8 with one call, and
 * when the text has as many characters as the row has bytes, every field is
 * a slice of it; otherwise each field is decoded on its own, as pg does.
 *
 * The slices are what decoding each field on its own gives: one character
 * per byte means every byte was decoded alone, as itself (ASCII) or as
 * U+FFFD (a byte no sequence starts or continues there), since a valid
 * sequence of 2–4 bytes gives 1–2 characters and an invalid one of 2–3
 * bytes gives one. Decoded alone, a field's byte could only start a
 * sequence that the row's decoding would have started too (the bytes after
 * it within the field are the same), so the field is decoded byte by byte
 * as well.
 *
 * (The ASCII check this replaces, a regular expression on the row's latin1
 * text, cost as much as decoding the row; a byte loop over the Buffer before
 * that now and then left this function several times slower on Bun for the
 * rest of the process.)
 *
 * @param bytes The buffer holding the message.
 * @param offset Where the row's content starts (after code and length).
 * @param length The message length (it counts its own 4 bytes).
 * @returns The message pg's connection expects.
 */
export function readDataRow(bytes: Buffer, offset: number, length: number): DataRowMessage {
  const fields = readFields(bytes, offset, length, undefined, undefined);
  return new DataRowMessage(length, fields as (string | null)[]);
}

/** Parses a field where it lies in a row's text, from `at` to `end` (`pg_types.ts`). */
export type InPlace = (text: string, at: number, end: number) => unknown;

/**
 * A DataRow's fields ({@linkcode readDataRow}), into `into` when it has as
 * many places as the row has fields, else into a new array. A column with an
 * in-place parser gets its value instead of its text, one with a binary
 * reader the value it reads (null stays null).
 *
 * The text is decoded with one call: the whole row, or, when some columns
 * are binary, the span from the first text column to the last (a first pass
 * finds it).
 *
 * Positions are kept from the row's start, as small integers: pg-protocol
 * hands a message's offset in a buffer of up to megabytes, as a number the
 * engine may hold as a double, and Bun's JIT left `substring` calls with such
 * positions for its slow path on every row of the process thereafter.
 *
 * @param bytes The buffer holding the message.
 * @param offset Where the row's content starts.
 * @param length The message length.
 * @param into An array to reuse, if any.
 * @param inPlace In-place parsers by column, if any.
 * @param binary Binary readers by column, if any column came in binary.
 * @returns The fields.
 */
export function readFields(
  bytes: Buffer,
  offset: number,
  length: number,
  into: unknown[] | undefined,
  inPlace: readonly (InPlace | undefined)[] | undefined,
  binary?: readonly (BinaryAt | undefined)[],
): unknown[] {
  const base = offset | 0;
  const count = (bytes[base]! << 8) | bytes[base + 1]!;
  const fields = into !== undefined && into.length === count ? into : new Array<unknown>(count);
  // The bytes decoded as text, from the row's start.
  let first = 0;
  let last = length - 4;
  let p = 2;
  if (binary !== undefined) {
    first = -1;
    for (let i = 0; i < count; i++) {
      const n = int32At(bytes, base + p);
      p += 4;
      if (n === -1) continue;
      if (binary[i] === undefined) {
        if (first < 0) first = p;
        last = p + n;
      }
      p += n;
    }
    if (first < 0) first = last = 0;
    p = 2;
  }
  const text = (bytes as unknown as Utf8).utf8Slice(base + first, base + last);
  const sliced = text.length === last - first;
  for (let i = 0; i < count; i++) {
    const n = int32At(bytes, base + p);
    p += 4;
    if (n === -1) {
      fields[i] = null;
      continue;
    }
    const read = binary?.[i];
    fields[i] = read !== undefined
      ? read(bytes, base + p, n)
      : textField(bytes, base + p, n, text, p - first, sliced, inPlace?.[i]);
    p += n;
  }
  return fields;
}

/** The big-endian int32 at `at` (a field's length; -1: NULL). */
function int32At(bytes: Buffer, at: number): number {
  return (bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!;
}

/**
 * One text field of a row: a slice of the row's decoded text when `sliced`
 * (from `from` there), else decoded alone, as pg does; parsed in place when
 * it has an in-place parser.
 */
function textField(
  bytes: Buffer,
  start: number,
  n: number,
  text: string,
  from: number,
  sliced: boolean,
  parse: InPlace | undefined,
): unknown {
  if (sliced) {
    return parse === undefined ? text.substring(from, from + n) : parse(text, from, from + n);
  }
  const field = (bytes as unknown as Utf8).utf8Slice(start, start + n);
  return parse === undefined ? field : parse(field, 0, field.length);
}

/**
 * A query that reads its rows straight from the protocol buffer (dbx's own
 * queries, `lean_query.ts`): no message object, event or fields array per row.
 */
export interface RowReader {
  /** One DataRow of its result ({@linkcode readFields} gives its fields). */
  readRow(bytes: Buffer, offset: number, length: number): void;
  /** Its CommandComplete (`command_tag.ts` reads the tag). */
  readCommandComplete(bytes: Buffer, offset: number, length: number): void;
  /**
   * It asked for binary columns: its rows come to {@linkcode readRow} even
   * if something started to listen to every message since it was sent
   * (which then misses them).
   */
  readonly binaryRows?: boolean;
}

/** Returned for a DataRow its query read itself: nothing to emit. */
const READ = { name: "" };

/** pg-protocol's Parser, reading DataRows with {@linkcode readDataRow} or the query's own reader. */
const RowParser = (() => {
  const Base = Parser as unknown as new () => RawParser;
  return class RowParser extends Base {
    /**
     * The query now answered, when it reads its messages itself and nothing
     * else listens to them (`row`: for a DataRow, which a query asking for
     * binary columns reads in any case).
     */
    readonly #reader: (row: boolean) => RowReader | undefined;

    constructor(reader: (row: boolean) => RowReader | undefined) {
      super();
      this.#reader = reader;
    }

    override handlePacket(offset: number, code: number, length: number, bytes: Buffer): unknown {
      if (code === DATA_ROW) {
        const reader = this.#reader(true);
        if (reader === undefined) return readDataRow(bytes, offset, length);
        reader.readRow(bytes, offset, length);
        return READ;
      }
      if (code === COMMAND_COMPLETE) {
        // pg's client only hands it to the query it is answering.
        const reader = this.#reader(false);
        if (reader === undefined) return super.handlePacket(offset, code, length, bytes);
        reader.readCommandComplete(bytes, offset, length);
        return READ;
      }
      // Nothing in pg listens to a BindComplete: not even an event for it, for dbx's queries.
      if (code === BIND_COMPLETE && this.#reader(false) !== undefined) return READ;
      if (code === READY_FOR_QUERY && length === 5) {
        const ready = READY.get(bytes[offset]!);
        if (ready !== undefined) return ready;
      }
      return super.handlePacket(offset, code, length, bytes);
    }
  };
})();

/** The parts of pg's Connection that its types leave out. */
interface RawConnection {
  _emitMessage: boolean;
  attachListeners(stream: EventEmitter): void;
  emit(event: string, message: unknown): boolean;
}

/** Whether dbx's pg-protocol is pg's (it is when the package manager deduplicated them). */
const samePgProtocol =
  (pg as unknown as { DatabaseError: unknown }).DatabaseError === DatabaseError;

/** pg Connections whose rows {@linkcode RowParser} reads. */
const reading = new WeakSet<object>();

/**
 * Whether a query on this connection that reads its rows itself is handed
 * every one of them ({@linkcode RowReader.binaryRows}): only then may it ask
 * for binary columns, which pg's own row handling would read as text. Not
 * while something listens to every message: it would miss those rows.
 *
 * @param connection pg's Connection of a client.
 * @returns True when {@linkcode useRowParser} took the client and nothing listens to every message.
 */
export function readsRows(connection: object): boolean {
  return reading.has(connection) && !(connection as RawConnection)._emitMessage;
}

/**
 * Makes a client read result rows with {@linkcode RowParser}. Call before
 * `connect()`. Does nothing when dbx's pg-protocol is not pg's.
 *
 * @param client A client not connected yet.
 */
export function useRowParser(client: pg.ClientBase): void {
  if (!samePgProtocol) return;
  const raw = client as unknown as {
    connection: RawConnection;
    _getActiveQuery(): Partial<RowReader> | null | undefined;
  };
  const connection = raw.connection;
  reading.add(connection);
  // pg's own attachListeners, with the reads cut into messages by `MessageReader`
  // instead of pg-protocol's `parse`, and read by `RowParser`.
  connection.attachListeners = function (this: RawConnection, stream: EventEmitter): void {
    // pg hands a DataRow or CommandComplete to the query it is answering
    // (`_handleDataRow`, `_handleCommandComplete`); one that reads them itself is
    // handed the bytes instead, unless something listens to every message.
    const parser = new RowParser((row) => {
      const query = raw._getActiveQuery();
      if (typeof query?.readRow !== "function") return undefined;
      return this._emitMessage && !(row && query.binaryRows) ? undefined : query as RowReader;
    });
    new MessageReader(stream, (code, offset, length, bytes) => {
      const message = parser.handlePacket(offset, code, length, bytes) as { name: string };
      if (message === READ) return;
      if (this._emitMessage) this.emit("message", message);
      this.emit(message.name === "error" ? "errorMessage" : message.name, message);
    });
  };
}
