/**
 * A CommandComplete's tag read where it lies in the protocol buffer (dbx's
 * own queries, `pg_parser.ts` `RowReader`), to what pg's client reads
 * from its decoded text: no string is made for the common commands, and the
 * counts are read digit by digit.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

import type { Buffer } from "node:buffer";

/** The parts of a result a CommandComplete's tag gives (pg's `Result` fields). */
export interface CommandTag {
  command: string | null;
  /** The OID of an INSERT's row (always 0 now). */
  oid: number | null;
  rowCount: number | null;
}

/** Commands whose tag words are matched byte by byte, not decoded. */
const COMMAND_WORDS = ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "COPY"];
const COMMAND_BYTES = COMMAND_WORDS.map((word) => [...word].map((c) => c.charCodeAt(0)));

/** The word of a command tag from `start` to `end` (letters): a known one without decoding. */
function commandWord(bytes: Buffer, start: number, end: number): string {
  const n = end - start;
  words: for (let w = 0; w < COMMAND_BYTES.length; w++) {
    const word = COMMAND_BYTES[w]!;
    if (word.length !== n) continue;
    for (let i = 0; i < n; i++) if (bytes[start + i] !== word[i]) continue words;
    return COMMAND_WORDS[w]!;
  }
  return bytes.toString("latin1", start, end);
}

/** Whether `b` is an ASCII letter. */
const isLetter = (b: number): boolean => (b >= 65 && b <= 90) || (b >= 97 && b <= 122);
/** Whether `b` is an ASCII digit. */
const isDigit = (b: number): boolean => b >= 48 && b <= 57;

/**
 * Reads a CommandComplete's tag where it lies, as pg's client reads its
 * text (`/^([A-Za-z]+)(?: (\d+))?(?: (\d+))?/`): the leading letters are
 * the command; one number after them is the row count, two are an OID and
 * the row count. A tag that does not start with a letter sets nothing.
 *
 * @param bytes The buffer holding the message.
 * @param offset Where the tag starts.
 * @param length The message length (it counts its own 4 bytes).
 * @param into Gets the command, and the numbers the tag has.
 */
export function readCommandTag(
  bytes: Buffer,
  offset: number,
  length: number,
  into: CommandTag,
): void {
  const start = offset | 0;
  // The tag ends at its NUL, or at the message's end.
  const end = start + length - 4;
  let at = start;
  while (at < end && isLetter(bytes[at]!)) at++;
  if (at === start) return;
  into.command = commandWord(bytes, start, at);
  let first = -1;
  for (let k = 0; k < 2 && at + 1 < end && bytes[at] === 32 && isDigit(bytes[at + 1]!); k++) {
    const from = ++at;
    let value = 0;
    while (at < end && isDigit(bytes[at]!)) value = value * 10 + bytes[at++]! - 48;
    // Past 15 digits the sum may round otherwise than parseInt.
    if (at - from > 15) value = parseInt(bytes.toString("latin1", from, at), 10);
    if (k === 0) first = value;
    else {
      into.oid = first;
      into.rowCount = value;
      return;
    }
  }
  if (first >= 0) into.rowCount = first;
}
