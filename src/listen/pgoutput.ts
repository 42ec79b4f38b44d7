/**
 * The bytes of a logical change stream: the streaming replication protocol's
 * messages inside CopyData (XLogData, primary keepalive, standby status
 * update) and the `pgoutput` plugin's messages (protocol version 1) inside
 * XLogData. Pure functions, no connection: what `change_stream.ts` reads
 * and writes.
 *
 * References: PostgreSQL's "Streaming Replication Protocol" and "Logical
 * Streaming Replication Protocol" / "Message Formats" chapters.
 *
 * @module
 */

import { formatLsn } from "../call/route.ts";

/** Microseconds between the Unix epoch and PostgreSQL's (2000-01-01). */
const PG_EPOCH_US = 946_684_800_000_000n;

/** A column of a relation, as a Relation message describes it. */
export interface RelationColumn {
  /** Column name. */
  readonly name: string;
  /** Type OID, for the value parser. */
  readonly typeOid: number;
  /** Whether the column is part of the replica identity (the key). */
  readonly key: boolean;
}

/** A table, as a Relation message describes it (sent before its first change on a connection). */
export interface Relation {
  /** Relation OID. */
  readonly oid: number;
  /** Schema; pgoutput sends `""` for `pg_catalog`. */
  readonly schema: string;
  /** Table name. */
  readonly table: string;
  /** Its columns, in order. */
  readonly columns: readonly RelationColumn[];
}

/** A column value that did not change and was not sent (a TOASTed value). */
export const UNCHANGED: unique symbol = Symbol("unchanged TOAST value");

/** One column of a tuple: its text, `null`, or {@linkcode UNCHANGED}. */
export type TupleValue = string | null | typeof UNCHANGED;

/** A decoded `pgoutput` message. */
export type PgOutputMessage =
  | {
    readonly tag: "begin";
    readonly finalLsn: bigint;
    readonly commitTime: Date;
    readonly xid: number;
  }
  | {
    readonly tag: "commit";
    readonly commitLsn: bigint;
    readonly endLsn: bigint;
    readonly commitTime: Date;
  }
  | { readonly tag: "relation"; readonly relation: Relation }
  | { readonly tag: "insert"; readonly relation: number; readonly new: TupleValue[] }
  | {
    readonly tag: "update";
    readonly relation: number;
    /** The old key (`K`) or, with `REPLICA IDENTITY FULL`, the whole old row (`O`). */
    readonly old: { readonly full: boolean; readonly values: TupleValue[] } | undefined;
    readonly new: TupleValue[];
  }
  | {
    readonly tag: "delete";
    readonly relation: number;
    readonly old: { readonly full: boolean; readonly values: TupleValue[] };
  }
  | { readonly tag: "truncate"; readonly relations: readonly number[] }
  /** Type, Origin, logical decoding Message and anything newer: nothing to hand over. */
  | { readonly tag: "other"; readonly code: string };

/** A message of the replication protocol, from the server. */
export type ReplicationMessage =
  | {
    readonly tag: "xlog";
    readonly start: bigint;
    readonly walEnd: bigint;
    readonly data: Uint8Array;
  }
  | { readonly tag: "keepalive"; readonly walEnd: bigint; readonly replyRequested: boolean }
  | { readonly tag: "other"; readonly code: string };

const utf8 = new TextDecoder("utf-8", { fatal: false });

