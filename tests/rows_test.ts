import assert from "node:assert/strict";
import {
  collect,
  collectOne,
  DbxError,
  NoRowsError,
  type Row,
  RowValidationError,
  type StandardSchemaV1,
} from "../mod.ts";

/** A schema shaped like zod's / valibot's `~standard`: sync validation. */
function numberField(field: string): StandardSchemaV1<unknown, { [k: string]: number }> {
  return {
    "~standard": {
      version: 1,
      vendor: "test",
      validate(value) {
        const v = (value as Row)[field];
        return typeof v === "number"
          ? { value: { [field]: v } }
          : { issues: [{ message: "Expected number", path: [field] }] };
      },
    },
  };
}

/** Like arktype/zod async refinements: validate returns a Promise. */
const asyncSchema: StandardSchemaV1<unknown, { name: string }> = {
  "~standard": {
    version: 1,
    vendor: "test-async",
    validate: async (value) => {
      await Promise.resolve();
      const name = (value as Row).name;
      return typeof name === "string" && name !== ""
        ? { value: { name: name.toUpperCase() } }
        : { issues: [{ message: "Required", path: [{ key: "name" }] }] };
    },
  },
};

Deno.test("collect() maps every row with a function, in order, with indexes", async () => {
  const out = await collect([{ a: 1 }, { a: 2 }], (row, i) => `${row.a}@${i}`);
  assert.deepEqual(out, ["1@0", "2@1"]);
});

Deno.test("collect() validates with a synchronous Standard Schema", async () => {
  assert.deepEqual(await collect([{ id: 1, extra: "x" }, { id: 2 }], numberField("id")), [
    { id: 1 },
    { id: 2 },
  ]);
});

Deno.test("collect() awaits an asynchronous Standard Schema", async () => {
  assert.deepEqual(await collect([{ name: "ada" }, { name: "bob" }], asyncSchema), [
    { name: "ADA" },
    {
      name: "BOB",
    },
  ]);
});

Deno.test("collect() names the invalid row's index, path and issue", async () => {
  const rows = [{ id: 1 }, { id: 2 }, { id: "three" }, { id: 4 }];
  await assert.rejects(collect(rows, numberField("id")), (err) => {
    assert.ok(err instanceof RowValidationError);
    assert.ok(err instanceof DbxError);
    assert.equal(err.rowIndex, 2);
    assert.equal(err.message, "row 2 is invalid: id: Expected number");
    assert.deepEqual(err.issues, [{ message: "Expected number", path: ["id"] }]);
    return true;
  });
  await assert.rejects(collect([{ name: "" }], asyncSchema), /row 0 is invalid: name: Required/);
});

Deno.test("collect() reports a throwing mapper with the row index and the original cause", async () => {
  const boom = new Error("bad row");
  await assert.rejects(
    collect([{}, {}], (_row, i) => {
      if (i === 1) throw boom;
      return i;
    }),
    (err) =>
      err instanceof DbxError && /row 1 could not be mapped: bad row/.test(err.message) &&
      err.cause === boom,
  );
});

Deno.test("collectOne() maps the first row and ignores the rest", async () => {
  assert.equal(await collectOne([{ n: "42" }, { n: "7" }], (row) => Number(row.n)), 42);
  assert.deepEqual(await collectOne([{ name: "x" }], asyncSchema), { name: "X" });
});

Deno.test("collectOne() takes the one row queryRow returns, as well as rows", async () => {
  const row: Record<string, unknown> = { n: "42" };
  assert.equal(await collectOne(row, (r) => Number(r.n)), 42);
  assert.deepEqual(await collectOne({ name: "x" }, asyncSchema), { name: "X" });
});

Deno.test("collectOne() throws NoRowsError on zero rows", async () => {
  await assert.rejects(collectOne([], (row) => row), NoRowsError);
});

Deno.test("collect() and collectOne() reject bad arguments with a TypeError naming them", async () => {
  await assert.rejects(
    collect(null as unknown as Row[], (r) => r),
    /'rows' must be an array of rows: current value is null/,
  );
  await assert.rejects(
    collect([], {} as unknown as (r: Row) => Row),
    /'mapper' must be a function or a Standard Schema/,
  );
  await assert.rejects(collectOne(5 as unknown as Row[], (r) => r), /'rows' must be an array/);
});
