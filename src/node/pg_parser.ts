/**
 * A faster reader of result rows for the connections dbx opens. pg's protocol
 * parser (pg-protocol) decodes every field of a DataRow with its own
 * `Buffer#toString` call; on a 100-row result that is the client's largest
 * cost (about half of its CPU on Bun). Here a row is decoded with one call,
 * and each ASCII field is a slice of it; a field with other bytes is decoded
 * as UTF-8 on its own, as pg does. Every other message, and everything pg does
 * with a row (type parsers, `rowMode`, `types`), is unchanged: this is
 * pg-protocol's own `Parser` with one message type read differently.
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

/** The DataRow message code ('D'). */
const DATA_ROW = 68;

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
  parse(buffer: Buffer, callback: (message: { name: string }) => void): void;
  handlePacket(offset: number, code: number, length: number, bytes: Buffer): unknown;
}

/** Buffer's own latin1 decoder (Node, Deno and Bun all have it; not in @types/node's Buffer). */
type Latin1 = { latin1Slice(start: number, end: number): string };

/**
 * Reads one DataRow: the row's bytes become one latin1 string, and a field
 * whose bytes are all ASCII (the same characters in latin1 and UTF-8) is a
 * slice of it.
 */
function readDataRow(bytes: Buffer, offset: number, length: number): DataRowMessage {
  const count = (bytes[offset]! << 8) | bytes[offset + 1]!;
  const fields = new Array<string | null>(count);
  // `length` counts its own 4 bytes.
  const text = (bytes as unknown as Latin1).latin1Slice(offset, offset + length - 4);
  let p = offset + 2;
  for (let i = 0; i < count; i++) {
    const n = (bytes[p]! << 24) | (bytes[p + 1]! << 16) | (bytes[p + 2]! << 8) | bytes[p + 3]!;
    p += 4;
    if (n === -1) {
      fields[i] = null;
      continue;
    }
    const end = p + n;
    let ascii = true;
    for (let k = p; k < end; k++) {
      if (bytes[k]! > 127) {
        ascii = false;
        break;
      }
    }
    fields[i] = ascii ? text.substring(p - offset, end - offset) : bytes.toString("utf8", p, end);
    p = end;
  }
  return new DataRowMessage(length, fields);
}

/** pg-protocol's Parser, reading DataRows with {@linkcode readDataRow}. */
const RowParser = (() => {
  const Base = Parser as unknown as new () => RawParser;
  return class RowParser extends Base {
    override handlePacket(offset: number, code: number, length: number, bytes: Buffer): unknown {
      if (code === DATA_ROW) return readDataRow(bytes, offset, length);
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

/** When a connection dbx opened last had data to read (performance.now()); 0: not yet. */
let readAt = 0;

/**
 * When this process last read from a connection dbx opened: a pipe whose
 * answer is late although other connections were read since is stalled on
 * the server; one whose answer waits unread behind busy JavaScript is not.
 *
 * @param now The time now, returned when reads are not tracked (pg's own parser).
 * @returns A `performance.now()` time.
 */
export function lastRead(now: number): number {
  return samePgProtocol ? readAt : now;
}

/**
 * Makes a client read result rows with {@linkcode RowParser}. Call before
 * `connect()`. Does nothing when dbx's pg-protocol is not pg's.
 *
 * @param client A client not connected yet.
 */
export function useRowParser(client: pg.ClientBase): void {
  if (!samePgProtocol) return;
  const connection = (client as unknown as { connection: RawConnection }).connection;
  // pg's own attachListeners with another parser (pg-protocol's `parse`).
  connection.attachListeners = function (this: RawConnection, stream: EventEmitter): void {
    const parser = new RowParser();
    stream.on("data", (buffer: Buffer) => {
      readAt = performance.now();
      parser.parse(buffer, (message) => {
        if (this._emitMessage) this.emit("message", message);
        this.emit(message.name === "error" ? "errorMessage" : message.name, message);
      });
    });
  };
}
