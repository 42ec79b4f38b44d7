import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
// @ts-types="@types/pg"
import pg from "pg";
import { type Cluster, DbxError, encodeCopyValue } from "../mod.ts";
import { checkCopyArgs, copyIn } from "../src/tx/copy.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { dbTest } from "../src/testing/mod.ts";

/** Every primary connection is back in the pool, idle, and nothing is running. */
function assertPoolIdle(cluster: Cluster): void {
  const primary = cluster.stats().nodes[0]!;
  assert.equal(primary.idleConns, primary.totalConns);
  assert.equal(primary.inFlight, 0);
}

/** Gives timers and sockets a turn, so long checks do not starve the health checker. */
const nextTurn = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 0));

async function count(cluster: Cluster, table: string): Promise<number> {
  const { n } = await cluster.queryRow<{ n: number }>(`select count(*)::int as n from ${table}`);
  return n;
}

/** A plain client on the primary, for checks on the very connection COPY used. */
async function rawClient(): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: testDatabaseUrls()!.master });
  await client.connect();
  return client;
}

Deno.test("encodeCopyValue() escapes COPY text format", () => {
  assert.equal(encodeCopyValue(null), "\\N");
  assert.equal(encodeCopyValue(undefined), "\\N");
  assert.equal(encodeCopyValue("\\N"), "\\\\N", "the literal string \\N stays a string");
  assert.equal(encodeCopyValue("a\tb\nc\rd\\e"), "a\\tb\\nc\\rd\\\\e");
  assert.equal(encodeCopyValue(""), "");
  assert.equal(encodeCopyValue("ünï ✓ 🐘"), "ünï ✓ 🐘");
  assert.equal(encodeCopyValue(12.5), "12.5");
  assert.equal(encodeCopyValue(2n ** 70n), "1180591620717411303424");
  assert.equal(encodeCopyValue(true), "true", "as pg sends a boolean argument");
  assert.equal(encodeCopyValue(false), "false");
  assert.equal(encodeCopyValue(new Uint8Array([0, 15, 255])), "\\\\x000fff");
  assert.equal(encodeCopyValue(new Uint8Array([9, 8, 7]).subarray(1)), "\\\\x0807");
  assert.equal(encodeCopyValue(new Uint8Array([1, 2]).buffer), "\\\\x0102");
  assert.equal(encodeCopyValue({ a: "x\ty" }), '{"a":"x\\\\ty"}');
  assert.equal(encodeCopyValue([1, "two", null]), '{"1","two",NULL}', "arrays are PG arrays");
  assert.throws(() => encodeCopyValue(new Date("nope")), RangeError);
  assert.throws(() => encodeCopyValue(Symbol("s")), TypeError);
  assert.throws(() => encodeCopyValue(() => 1), TypeError);
  assert.throws(() => encodeCopyValue({ big: 1n }), TypeError);
});

Deno.test("encodeCopyValue() writes Dates as ISO 8601 with their UTC offset", () => {
  const at = new Date("2026-01-02T03:04:05.678Z");
  const text = encodeCopyValue(at);
  assert.match(text, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$/);
  assert.equal(new Date(text).getTime(), at.getTime());
  assert.match(encodeCopyValue(new Date(Date.UTC(-43, 2, 15))), / BC$/);
});

/** pg's own encoding of a query argument, then COPY's text-format escaping: the oracle. */
function asQueryArgument(value: unknown): string {
  const { prepareValue } = (pg as unknown as {
    utils: { prepareValue(v: unknown): string | Uint8Array | null };
  }).utils;
  const prepared = prepareValue(value);
  if (prepared === null) return "\\N";
  if (prepared instanceof Uint8Array) return "\\\\x" + Buffer.from(prepared).toString("hex");
  return prepared.replace(
    /[\\\t\n\r]/g,
    (c) => ({ "\t": "\\t", "\n": "\\n", "\r": "\\r" })[c] ?? "\\\\",
  );
}