/** A cursor over one message's bytes; reading past the end throws a RangeError. */
class Reader {
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  #at = 0;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  byte(): number {
    return this.#view.getUint8(this.#at++);
  }

  int16(): number {
    const value = this.#view.getInt16(this.#at);
    this.#at += 2;
    return value;
  }

  int32(): number {
    const value = this.#view.getInt32(this.#at);
    this.#at += 4;
    return value;
  }

  uint32(): number {
    const value = this.#view.getUint32(this.#at);
    this.#at += 4;
    return value;
  }

  uint64(): bigint {
    const value = this.#view.getBigUint64(this.#at);
    this.#at += 8;
    return value;
  }

  time(): Date {
    const us = this.#view.getBigInt64(this.#at);
    this.#at += 8;
    return new Date(Number((us + PG_EPOCH_US) / 1000n));
  }

  /** A NUL-terminated string. */
  cstring(): string {
    const end = this.#bytes.indexOf(0, this.#at);
    if (end < 0) throw new RangeError("unterminated string in a replication message");
    const text = utf8.decode(this.#bytes.subarray(this.#at, end));
    this.#at = end + 1;
    return text;
  }

  text(length: number): string {
    if (this.#at + length > this.#bytes.length) {
      throw new RangeError("value longer than its replication message");
    }
    const text = utf8.decode(this.#bytes.subarray(this.#at, this.#at + length));
    this.#at += length;
    return text;
  }

  rest(): Uint8Array {
    return this.#bytes.subarray(this.#at);
  }
}

/**
 * Decodes one CopyData payload of a replication connection.
 *
 * @param bytes The payload.
 * @returns XLogData (with the pgoutput bytes), a keepalive, or `other`.
 * @throws {RangeError} When the message is cut short.
 */
export function decodeReplication(bytes: Uint8Array): ReplicationMessage {
  const r = new Reader(bytes);
  const code = String.fromCharCode(r.byte());
  if (code === "w") {
    const start = r.uint64();
    const walEnd = r.uint64();
    r.uint64(); // the server's clock
    return { tag: "xlog", start, walEnd, data: r.rest() };
  }
  if (code === "k") {
    const walEnd = r.uint64();
    r.uint64();
    return { tag: "keepalive", walEnd, replyRequested: r.byte() === 1 };
  }
  return { tag: "other", code };
}

/**
 * The command that starts a logical stream: `pgoutput` protocol version 1 for one
 * publication, from `from` (the server never goes back before the slot's confirmed position).
 *
 * @param slot The slot's name (lower-case letters, digits and `_` only).
 * @param publication The publication's name, any text.
 * @param from Where to start.
 * @returns The `START_REPLICATION` command.
 */
export function startReplication(slot: string, publication: string, from: bigint): string {
  const names = `"${publication.replaceAll('"', '""')}"`;
  return `START_REPLICATION SLOT ${slot} LOGICAL ${formatLsn(from)} ` +
    `(proto_version '1', publication_names '${names.replaceAll("'", "''")}')`;
}

/**
 * Encodes a Standby Status Update: written, flushed and applied up to `lsn`.
 * The flushed position is what the server keeps as the slot's
 * `confirmed_flush_lsn`: decoding resumes with the first transaction whose
 * commit record starts at or after it.
 *
 * @param lsn The position acknowledged as flushed and applied (a transaction's end LSN,
 * never + 1).
 * @param received The position received (written), at least `lsn`: it only tells the
 * server not to ping a client that is busy handling what it has.
 * @param now The client's clock, in ms since the Unix epoch.
 * @returns The CopyData payload.
 */
export function encodeStatusUpdate(
  lsn: bigint,
  received: bigint = lsn,
  now: number = Date.now(),
): Uint8Array {
  const bytes = new Uint8Array(34);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, "r".charCodeAt(0));
  view.setBigUint64(1, received > lsn ? received : lsn);
  view.setBigUint64(9, lsn);
  view.setBigUint64(17, lsn);
  view.setBigInt64(25, BigInt(Math.floor(now)) * 1000n - PG_EPOCH_US);
  view.setUint8(33, 0);
  return bytes;
}

function tuple(r: Reader): TupleValue[] {
  const count = r.int16();
  const values: TupleValue[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const kind = String.fromCharCode(r.byte());
    if (kind === "n") values[i] = null;
    else if (kind === "u") values[i] = UNCHANGED;
    else if (kind === "t") values[i] = r.text(r.int32());
    else throw new RangeError(`unknown tuple column kind '${kind}' (binary was not asked for)`);
  }
  return values;
}

/** The optional old tuple of an Update, or the one of a Delete: `K` (key) or `O` (old row). */
function oldTuple(r: Reader, kind: string): { full: boolean; values: TupleValue[] } {
  if (kind !== "K" && kind !== "O") {
    throw new RangeError(`expected an old tuple ('K' or 'O'), got '${kind}'`);
  }
  return { full: kind === "O", values: tuple(r) };
}

/**
 * Decodes one `pgoutput` message (protocol version 1).
 *
 * @param bytes The XLogData payload.
 * @returns The message; Type, Origin, Message and unknown ones as `other`.
 * @throws {RangeError} When the message is cut short or malformed.
 */
export function decodePgOutput(bytes: Uint8Array): PgOutputMessage {
  const r = new Reader(bytes);
  const code = String.fromCharCode(r.byte());
  switch (code) {
    case "B":
      return { tag: "begin", finalLsn: r.uint64(), commitTime: r.time(), xid: r.uint32() };
    case "C": {
      r.byte(); // flags, unused
      return { tag: "commit", commitLsn: r.uint64(), endLsn: r.uint64(), commitTime: r.time() };
    }
    case "R": {
      const oid = r.uint32();
      const schema = r.cstring();
      const table = r.cstring();
      r.byte(); // replica identity setting
      const count = r.int16();
      const columns: RelationColumn[] = [];
      for (let i = 0; i < count; i++) {
        const flags = r.byte();
        const name = r.cstring();
        const typeOid = r.uint32();
        r.int32(); // type modifier
        columns.push({ name, typeOid, key: (flags & 1) === 1 });
      }
      return { tag: "relation", relation: { oid, schema, table, columns } };
    }
    case "I": {
      const relation = r.uint32();
      const marker = String.fromCharCode(r.byte());
      if (marker !== "N") throw new RangeError(`expected a new tuple ('N'), got '${marker}'`);
      return { tag: "insert", relation, new: tuple(r) };
    }
    case "U": {
      const relation = r.uint32();
      let marker = String.fromCharCode(r.byte());
      let old: { full: boolean; values: TupleValue[] } | undefined;
      if (marker !== "N") {
        old = oldTuple(r, marker);
        marker = String.fromCharCode(r.byte());
      }
      if (marker !== "N") throw new RangeError(`expected a new tuple ('N'), got '${marker}'`);
      return { tag: "update", relation, old, new: tuple(r) };
    }
    case "D": {
      const relation = r.uint32();
      return { tag: "delete", relation, old: oldTuple(r, String.fromCharCode(r.byte())) };
    }
    case "T": {
      const count = r.int32();
      r.byte(); // CASCADE / RESTART IDENTITY bits
      const relations: number[] = [];
      for (let i = 0; i < count; i++) relations.push(r.uint32());
      return { tag: "truncate", relations };
    }
    default:
      return { tag: "other", code };
  }
}
