/**
 * dbx's row reader (`src/node/pg_parser.ts`) and date parser
 * (`src/node/pg_types.ts`) give what stock pg gives: the same rows for the
 * same statement, and the same `Date` as postgres-date for every text.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import postgresDate from "postgres-date";
import { dbTest, testDatabase } from "../src/testing/db_test.ts";
import { Buffer } from "node:buffer";
import {
  type BinaryAt,
  parseIntegerAt,
  parsePgDate,
  parsePgDateAt,
  rowTypes,
} from "../src/node/pg_types.ts";
import { readDataRow, readFields } from "../src/node/pg_parser.ts";
import { type CommandTag, readCommandTag } from "../src/node/command_tag.ts";

const stockDate = postgresDate as (text: string) => Date | number | null;

/** The same value as postgres-date's, `Date`s compared by their time (NaN included). */
function assertSameDate(text: string): void {
  const want = stockDate(text);
  // On its own, and in place inside a row's text, with digits and a sign around it.
  for (const got of [parsePgDate(text), parsePgDateAt(`7-${text}12:+0`, 2, 2 + text.length)]) {
    if (want instanceof Date) {
      assert.ok(got instanceof Date, `${text}: ${got} is not a Date`);
      assert.ok(
        Object.is(got.getTime(), want.getTime()),
        `${text}: ${got.getTime()} ≠ ${want.getTime()}`,
      );
    } else {
      assert.deepEqual(got, want, text);
    }
  }
}

/** A small deterministic generator (no Math.random: a failure can be replayed). */
function* numbers(seed: number): Generator<number> {
  let x = seed;
  for (;;) {
    x = (x * 1_103_515_245 + 12_345) % 2_147_483_648;
    yield x;
  }
}

Deno.test("parsePgDate() gives postgres-date's Date for 20 000 generated ISO timestamps", () => {
  const next = numbers(7);
  const int = (n: number) => next.next().value! % n;
  const pad = (n: number, width: number) => String(n).padStart(width, "0");
  const zones = ["+00", "-10", "+05:30", "-03:30", "+13", "+05:45:12", "-00", ""];
  for (let i = 0; i < 20_000; i++) {
    const year = 1000 + int(9000);
    const date = `${pad(year, 4)}-${pad(1 + int(12), 2)}-${pad(1 + int(28), 2)}`;
    const time = `${pad(int(24), 2)}:${pad(int(60), 2)}:${pad(int(60), 2)}`;
    const digits = int(7);
    const fraction = digits === 0 ? "" : "." + pad(int(10 ** digits), digits);
    assertSameDate(`${date} ${time}${fraction}${zones[int(zones.length)]}`);
    assertSameDate(date);
  }
});

Deno.test("dbx's connections parse dates with parsePgDate() unless the config names types", () => {
  for (const oid of [1082, 1114, 1184]) {
    assert.equal(rowTypes(undefined).getTypeParser(oid, "text"), parsePgDate);
  }
  const own = { getTypeParser: () => (text: string) => text };
  assert.equal(rowTypes(own), own);
});

Deno.test("parsePgDate() leaves every other text to postgres-date, with its result", () => {
  for (
    const text of [
      "infinity",
      "-infinity",
      "2026-12-03 08:11:18+00 BC",
      "2026-12-03 08:11:18 BC",
      "2026-12-03 BC",
      "0099-01-01 00:00:00+00",
      "0999-12-31 23:59:59.5+00",
      "12026-12-03 08:11:18+00",
      "2026-12-03T08:11:18Z",
      "2026-12-03 08:11:18.+00",
      "2026-12-03 08:11:18+0",
      "2026-12-03 08:11:18+00:3",
      "2026-12-03 8:11:18+00",
      "2026-1x-03 08:11:18+00",
      "2026-12-03 08:11",
      "not a date",
      "",
    ]
  ) assertSameDate(text);
});

Deno.test("parseIntegerAt() gives pg's parseInt(text, 10) for a field in place", () => {
  const texts = ["0", "-0", "7", "-2147483648", "2147483647", "32767", "-32768", "4294967295"];
  texts.push("", "-", "+5", " 7", "12345678901", "-12345678901", "1e3", "0x10", "12a");
  for (let i = 0; i < 2_000; i++) texts.push(String(Math.trunc((Math.random() - 0.5) * 2 ** 32)));
  for (const text of texts) {
    const got = parseIntegerAt(`9${text}9`, 1, 1 + text.length);
    assert.ok(Object.is(got, parseInt(text, 10)), `${JSON.stringify(text)}: ${got}`);
  }
});

/** A seeded generator of numbers below `n` (mulberry32): a failure can be replayed. */
function seeded(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) % n;
  };
}