Deno.test("encodeCopyValue() writes arrays as PostgreSQL array literals, as query arguments", () => {
  assert.equal(encodeCopyValue(["x"]), '{"x"}');
  assert.equal(encodeCopyValue([]), "{}");
  assert.equal(encodeCopyValue([1, null, undefined, 3]), '{"1",NULL,NULL,"3"}');
  assert.equal(encodeCopyValue([[1, 2], [null, 4]]), '{{"1","2"},{NULL,"4"}}');
  // A backslash in an element is doubled by the array literal, then again by COPY.
  assert.equal(encodeCopyValue(['a"b', "c\\d"]), '{"a\\\\"b","c\\\\\\\\d"}');
  assert.equal(encodeCopyValue(["t\tn\nr\r"]), '{"t\\tn\\nr\\r"}');
  assert.equal(encodeCopyValue(["NULL", "", "{a,b}"]), '{"NULL","","{a,b}"}');
  const odd = {
    toPostgres: () => "(1,2)",
  };
  const values: unknown[] = [
    ["plain", "with space", "com,ma", "{brace}", 'quo"te', "back\\slash", "tab\there"],
    ["new\nline", "cr\rlf\n", "\\N", "NULL", "", "ünï ✓ 🐘", "trailing\\"],
    [[1, 2, 3], [4, null, 6]],
    [[["deep"]], [[null]]],
    [true, false, 1.5, 2n ** 70n],
    [new Uint8Array([0, 92, 255]), null],
    [new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 678))],
    [{ a: "x\ty", b: [1, "two"] }, { 'k"ey': "v\\" }],
    [odd, [odd]],
    { a: [1, "two", null], t: "x\ty" },
    odd,
    "just text\t",
    42,
    true,
    new Date(Date.UTC(-43, 2, 15)),
  ];
  for (const value of values) {
    assert.equal(encodeCopyValue(value), asQueryArgument(value), JSON.stringify(String(value)));
  }
  const loop: { toPostgres(): unknown } = { toPostgres: () => loop };
  assert.throws(() => encodeCopyValue(loop), TypeError);
  assert.throws(() => encodeCopyValue([new Date("nope")]), RangeError);
  assert.throws(() => encodeCopyValue([Symbol("s")]), TypeError);
});

Deno.test("checkCopyArgs() names the bad argument with TypeError or RangeError", () => {
  const rows = [[1]];
  checkCopyArgs("copyFrom", "t", ["a"], rows);
  checkCopyArgs("copyFrom", "s.t", ["a", "b"], (async function* () {})());
  const cases: [unknown, unknown, unknown, ErrorConstructor, RegExp][] = [
    [7, ["a"], rows, TypeError, /'table' must be a string .*current value is 7$/],
    ["", ["a"], rows, RangeError, /'table' must be a table name .*current value is ""/],
    [" ", ["a"], rows, RangeError, /'table'/],
    [".t", ["a"], rows, RangeError, /'table'/],
    ["s.", ["a"], rows, RangeError, /'table'/],
    ["t", "a", rows, TypeError, /'columns' must be a non-empty array .*current value is "a"/],
    ["t", [], rows, RangeError, /'columns' must be a non-empty array .*current value is \[\]/],
    ["t", ["a", 3], rows, TypeError, /'columns\[1\]' must be a column name/],
    ["t", ["a", ""], rows, RangeError, /'columns\[1\]' must not be empty/],
    ["t", ["a", "b", "a"], rows, RangeError, /'columns' names "a" twice/],
    ["t", ["a"], undefined, TypeError, /'rows' must be an iterable .*current value is undefined/],
    ["t", ["a"], 5, TypeError, /'rows' must be an iterable/],
    ["t", ["a"], "abc", TypeError, /'rows' must be an iterable .*current value is "abc"/],
    ["t", ["a"], { length: 1 }, TypeError, /'rows' must be an iterable/],
  ];
  for (const [table, columns, source, type, message] of cases) {
    assert.throws(
      () => checkCopyArgs("copyFrom", table, columns, source),
      (err: unknown) =>
        err instanceof type && err.constructor === type && message.test(err.message) &&
        err.message.startsWith("Cannot run copyFrom() as "),
      `${JSON.stringify([table, columns])}`,
    );
  }
});

