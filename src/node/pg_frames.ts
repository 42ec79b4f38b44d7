/**
 * The reads of a connection dbx opened, cut into protocol messages: what
 * pg-protocol's `Parser#parse` does, without its cost under load. For a
 * message cut across two reads, pg-protocol copies the rest of the first
 * read and the whole of the next into one buffer, of twice the size when the
 * one it holds is too small: under load (reads of hundreds of KB, most
 * ending inside a message) every few reads allocate and copy a buffer of up
 * to a MB. Here only that message is put together, in a buffer the reader
 * keeps, and every other message is read where it lies.
 *
 * The clock is read once per read ({@linkcode lastRead}, {@linkcode answerTime}).
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import type { EventEmitter } from "node:events";

/** Handles one message: its code, where its content starts in `bytes`, and its length (which counts its own 4 bytes). */
export type OnMessage = (code: number, offset: number, length: number, bytes: Buffer) => void;

/** The DataRow message code ('D'). */
export const DATA_ROW = 68;

/** A message put together from two reads larger than this is not kept for the next one. */
const KEEP_BYTES = 64 * 1024;

/** Code and length: the header of every message. */
const HEADER = 5;

/** When a connection dbx opened last had data to read (performance.now()); 0: not yet. */
let readAt = 0;
/** Whether a read of a connection dbx opened is being handled now (its time is `readAt`). */
let handling = false;
/** Whether reads are cut here (dbx's pg-protocol is pg's: `pg_parser.ts`). */
let tracked = false;

/**
 * When this process last read from a connection dbx opened: a pipe whose
 * answer is late although other connections were read since is stalled on
 * the server; one whose answer waits unread behind busy JavaScript is not.
 *
 * @param now The time now, returned when reads are not tracked (pg's own parser).
 * @returns A `performance.now()` time.
 */
export function lastRead(now: number): number {
  return tracked ? readAt : now;
}

/**
 * The time of an answer handled now: when its read began, while a read is
 * handled (every answer of a read arrived then; the clock is read once per
 * read, not once per answer), else now.
 *
 * @returns A `performance.now()` time.
 */
export function answerTime(): number {
  return handling ? readAt : performance.now();
}

/** The protocol messages of one connection's reads. */
export class MessageReader {
  readonly #onMessage: OnMessage;
  /** A message begun in an earlier read: its first {@linkcode #partLength} bytes. */
  #part: Buffer = Buffer.alloc(0);
  #partLength = 0;

  /**
   * @param stream The connection's socket: its reads are handled here.
   * @param onMessage Handles each message, in order.
   */
  constructor(stream: EventEmitter, onMessage: OnMessage) {
    tracked = true;
    this.#onMessage = onMessage;
    stream.on("data", (chunk: Buffer) => this.#read(chunk));
  }

  /**
   * Handles one read: the message begun in the one before completed, then
   * every whole message in it; the bytes of one cut at its end are kept.
   *
   * @param chunk The bytes read.
   */
  #read(chunk: Buffer): void {
    readAt = performance.now();
    handling = true;
    try {
      let offset = this.#partLength > 0 ? this.#join(chunk) : 0;
      if (offset < 0) return;
      const end = chunk.length;
      while (offset + HEADER <= end) {
        const length = chunk.readUInt32BE(offset + 1);
        const next = offset + 1 + length;
        if (next > end) break;
        this.#onMessage(chunk[offset]!, offset + HEADER, length, chunk);
        offset = next;
      }
      if (offset < end) this.#append(chunk, offset, end, end - offset);
    } finally {
      handling = false;
    }
  }

  /**
   * Completes the message begun in an earlier read with the first bytes of
   * `chunk`, and handles it.
   *
   * @returns Where the rest of `chunk` begins; -1: all of it went to the message.
   */
  #join(chunk: Buffer): number {
    let used = 0;
    if (this.#partLength < HEADER) {
      used = Math.min(HEADER - this.#partLength, chunk.length);
      this.#append(chunk, 0, used, HEADER);
      if (this.#partLength < HEADER) return -1;
    }
    const size = 1 + this.#part.readUInt32BE(1);
    const take = Math.min(size - this.#partLength, chunk.length - used);
    this.#append(chunk, used, used + take, size);
    used += take;
    if (this.#partLength < size) return -1;
    this.#partLength = 0;
    // Read after the append, which may have grown it.
    const part = this.#part;
    const code = part[0]!;
    // A DataRow is read into values at once; any other message may keep a view of
    // its bytes (a CopyData's chunk, an MD5 salt), so it gets bytes of its own.
    const bytes = code === DATA_ROW ? part : Buffer.from(part.subarray(0, size));
    if (part.length > KEEP_BYTES) this.#part = Buffer.alloc(0);
    this.#onMessage(code, HEADER, size - 1, bytes);
    return used;
  }

  /** Appends `chunk[from, to)` to the message begun, with room for `size` bytes in all. */
  #append(chunk: Buffer, from: number, to: number, size: number): void {
    if (this.#part.length < size) {
      const grown = Buffer.allocUnsafe(Math.max(size, 2 * this.#part.length, 256));
      this.#part.copy(grown, 0, 0, this.#partLength);
      this.#part = grown;
    }
    chunk.copy(this.#part, this.#partLength, from, to);
    this.#partLength += to - from;
  }
}