// Bytes that make or break sequences: continuation bytes, lead bytes of 2–4,
// bytes never valid, and the encodings of é, € and 🎉.
const PIECES = [
  [0x80],
  [0xbf],
  [0xc3],
  [0xe2, 0x82],
  [0xf0, 0x9f],
  [0xc0],
  [0xff],
  [0xed, 0xa0, 0x80],
  [0xc3, 0xa9],
  [0xe2, 0x82, 0xac],
  [0xf0, 0x9f, 0x8e, 0x89],
];

/**
 * A random DataRow: up to six fields, some NULL, mostly ASCII (some rows none
 * other), lengths past 127 (bytes above 127 in the length words too).
 *
 * @returns The fields, and the message as a buffer holding other bytes before it.
 */
function randomRow(random: (n: number) => number): { fields: (Buffer | null)[]; message: Buffer } {
  const fields: (Buffer | null)[] = [];
  for (let f = 1 + random(6); f > 0; f--) {
    if (random(8) === 0) {
      fields.push(null);
      continue;
    }
    const bytes: number[] = [];
    const other = random(3) === 0 ? 0 : 1 + random(4);
    for (let n = random(4) === 0 ? 120 + random(200) : random(12); n > 0; n--) {
      if (other > 0 && random(10) < other) bytes.push(...PIECES[random(PIECES.length)]!);
      else bytes.push(0x20 + random(95));
    }
    fields.push(Buffer.from(bytes));
  }
  const parts: Buffer[] = [Buffer.from([1, 2, 3, fields.length >> 8, fields.length & 255])];
  for (const field of fields) {
    const size = Buffer.alloc(4);
    size.writeInt32BE(field === null ? -1 : field.length);
    parts.push(size, ...(field === null ? [] : [field]));
  }
  return { fields, message: Buffer.concat(parts) };
}

Deno.test("a DataRow's fields equal each field decoded alone as UTF-8, whatever its bytes", () => {
  const random = seeded(20261203);
  let sliced = 0;
  for (let row = 0; row < 5_000; row++) {
    const { fields, message } = randomRow(random);
    // The row starts after three other bytes, as in a buffer holding several messages.
    const got = readDataRow(message, 3, message.length - 3 + 4);
    const want = fields.map((field) => field === null ? null : field.toString("utf8"));
    assert.deepEqual(got.fields, want, `row ${row}: ${message.toString("hex")}`);
    if (message.subarray(3).toString("utf8").length === message.length - 3) sliced++;
  }
  // Both ways of reading were taken, many times each.
  assert.ok(sliced > 1_000 && sliced < 4_000, `${sliced} rows of 5000 read as slices`);
});

Deno.test("a row with binary columns: those read by their reader, the text ones as decoded alone", () => {
  const random = seeded(20261204);
  const hex: BinaryAt = (bytes, at, n) => `hex ${bytes.subarray(at, at + n).toString("hex")}`;
  let sliced = 0;
  for (let row = 0; row < 5_000; row++) {
    const { fields, message } = randomRow(random);
    // Any columns binary, none or all included: their bytes (any bytes) sit between text ones.
    const binary = fields.map(() => random(3) === 0 ? hex : undefined);
    const got = readFields(message, 3, message.length - 3 + 4, undefined, undefined, binary);
    const want = fields.map((field, i) =>
      field === null
        ? null
        : binary[i] === undefined
        ? field.toString("utf8")
        : hex(field, 0, field.length)
    );
    assert.deepEqual(got, want, `row ${row}: ${message.toString("hex")}`);
    // Whether the span from the first text column to the last was read as slices.
    const texts = fields.flatMap((f, i) => f === null || binary[i] !== undefined ? [] : [i]);
    if (texts.length > 0) {
      let at = 5;
      const starts: number[] = [];
      for (const f of fields) {
        starts.push(at + 4);
        at += 4 + (f?.length ?? 0);
      }
      const from = starts[texts[0]!]!;
      const to = starts[texts.at(-1)!]! + fields[texts.at(-1)!]!.length;
      if (message.subarray(from, to).toString("utf8").length === to - from) sliced++;
    }
  }
  assert.ok(sliced > 1_000 && sliced < 4_000, `${sliced} rows of 5000 read as slices`);
});

/** pg's reading of a CommandComplete's text (pg's `Result#addCommandComplete`). */
function stockTag(text: string): CommandTag {
  const result = new (pg as unknown as {
    Result: new () => CommandTag & { addCommandComplete(msg: { text: string }): void };
  }).Result();
  result.addCommandComplete({ text });
  return { command: result.command, oid: result.oid, rowCount: result.rowCount };
}