const AWKWARD = [
  "",
  "plain",
  "tab\there",
  "new\nline",
  "carriage\rreturn",
  "crlf\r\n",
  "back\\slash",
  "\\N",
  "\\",
  "\\.",
  "ünïcødé ✓ 🐘",
  "trailing\\",
  "\t\n\r\\",
  "quote \" and ' quote",
];

const COLUMNS = ["id", "s", "j", "at", "b", "big", "flag"];

function awkwardRow(i: number): unknown[] {
  const s = AWKWARD[i % AWKWARD.length]!;
  return [
    i,
    i % 13 === 0 ? null : s + (i % 7 === 0 ? "" : String(i)),
    // A JSON array for a jsonb column is JSON text, as for a query argument.
    i % 5 === 0
      ? null
      : i % 3 === 0
      ? JSON.stringify([s, i, null])
      : { i, s, nested: [1, "two", null] },
    new Date(Date.UTC(2020, 0, 1) + i * 1001),
    i % 11 === 0 ? null : new Uint8Array([i & 0xff, (i >> 8) & 0xff, 0, 92, 9, 10, 13]),
    i % 17 === 0 ? null : BigInt(i) * 1_000_000_007n - 5n,
    i % 19 === 0 ? null : i % 2 === 0,
  ];
}

async function createAwkward(cluster: Cluster, table: string): Promise<void> {
  await cluster.exec(`drop table if exists ${table}`);
  await cluster.exec(
    `create table ${table}(id int primary key, s text, j jsonb, at timestamptz,
      b bytea, big numeric, flag boolean)`,
  );
}

interface AwkwardRow {
  id: number;
  s: string | null;
  j: unknown;
  at: Date;
  b: Uint8Array | null;
  big: string | null;
  flag: boolean | null;
}

/** Compares the table with awkwardRow(0..n-1) page by page, giving the event loop turns. */
async function assertAwkward(cluster: Cluster, table: string, n: number): Promise<void> {
  const page = 10_000;
  for (let from = 0; from < n; from += page) {
    const back = await cluster.query<AwkwardRow>(
      `select * from ${table} where id >= $1 and id < $2 order by id`,
      [from, from + page],
    );
    assert.equal(back.length, Math.min(page, n - from));
    for (let k = 0; k < back.length; k++) {
      const i = from + k;
      const [id, s, j, at, b, big, flag] = awkwardRow(i);
      const row = back[k]!;
      assert.equal(row.id, id);
      assert.equal(row.s, s, `row ${i}: s`);
      assert.deepEqual(row.j, typeof j === "string" ? JSON.parse(j) : j, `row ${i}: j`);
      assert.equal(row.at.getTime(), (at as Date).getTime(), `row ${i}: at`);
      assert.deepEqual(row.b === null ? null : new Uint8Array(row.b), b, `row ${i}: b`);
      assert.equal(row.big, big === null ? null : String(big), `row ${i}: big`);
      assert.equal(row.flag, flag, `row ${i}: flag`);
      if (k % 1000 === 999) await nextTurn();
    }
  }
}

dbTest("copyFrom() round-trips 100k rows of awkward values exactly", async (cluster) => {
  await createAwkward(cluster, "copy_awkward");
  const n = 100_000;
  const rows = (function* () {
    for (let i = 0; i < n; i++) yield awkwardRow(i);
  })();
  const copyStart = performance.now();
  const copied = await cluster.copyFrom("copy_awkward", COLUMNS, rows);
  const copyMs = performance.now() - copyStart;
  assert.equal(copied, n);
  assertPoolIdle(cluster);
  await assertAwkward(cluster, "copy_awkward", n);

  // The same rows as multi-row INSERTs of 1000 rows each, for comparison.
  await createAwkward(cluster, "copy_awkward_insert");
  const insertStart = performance.now();
  for (let base = 0; base < n; base += 1000) {
    const values: unknown[] = [];
    const tuples: string[] = [];
    for (let i = base; i < base + 1000; i++) {
      const r = awkwardRow(i);
      tuples.push(`(${r.map((_, k) => `$${values.length + k + 1}`).join(", ")})`);
      values.push(...r);
    }
    await cluster.exec(
      `insert into copy_awkward_insert(${COLUMNS.join(", ")}) values ${tuples.join(", ")}`,
      values,
    );
  }
  const insertMs = performance.now() - insertStart;
  console.log(
    `COPY ${n} rows: ${Math.round(copyMs)} ms, ${Math.round(n / (copyMs / 1000))} rows/s; ` +
      `multi-row INSERT (1000 rows/statement): ${Math.round(insertMs)} ms, ${
        Math.round(n / (insertMs / 1000))
      } rows/s; COPY is ${(insertMs / copyMs).toFixed(1)}x faster`,
  );
  // Both paths stored exactly the same values.
  const differing = await cluster.queryRow<{ n: number }>(
    `select count(*)::int as n from (
       (select * from copy_awkward except all select * from copy_awkward_insert)
       union all
       (select * from copy_awkward_insert except all select * from copy_awkward)) d`,
  );
  assert.equal(differing.n, 0);
  await cluster.exec("drop table copy_awkward");
  await cluster.exec("drop table copy_awkward_insert");
  assertPoolIdle(cluster);
});

