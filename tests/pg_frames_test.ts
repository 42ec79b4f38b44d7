/**
 * Cutting a connection's reads into protocol messages (`src/node/pg_frames.ts`):
 * wherever the reads end, every message arrives whole and in order, and a
 * message put together from two reads keeps its bytes when more is read.
 * Bytes are fed in as a socket's reads would be: nothing here needs a server.
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import { MessageReader } from "../src/node/pg_frames.ts";

/** A backend message: code, length (counting itself), content. */
function message(code: string, content: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header[0] = code.charCodeAt(0);
  header.writeUInt32BE(content.length + 4, 1);
  return Buffer.concat([header, content]);
}

/** A message's content, short enough to print: its length and digest. */
const digest = (content: Uint8Array) =>
  `${content.length}:${createHash("sha1").update(content).digest("hex")}`;

/** What a reader was handed, each message as its code and content's digest. */
function reader(): { socket: EventEmitter; seen: [string, string][]; views: Buffer[] } {
  const socket = new EventEmitter();
  const seen: [string, string][] = [];
  const views: Buffer[] = [];
  new MessageReader(socket, (code, offset, length, bytes) => {
    const content = bytes.subarray(offset, offset + length - 4);
    seen.push([String.fromCharCode(code), digest(content)]);
    views.push(content);
  });
  return { socket, seen, views };
}

/** Messages of every size that matters: empty, short, a DataRow, one larger than the kept buffer. */
function messages(): Buffer[] {
  const bytes = (n: number, seed: number) =>
    Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));
  return [
    message("1", Buffer.alloc(0)),
    message("2", Buffer.alloc(0)),
    message("D", bytes(37, 1)),
    message("D", bytes(3, 2)),
    message("C", Buffer.from("SELECT 2\0")),
    message("d", bytes(200_000, 3)),
    message("D", bytes(1, 4)),
    message("Z", Buffer.from("I")),
  ];
}

const expected = (list: Buffer[]): [string, string][] =>
  list.map((m) => [String.fromCharCode(m[0]!), digest(m.subarray(5))]);

Deno.test("every message arrives whole and in order, wherever the reads end", () => {
  const list = messages();
  const stream = Buffer.concat(list);
  // Reads ending at every byte of the small messages, then at random places.
  for (let cut = 1; cut < 80; cut++) {
    const { socket, seen } = reader();
    socket.emit("data", stream.subarray(0, cut));
    socket.emit("data", stream.subarray(cut));
    assert.deepEqual(seen, expected(list), `cut at ${cut}`);
  }
  let seed = 7;
  const random = () => (seed = (seed * 1_103_515_245 + 12_345) & 0x7fffffff) / 0x7fffffff;
  for (let run = 0; run < 50; run++) {
    const { socket, seen } = reader();
    let at = 0;
    while (at < stream.length) {
      // Mostly short reads (a byte of a header, a few bytes), now and then a long one.
      const n = random() < 0.2 ? Math.ceil(random() * 70_000) : Math.ceil(random() * 9);
      socket.emit("data", stream.subarray(at, at + n));
      at += n;
    }
    assert.deepEqual(seen, expected(list), `run ${run}`);
  }
  // One byte at a time.
  const { socket, seen } = reader();
  for (let i = 0; i < stream.length; i++) socket.emit("data", stream.subarray(i, i + 1));
  assert.deepEqual(seen, expected(list));
});

Deno.test("a message put together from two reads keeps its bytes when more is read", () => {
  // CopyData's chunk (and an MD5 salt) is a view of the bytes handed over, kept after
  // the message is handled: more reads of cut messages must not write over it.
  const first = message("d", Buffer.from("first copy chunk"));
  const second = message("d", Buffer.from("second chunk, longer than the first"));
  const { socket, seen, views } = reader();
  socket.emit("data", first.subarray(0, 9));
  socket.emit("data", Buffer.concat([first.subarray(9), second.subarray(0, 12)]));
  socket.emit("data", second.subarray(12));
  assert.equal(seen.length, 2);
  assert.equal(views[0]!.toString(), "first copy chunk");
  assert.equal(views[1]!.toString(), "second chunk, longer than the first");
});
