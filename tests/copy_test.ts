import assert from "node:assert/strict";
import { type Cluster, DbxError, encodeCopyValue } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";

function assertPoolIdle(cluster: Cluster): void {
  const primary = cluster.stats().nodes[0]!;
  assert.equal(primary.idleConns, primary.totalConns);
  assert.equal(primary.inFlight, 0);
}

Deno.test("encodeCopyValue() escapes COPY text format", () => {
  assert.equal(encodeCopyValue(null), "\\N");
  assert.equal(encodeCopyValue(undefined), "\\N");
  assert.equal(encodeCopyValue("\\N"), "\\\\N", "the literal string \\N stays a string");
  assert.equal(encodeCopyValue("a\tb\nc\rd\\e"), "a\\tb\\nc\\rd\\\\e");
  assert.equal(encodeCopyValue(""), "");
  assert.equal(encodeCopyValue(12.5), "12.5");
  assert.equal(encodeCopyValue(2n ** 70n), "1180591620717411303424");
  assert.equal(encodeCopyValue(true), "t");
  assert.equal(encodeCopyValue(false), "f");
  assert.equal(encodeCopyValue(new Date("2026-01-02T03:04:05.678Z")), "2026-01-02T03:04:05.678Z");
  assert.equal(encodeCopyValue(new Uint8Array([0, 15, 255])), "\\\\x000fff");
  assert.equal(encodeCopyValue({ a: "x\ty" }), '{"a":"x\\\\ty"}');
  assert.throws(() => encodeCopyValue(new Date("nope")), RangeError);
  assert.throws(() => encodeCopyValue(Symbol("s")), TypeError);
});

const AWKWARD = [
  "",
  "plain",
  "tab\there",
  "new\nline",
  "carriage\rreturn",
  "back\\slash",
  "\\N",
  "\\",
  "ünïcødé ✓ 🐘",
  "trailing\\",
  "\t\n\r\\",
];

function awkwardRow(i: number): unknown[] {
  return [
    i,
    i % 13 === 0 ? null : AWKWARD[i % AWKWARD.length]! + (i % 7 === 0 ? "" : String(i)),
    i % 5 === 0 ? null : { i, s: AWKWARD[i % AWKWARD.length], nested: [1, "two", null] },
    new Date(Date.UTC(2020, 0, 1) + i * 1000),
    new Uint8Array([i & 0xff, (i >> 8) & 0xff, 0, 92, 9, 10]),
    BigInt(i) * 1_000_000_007n,
    i % 2 === 0,
  ];
}

async function createAwkward(cluster: Cluster): Promise<void> {
  await cluster.exec("drop table if exists copy_awkward");
  await cluster.exec(
    `create table copy_awkward(id int primary key, s text, j jsonb, at timestamptz,
      b bytea, big numeric, flag boolean)`,
  );
}

const COLUMNS = ["id", "s", "j", "at", "b", "big", "flag"];

dbTest("copyFrom() round-trips 100k rows of awkward values exactly", async (cluster) => {
  await createAwkward(cluster);
  const n = 100_000;
  const rows = (function* () {
    for (let i = 0; i < n; i++) yield awkwardRow(i);
  })();
  let start = performance.now();
  const copied = await cluster.copyFrom("copy_awkward", COLUMNS, rows);
  const copyMs = performance.now() - start;
  assert.equal(copied, n);

  const back = await cluster.query<{
    id: number;
    s: string | null;
    j: unknown;
    at: Date;
    b: Uint8Array;
    big: string;
    flag: boolean;
  }>("select * from copy_awkward order by id");
  assert.equal(back.length, n);
  for (let i = 0; i < n; i++) {
    const [id, s, j, at, b, big, flag] = awkwardRow(i);
    const row = back[i]!;
    assert.equal(row.id, id);
    assert.equal(row.s, s);
    assert.deepEqual(row.j, j);
    assert.equal(row.at.getTime(), (at as Date).getTime());
    assert.deepEqual(new Uint8Array(row.b), b);
    assert.equal(row.big, String(big));
    assert.equal(row.flag, flag);
  }

  // The same rows as multi-row INSERTs of 1000 rows each, for comparison.
  await createAwkward(cluster);
  start = performance.now();
  for (let base = 0; base < n; base += 1000) {
    const values: unknown[] = [];
    const tuples: string[] = [];
    for (let i = base; i < base + 1000; i++) {
      const r = awkwardRow(i);
      tuples.push(`(${r.map((_, k) => `$${values.length + k + 1}`).join(", ")})`);
      values.push(...r.map((v) => (typeof v === "bigint" ? String(v) : v)));
    }
    await cluster.exec(
      `insert into copy_awkward(${COLUMNS.join(", ")}) values ${tuples.join(", ")}`,
      values,
    );
  }
  const insertMs = performance.now() - start;
  console.log(
    `copyFrom: ${Math.round(n / (copyMs / 1000))} rows/s; multi-row INSERT: ${
      Math.round(n / (insertMs / 1000))
    } rows/s; ratio ${(insertMs / copyMs).toFixed(1)}x`,
  );
  await cluster.exec("drop table copy_awkward");
  assertPoolIdle(cluster);
});