dbTest(
  "copyFrom() outpaces multi-row INSERT on narrow rows (throughput report)",
  async (cluster) => {
    const n = 100_000;
    const row = (i: number): unknown[] => [i, `name ${i}`, i * 3, i % 2 === 0];
    const timings: Record<string, number> = {};
    for (const how of ["copy", "insert"] as const) {
      await cluster.exec("drop table if exists copy_narrow");
      await cluster.exec(
        "create table copy_narrow(id int primary key, s text, n bigint, flag boolean)",
      );
      const start = performance.now();
      if (how === "copy") {
        const rows = (function* () {
          for (let i = 0; i < n; i++) yield row(i);
        })();
        assert.equal(await cluster.copyFrom("copy_narrow", ["id", "s", "n", "flag"], rows), n);
      } else {
        for (let base = 0; base < n; base += 1000) {
          const values: unknown[] = [];
          const tuples: string[] = [];
          for (let i = base; i < base + 1000; i++) {
            const k = values.length;
            tuples.push(`($${k + 1}, $${k + 2}, $${k + 3}, $${k + 4})`);
            values.push(...row(i));
          }
          await cluster.exec(`insert into copy_narrow values ${tuples.join(", ")}`, values);
        }
      }
      timings[how] = performance.now() - start;
      assert.equal(await count(cluster, "copy_narrow"), n);
    }
    const rate = (ms: number) => Math.round(n / (ms / 1000));
    console.log(
      `narrow rows (int, text, bigint, boolean): COPY ${rate(timings.copy!)} rows/s, ` +
        `multi-row INSERT (1000 rows/statement) ${rate(timings.insert!)} rows/s; ` +
        `COPY is ${(timings.insert! / timings.copy!).toFixed(1)}x faster`,
    );
    await cluster.exec("drop table copy_narrow");
    assertPoolIdle(cluster);
  },
);

dbTest("copyFrom() stores Dates as exec() does, timestamp columns included", async (cluster) => {
  await cluster.exec("drop table if exists copy_dates");
  await cluster.exec("create table copy_dates(src text, ts timestamp, tz timestamptz, d date)");
  const dates = [
    new Date("2026-03-29T01:30:00.123Z"),
    new Date("1999-12-31T23:59:59.999Z"),
    new Date(Date.UTC(-43, 2, 15, 12)),
  ];
  await cluster.copyFrom(
    "copy_dates",
    ["src", "ts", "tz", "d"],
    dates.map((d) => ["copy", d, d, d]),
  );
  for (const d of dates) {
    await cluster.exec("insert into copy_dates values ('exec', $1, $2, $3)", [d, d, d]);
  }
  const rows = await cluster.query<{ ts: string; tz: string; d: string }>(
    `select ts::text, tz::text, d::text from copy_dates where src = 'copy'
     except all select ts::text, tz::text, d::text from copy_dates where src = 'exec'`,
  );
  assert.deepEqual(rows, []);
  assert.equal(await count(cluster, "copy_dates"), 6);
  await cluster.exec("drop table copy_dates");
});