Deno.test("readCommandTag() reads a CommandComplete's tag as pg reads its text", () => {
  const tags = [
    "SELECT 1",
    "SELECT 0",
    "INSERT 0 1",
    "INSERT 0 250",
    "UPDATE 12",
    "DELETE 0",
    "MERGE 3",
    "FETCH 2",
    "MOVE 1",
    "COPY 100",
    "CREATE TABLE",
    "ALTER TABLE",
    "BEGIN",
    "SET",
    "SELECT 9007199254740993",
    "INSERT 0 18446744073709551615",
    "SELECT",
  ];
  const random = seeded(20261205);
  const alphabet = ["S", "E", "L", "z", " ", " ", "0", "1", "9", "-", "é", "\t"];
  for (let i = 0; i < 20_000; i++) {
    let tag = "";
    for (let n = random(14); n > 0; n--) tag += alphabet[random(alphabet.length)]!;
    tags.push(tag);
  }
  // Not the empty tag (no server sends one): pg's Result reads an empty text's `command` instead.
  for (const tag of tags.filter((t) => t !== "")) {
    // A CommandComplete after three other bytes: code, length, the tag and its NUL.
    const body = Buffer.from(`${tag}\0`, "utf8");
    const message = Buffer.concat([Buffer.from([1, 2, 3, 0x43, 0, 0, 0, 0]), body]);
    message.writeInt32BE(body.length + 4, 4);
    const got: CommandTag = { command: null, oid: null, rowCount: null };
    readCommandTag(message, 8, body.length + 4, got);
    assert.deepEqual(got, stockTag(tag), JSON.stringify(tag));
  }
});

/**
 * Every type the row reader and the date path touch, with NULLs, non-ASCII and long texts;
 * as many rows as `count` says (a parameter makes it a named statement, read in place).
 */
const mixed = (count: string, ascii = false) => `
  select i,
         -i as neg,
         i::int2 as small,
         i::oid as o,
         case when i % 5 = 0 then null else i end as maybe_int,
         'name ' || i as ascii,${
  ascii ? "" : `
         case when i % 3 = 0 then null else 'Grüße ' || i || ' 日本語 🎉' end as utf8,
         repeat('é', 70 + i) as long_utf8,`
}
         repeat('x', 100 + i) as long,
         i * 1.5::float8 as float,
         (i * 1000000000000)::int8 as big,
         (i / 7.0)::numeric(10, 4) as num,
         timestamptz '2026-12-03 08:11:18.123456+00' + i * interval '37 days 3 hours' as tz,
         timestamp '1999-12-31 23:59:59.999' + i * interval '1 day 1 second' as ts,
         date '2000-02-28' + i as d,
         case when i % 4 = 0 then timestamptz 'infinity' end as inf,
         case when i % 7 = 0 then null else date '2000-02-28' - i * 1000 end as old_date,
         jsonb_build_object('i', i, 's', '${ascii ? "u" : "ü"}') as j,
         array[i, i + 1] as arr,
         '' as empty,
         i % 2 = 0 as flag
    from generate_series(1, ${count}) as i`;

dbTest("rows read by dbx equal stock pg's, on pooled connections and pipes", async (cluster) => {
  const { master } = await testDatabase();
  const client = new pg.Client({ connectionString: master });
  client.on("error", () => {});
  await client.connect();
  try {
    // Unnamed (pg's query object, rows through pg's events) and named (dbx's, read in place).
    // Named with every row ASCII too: its fields are read in place in the row's text.
    const statements = [
      [mixed("300"), []],
      [mixed("$1::int"), [300]],
      [mixed("$1::int", true), [300]],
    ] as const;
    for (const [sql, args] of statements) {
      await client.query("set time zone 'America/New_York'");
      const stock = (await client.query(sql, [...args])).rows;
      const zone = "America/New_York";
      // In a transaction and on a connection of its own: pooled connections.
      const inTx = await cluster.runTx(async (tx) => {
        await tx.exec(`set local time zone '${zone}'`);
        return await tx.query(sql, args);
      });
      const pooled = await cluster.withConnection(async (conn) => {
        await conn.exec(`set time zone '${zone}'`);
        return await conn.query(sql, args);
      });
      assert.equal(stock.length, 300);
      assert.deepEqual(inTx, stock);
      assert.deepEqual(pooled, stock);
      // A shared-path statement (pipelined), in the server's time zone on both sides.
      await client.query("reset time zone");
      assert.deepEqual(await cluster.query(sql, args), (await client.query(sql, [...args])).rows);
    }
  } finally {
    await client.end();
  }
});
