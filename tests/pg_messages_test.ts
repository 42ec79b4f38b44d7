/**
 * The messages of a named statement's run (`src/node/pg_messages.ts`):
 * every value is bound as pg's own `prepareValue` gives it, every length
 * field counts what follows it, and the messages are in the protocol's order.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { Buffer } from "node:buffer";
import { namedRunMessages } from "../src/node/pg_messages.ts";

const prepareValue = (pg as unknown as { utils: { prepareValue(value: unknown): unknown } })
  .utils.prepareValue;

/** Reads the messages back: their codes, and the Bind's values and format codes. */
function readBack(buf: Buffer) {
  const codes: string[] = [];
  let bind:
    | { name: string; formats: number[]; values: (Buffer | null)[]; results: number[] }
    | undefined;
  let parse: { name: string; text: string } | undefined;
  let at = 0;
  const cstring = (from: number): [string, number] => {
    const end = buf.indexOf(0, from);
    return [buf.toString("utf8", from, end), end + 1];
  };
  while (at < buf.length) {
    const code = String.fromCharCode(buf[at]!);
    const length = buf.readInt32BE(at + 1);
    const end = at + 1 + length;
    assert.ok(end <= buf.length, `${code}: length ${length} runs past the buffer`);
    codes.push(code);
    let p = at + 5;
    if (code === "P") {
      const [name, afterName] = cstring(p);
      const [text, afterText] = cstring(afterName);
      assert.equal(buf.readInt16BE(afterText), 0);
      p = afterText + 2;
      parse = { name, text };
    } else if (code === "B") {
      const [portal, afterPortal] = cstring(p);
      assert.equal(portal, "");
      const [name, afterName] = cstring(afterPortal);
      p = afterName;
      const formats = Array.from(
        { length: buf.readInt16BE(p) },
        (_, i) => buf.readInt16BE(p + 2 + 2 * i),
      );
      p += 2 + 2 * formats.length;
      const values: (Buffer | null)[] = [];
      const count = buf.readInt16BE(p);
      p += 2;
      for (let i = 0; i < count; i++) {
        const n = buf.readInt32BE(p);
        p += 4;
        values.push(n === -1 ? null : Buffer.from(buf.subarray(p, p + n)));
        if (n > 0) p += n;
      }
      const results = Array.from(
        { length: buf.readInt16BE(p) },
        (_, i) => buf.readInt16BE(p + 2 + 2 * i),
      );
      p += 2 + 2 * results.length;
      bind = { name, formats, values, results };
    } else if (code === "D") p += 2;
    else if (code === "E") p += 5;
    assert.equal(p, end, `${code}: its length counts what it holds`);
    at = end;
  }
  return { codes, parse, bind: bind! };
}

/** A value with its own serialiser, as pg lets an app give one. */
const point = { toPostgres: () => "(1,2)" };

const VALUES: unknown[] = [
  0,
  1,
  -1,
  2147483647,
  -0,
  0.1 + 0.2,
  1e21,
  5e-324,
  NaN,
  Infinity,
  -Infinity,
  "",
  "a",
  "name 12",
  "x".repeat(64),
  "x".repeat(65),
  "y".repeat(5_000),
  "Grüße",
  "日本語 🎉",
  "é".repeat(40),
  "\u0000nul",
  null,
  undefined,
  true,
  false,
  12345678901234567890n,
  Buffer.from([0, 1, 255]),
  new Uint8Array([7, 8]),
  new Date(Date.UTC(2026, 11, 3, 8, 11, 18, 123)),
  [1, 2, null],
  ["a", "b,c"],
  { a: 1, s: "ü" },
  point,
];

Deno.test("a named run binds every value as pg's prepareValue gives it", () => {
  for (const parse of [false, true]) {
    for (const describe of [false, true]) {
      for (const binary of [undefined, [undefined, 1, undefined, 1]]) {
        // Each value alone, and all of them together.
        for (const values of [...VALUES.map((v) => [v]), VALUES, []]) {
          const name = parse ? "dbx_s_é12" : "dbx_s12";
          const text = "select $1 -- ü";
          const got = readBack(namedRunMessages(name, text, values, parse, describe, binary));
          const codes = [...(parse ? ["P"] : []), "B", ...(describe ? ["D"] : []), "E", "S"];
          assert.deepEqual(got.codes, codes);
          if (parse) assert.deepEqual(got.parse, { name, text });
          assert.equal(got.bind.name, name);
          const want = values.map((v) => {
            const p = prepareValue(v) as Buffer | string | null;
            return p === null ? null : typeof p === "string" ? Buffer.from(p, "utf8") : p;
          });
          assert.deepEqual(got.bind.values, want, JSON.stringify(values.map(String)));
          assert.deepEqual(
            got.bind.formats,
            want.map((v, i) => values[i] instanceof Uint8Array && v !== null ? 1 : 0),
          );
          assert.deepEqual(got.bind.results, binary === undefined ? [0] : [0, 1, 0, 1]);
        }
      }
    }
  }
});

Deno.test("a value that writes another run while its own is written leaves both intact", () => {
  // pg submits a statement at once when pipelining: one sent from a value's toPostgres
  // is written in the middle of the run that prepares the value.
  let inner: Buffer | undefined;
  const value = {
    toPostgres: () => {
      inner = namedRunMessages("in", "select $1, $2", ["inner", 2], false, false, undefined);
      return "outer";
    },
  };
  const outer = namedRunMessages(
    "out",
    "select $1, $2, $3",
    ["a", value, 3],
    false,
    false,
    undefined,
  );
  const bytes = (xs: string[]) => xs.map((x) => Buffer.from(x, "utf8"));
  assert.deepEqual(readBack(outer).bind.values, bytes(["a", "outer", "3"]));
  assert.deepEqual(readBack(inner!).bind.values, bytes(["inner", "2"]));
  // And the next run starts from clean arrays.
  const next = namedRunMessages("next", "select $1", ["x"], false, false, undefined);
  assert.deepEqual(readBack(next).bind.values, bytes(["x"]));
});

Deno.test("a value pg cannot serialise throws its error, as pg's Query would", () => {
  const loop: Record<string, unknown> = {};
  loop.self = loop;
  assert.throws(
    () => namedRunMessages("s", "select $1", [loop], false, false, undefined),
    TypeError,
  );
});