dbTest(
  "copyFrom() stores arrays, bytea, Dates and JSON as a parameterised INSERT does",
  async (cluster) => {
    await cluster.exec("drop table if exists copy_args");
    await cluster.exec(
      `create table copy_args(src text, tags text[], nums int[], grid int[][], odd text[],
        b bytea, at timestamptz, doc jsonb, list jsonb)`,
    );
    const columns = ["tags", "nums", "grid", "odd", "b", "at", "doc", "list"];
    const row: unknown[] = [
      ["x", "y"],
      [1, 2, 3],
      [[1, null], [null, 4]],
      ["com,ma", "{brace}", 'quo"te', "back\\slash", "tab\there", "new\nline\r", "NULL", "", null],
      new Uint8Array([0, 92, 9, 10, 255]),
      new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 678)),
      { tags: ["a", "b"], n: 1, s: "x\ty\\" },
      // A JSON array for a jsonb column is passed as JSON text, as a query argument is.
      JSON.stringify([1, "two", null]),
    ];
    assert.equal(await cluster.copyFrom("copy_args", ["src", ...columns], [["copy", ...row]]), 1);
    await cluster.exec(
      `insert into copy_args(src, ${columns.join(", ")})
       values ('insert', ${columns.map((_, i) => `$${i + 1}`).join(", ")})`,
      row,
    );
    const back = await cluster.query<Record<string, unknown>>(
      `select ${columns.join(", ")} from copy_args order by src`,
    );
    assert.equal(back.length, 2);
    assert.deepEqual(back[0], back[1], "COPY and INSERT stored the same values");
    assert.deepEqual(back[0]!.tags, ["x", "y"]);
    assert.deepEqual(back[0]!.grid, [[1, null], [null, 4]]);
    assert.deepEqual(back[0]!.odd, row[3]);
    assert.deepEqual(new Uint8Array(back[0]!.b as Uint8Array), row[4]);
    assert.equal((back[0]!.at as Date).getTime(), (row[5] as Date).getTime());
    assert.deepEqual(back[0]!.doc, row[6]);
    assert.deepEqual(back[0]!.list, [1, "two", null]);
    await cluster.exec("drop table copy_args");
    assertPoolIdle(cluster);
  },
);

dbTest("copyFrom() streams from an async generator", async (cluster) => {
  await cluster.exec("drop table if exists copy_async");
  await cluster.exec("create table copy_async(id int, s text)");
  async function* source(): AsyncGenerator<unknown[]> {
    for (let i = 0; i < 20_000; i++) {
      if (i % 1000 === 0) await new Promise((r) => setTimeout(r, 1));
      yield [i, `row\t${i}`];
    }
  }
  assert.equal(await cluster.copyFrom("public.copy_async", ["id", "s"], source()), 20_000);
  assert.equal(await count(cluster, "copy_async"), 20_000);
  const { s } = await cluster.queryRow<{ s: string }>("select s from copy_async where id = 7");
  assert.equal(s, "row\t7");
  await cluster.exec("drop table copy_async");
  assertPoolIdle(cluster);
});

dbTest(
  "copyFrom() quotes identifiers and splits schema.table on the first dot",
  async (cluster) => {
    await cluster.exec('drop schema if exists "copy Schema" cascade');
    await cluster.exec('create schema "copy Schema"');
    await cluster.exec('create table "copy Schema"."odd.Name"("Mixed Case" int, "se;lect" text)');
    const n = await cluster.copyFrom("copy Schema.odd.Name", ["Mixed Case", "se;lect"], [[1, "x"]]);
    assert.equal(n, 1);
    assert.deepEqual(await cluster.query('select * from "copy Schema"."odd.Name"'), [
      { "Mixed Case": 1, "se;lect": "x" },
    ]);
    await cluster.exec('drop schema "copy Schema" cascade');
  },
);

dbTest("copyFrom() of no rows copies nothing and returns 0", async (cluster) => {
  await cluster.exec("drop table if exists copy_none");
  await cluster.exec("create table copy_none(id int)");
  assert.equal(await cluster.copyFrom("copy_none", ["id"], []), 0);
  assert.equal(await count(cluster, "copy_none"), 0);
  await cluster.exec("drop table copy_none");
  assertPoolIdle(cluster);
});