dbTest("copyFrom() streams from an async iterable", async (cluster) => {
  await cluster.exec("drop table if exists copy_async");
  await cluster.exec("create table copy_async(id int, s text)");
  async function* source() {
    for (let i = 0; i < 5_000; i++) {
      if (i % 1000 === 0) await new Promise((r) => setTimeout(r, 1));
      yield [i, `row ${i}`];
    }
  }
  assert.equal(await cluster.copyFrom("public.copy_async", ["id", "s"], source()), 5_000);
  const { n } = await cluster.queryRow<{ n: number }>("select count(*)::int as n from copy_async");
  assert.equal(n, 5_000);
  await cluster.exec("drop table copy_async");
  assertPoolIdle(cluster);
});

dbTest("a row of the wrong width aborts the COPY: nothing is committed", async (cluster) => {
  await cluster.exec("drop table if exists copy_width");
  await cluster.exec("create table copy_width(id int, s text)");
  const rows: unknown[][] = Array.from({ length: 50_000 }, (_, i) => [i, "x"]);
  rows[40_000] = [40_000];
  await assert.rejects(
    cluster.copyFrom("copy_width", ["id", "s"], rows),
    (err) =>
      err instanceof RangeError && /row 40000 .* 1 values, 2 columns expected/.test(err.message),
  );
  assert.deepEqual(await cluster.query("select count(*)::int as n from copy_width"), [{ n: 0 }]);
  assertPoolIdle(cluster);
  assert.deepEqual(
    await cluster.query("select 1 as one"),
    [{ one: 1 }],
    "the cluster is still usable",
  );
  await cluster.exec("drop table copy_width");
});

dbTest("a source that throws aborts the COPY with its error", async (cluster) => {
  await cluster.exec("drop table if exists copy_throw");
  await cluster.exec("create table copy_throw(id int)");
  const boom = new Error("source failed");
  function* source() {
    for (let i = 0; i < 20_000; i++) yield [i];
    throw boom;
  }
  await assert.rejects(cluster.copyFrom("copy_throw", ["id"], source()), (err) => err === boom);
  assert.deepEqual(await cluster.query("select count(*)::int as n from copy_throw"), [{ n: 0 }]);
  assertPoolIdle(cluster);
  await cluster.exec("drop table copy_throw");
});

dbTest("a value the server rejects fails the COPY with the server's error", async (cluster) => {
  await cluster.exec("drop table if exists copy_bad");
  await cluster.exec("create table copy_bad(id int not null)");
  await assert.rejects(
    cluster.copyFrom("copy_bad", ["id"], [[1], [null]]),
    (err) => err instanceof DbxError && err.code === "23502" && err.kind === "not_null_violation",
  );
  assert.deepEqual(await cluster.query("select count(*)::int as n from copy_bad"), [{ n: 0 }]);
  assertPoolIdle(cluster);
  await cluster.exec("drop table copy_bad");
});

dbTest("copyFrom() rejects bad arguments before anything is sent", async (cluster) => {
  const before = cluster.stats().nodes[0]!.queries;
  await assert.rejects(cluster.copyFrom("t", [], [[1]]), /'columns' must be a non-empty array/);
  await assert.rejects(cluster.copyFrom("t", ["a", "a"], [[1, 1]]), /names "a" twice/);
  await assert.rejects(cluster.copyFrom(7 as unknown as string, ["a"], [[1]]), /'table' must be/);
  await assert.rejects(
    cluster.copyFrom("t", ["a"], 5 as unknown as unknown[][]),
    /'rows' must be an iterable/,
  );
  await assert.rejects(
    cluster.copyFrom("t", ["a"], "abc" as unknown as unknown[][]),
    /'rows' must be an iterable/,
  );
  assert.equal(cluster.stats().nodes[0]!.queries, before);
});