dbTest("copyFrom() gives the event loop turns while it reads a sync source", async (cluster) => {
  await cluster.exec("drop table if exists copy_turns");
  await cluster.exec("create table copy_turns(id int)");
  // Small rows from a slow source: nothing is written before the source
  // ends, so only copyFrom's own pauses can let a timer run in between.
  const n = 2_000;
  let produced = 0;
  let timerFiredAt: number | undefined;
  function* source(): Generator<unknown[]> {
    for (; produced < n; produced++) {
      if (produced === 10) {
        setTimeout(() => {
          timerFiredAt = produced;
        }, 0);
      }
      const until = performance.now() + 0.1;
      while (performance.now() < until) {
        // A source doing CPU work per row.
      }
      yield [produced];
    }
  }
  assert.equal(await cluster.copyFrom("copy_turns", ["id"], source()), n);
  assert.ok(
    timerFiredAt !== undefined && timerFiredAt < n,
    `a timer due at once ran only after the whole source was read (at row ${timerFiredAt})`,
  );
  await cluster.exec("drop table copy_turns");
});

dbTest("a row of the wrong width aborts the COPY: nothing is committed", async (cluster) => {
  await cluster.exec("drop table if exists copy_width");
  await cluster.exec("create table copy_width(id int, s text)");
  const { pid } = await cluster.queryRow<{ pid: number }>("select pg_backend_pid() as pid");
  const rows: unknown[][] = Array.from({ length: 50_000 }, (_, i) => [i, "x"]);
  rows[40_000] = [40_000];
  await assert.rejects(
    cluster.copyFrom("copy_width", ["id", "s"], rows),
    (err) =>
      err instanceof RangeError &&
      /row 40000 into copy_width: it has 1 values, 2 columns expected/.test(err.message),
  );
  assert.equal(await count(cluster, "copy_width"), 0);
  assertPoolIdle(cluster);
  const after = await cluster.queryRow<{ pid: number }>("select pg_backend_pid() as pid");
  assert.equal(after.pid, pid, "the COPY's connection was kept, idle, and is reused");
  await assert.rejects(
    cluster.copyFrom("copy_width", ["id", "s"], [[1, "a"], "not a row" as unknown as unknown[]]),
    (err) =>
      err instanceof TypeError && /row 1 into copy_width: it must be an array/.test(err.message),
  );
  assert.equal(await count(cluster, "copy_width"), 0);
  await cluster.exec("drop table copy_width");
  assertPoolIdle(cluster);
}, { config: { pool: { max: 1 }, pipeline: false } });

dbTest("a source that throws aborts the COPY with its error", async (cluster) => {
  await cluster.exec("drop table if exists copy_throw");
  await cluster.exec("create table copy_throw(id int)");
  const boom = new Error("source failed");
  let closed = false;
  function* source(): Generator<unknown[]> {
    try {
      for (let i = 0; i < 200_000; i++) {
        if (i === 150_000) throw boom;
        yield [i];
      }
    } finally {
      closed = true;
    }
  }
  await assert.rejects(cluster.copyFrom("copy_throw", ["id"], source()), (err) => err === boom);
  assert.ok(closed);
  assert.equal(await count(cluster, "copy_throw"), 0);
  assertPoolIdle(cluster);

  async function* asyncSource(): AsyncGenerator<unknown[]> {
    for (let i = 0; i < 30_000; i++) {
      if (i % 5000 === 0) await nextTurn();
      yield [i];
    }
    throw boom;
  }
  await assert.rejects(cluster.copyFrom("copy_throw", ["id"], asyncSource()), (e) => e === boom);
  assert.equal(await count(cluster, "copy_throw"), 0);
  // A value that cannot be encoded aborts the COPY the same way.
  await assert.rejects(
    cluster.copyFrom("copy_throw", ["id"], [[1], [Symbol("x")]]),
    /Cannot COPY a value of type symbol/,
  );
  assert.equal(await count(cluster, "copy_throw"), 0);
  await cluster.exec("drop table copy_throw");
  assertPoolIdle(cluster);
});

dbTest("a value the server rejects fails the COPY with the server's error", async (cluster) => {
  await cluster.exec("drop table if exists copy_bad");
  await cluster.exec("create table copy_bad(id int not null)");
  await assert.rejects(
    cluster.copyFrom("copy_bad", ["id"], [[1], [null]]),
    (err) => err instanceof DbxError && err.code === "23502" && err.kind === "not_null_violation",
  );
  // Early in a long stream: the server gives up while rows are still being sent.
  let produced = 0;
  function* rows(): Generator<unknown[]> {
    for (; produced < 2_000_000; produced++) yield [produced === 10 ? "not a number" : produced];
  }
  await assert.rejects(
    cluster.copyFrom("copy_bad", ["id"], rows()),
    (err) => err instanceof DbxError && err.code === "22P02" && typeof err.node === "string",
  );
  assert.ok(produced < 2_000_000, "the source is not drained after the server failed");
  await assert.rejects(
    cluster.copyFrom("copy_no_such_table", ["id"], [[1]]),
    (err) => err instanceof DbxError && err.code === "42P01",
  );
  assert.equal(await count(cluster, "copy_bad"), 0);
  assertPoolIdle(cluster);
  await cluster.exec("drop table copy_bad");
});

dbTest(
  "a COPY the server rejects has PostgreSQL's line and column in its message",
  async (cluster) => {
    await cluster.exec("drop table if exists copy_where");
    await cluster.exec("create table copy_where(id int, tags text[])");
    await assert.rejects(
      cluster.copyFrom("copy_where", ["id", "tags"], [[1, "{a}"], [2, "nope"]]),
      (err) => {
        assert.ok(err instanceof DbxError);
        assert.equal(err.code, "22P02");
        assert.match(err.message, /^malformed array literal: "nope"/);
        assert.match(err.message, /COPY copy_where, line 2, column tags: "nope"/);
        return true;
      },
    );
    // Other statements' messages are left as they were.
    await assert.rejects(
      cluster.exec("insert into copy_where(tags) values ($1)", ["nope"]),
      (err) => err instanceof DbxError && !err.message.includes("column tags"),
    );
    assert.equal(await count(cluster, "copy_where"), 0);
    await cluster.exec("drop table copy_where");
    assertPoolIdle(cluster);
  },
);

dbTest("copyIn() leaves its connection idle after success and after an abort", async () => {
  const client = await rawClient();
  try {
    await client.query("drop table if exists copy_raw");
    await client.query("create table copy_raw(id int not null, s text)");
    const pooled = client as unknown as pg.PoolClient;
    assert.equal(await copyIn(pooled, "copy_raw", ["id", "s"], [[1, "a"], [2, null]]), 2);
    assert.equal(client.getTransactionStatus(), "I");
    await assert.rejects(copyIn(pooled, "copy_raw", ["id", "s"], [[3, "c"], [4]]), RangeError);
    assert.equal(client.getTransactionStatus(), "I");
    await assert.rejects(copyIn(pooled, "copy_raw", ["id", "s"], [[null, "x"]]), /null value/);
    assert.equal(client.getTransactionStatus(), "I");
    const { rows } = await client.query("select id, s from copy_raw order by id");
    assert.deepEqual(rows, [{ id: 1, s: "a" }, { id: 2, s: null }]);
    await client.query("drop table copy_raw");
  } finally {
    await client.end();
  }
});

dbTest("copyFrom() rejects bad arguments before anything is sent", async (cluster) => {
  const before = cluster.stats().nodes[0]!.queries;
  await assert.rejects(cluster.copyFrom("t", [], [[1]]), RangeError);
  await assert.rejects(cluster.copyFrom("t", ["a", "a"], [[1, 1]]), /names "a" twice/);
  await assert.rejects(cluster.copyFrom(7 as unknown as string, ["a"], [[1]]), TypeError);
  await assert.rejects(cluster.copyFrom("t", ["a"], 5 as unknown as unknown[][]), TypeError);
  await assert.rejects(
    cluster.copyFrom("t", ["a"], "abc" as unknown as unknown[][]),
    /'rows' must be an iterable/,
  );
  assert.equal(cluster.stats().nodes[0]!.queries, before);
  assertPoolIdle(cluster);
});
