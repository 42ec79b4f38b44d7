/**
 * Row helpers (Go's pgx.CollectRows / CollectOneRow): map or validate query
 * rows with a function or any Standard Schema validator (zod, valibot,
 * arktype, ...), with errors that name the row.
 *
 * @module
 */

import { DbxError, NoRowsError } from "./errors.ts";
import type { Row } from "./executor.ts";

/**
 * One problem reported by a Standard Schema validator.
 *
 * @example
 * ```ts
 * import type { StandardSchemaIssue } from "@codelab/dbx";
 *
 * const issue: StandardSchemaIssue = { message: "Expected number", path: ["age"] };
 * ```
 */
export interface StandardSchemaIssue {
  /** What is wrong. */
  readonly message: string;
  /** Where: property keys (or `{ key }` segments) from the root. */
  readonly path?: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }> | undefined;
}

/**
 * A validator's answer.
 *
 * @example
 * ```ts
 * import type { StandardSchemaResult } from "@codelab/dbx";
 *
 * const ok: StandardSchemaResult<number> = { value: 1 };
 * const bad: StandardSchemaResult<number> = { issues: [{ message: "Expected number" }] };
 * ```
 */
export type StandardSchemaResult<Output> =
  | { readonly value: Output; readonly issues?: undefined }
  | { readonly issues: ReadonlyArray<StandardSchemaIssue> };

/**
 * The Standard Schema v1 interface (https://standardschema.dev), which zod,
 * valibot and arktype schemas implement. Declared here so dbx depends on none
 * of them.
 *
 * @example
 * ```ts
 * import { collect, type StandardSchemaV1 } from "@codelab/dbx";
 *
 * const Id: StandardSchemaV1<unknown, number> = {
 *   "~standard": {
 *     version: 1,
 *     vendor: "handmade",
 *     validate: (v) => {
 *       const id = (v as { id?: unknown }).id;
 *       return typeof id === "number" ? { value: id } : { issues: [{ message: "Expected number", path: ["id"] }] };
 *     },
 *   },
 * };
 * const ids = await collect([{ id: 1 }], Id); // [1]
 * ```
 */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  /** The standard properties. */
  readonly "~standard": {
    /** Always 1. */
    readonly version: 1;
    /** The library that made the schema. */
    readonly vendor: string;
    /** Validates a value. */
    readonly validate: (
      value: unknown,
    ) => StandardSchemaResult<Output> | Promise<StandardSchemaResult<Output>>;
    /** Inferred types (type-level only). */
    readonly types?: { readonly input: Input; readonly output: Output } | undefined;
  };
}

/**
 * A row mapper: a function, or a Standard Schema validator.
 *
 * @example
 * ```ts
 * import { collect, type RowMapper } from "@codelab/dbx";
 *
 * const toName: RowMapper<string> = (row) => String(row.name);
 * const names = await collect([{ name: "Ada" }], toName);
 * ```
 */
export type RowMapper<T> = ((row: Row, index: number) => T) | StandardSchemaV1<unknown, T>;

/**
 * A row that a Standard Schema validator rejected: names the row's index
 * and keeps the validator's issues.
 *
 * @example
 * ```ts
 * import { RowValidationError } from "@codelab/dbx";
 *
 * function describe(err: unknown): string {
 *   return err instanceof RowValidationError ? `row ${err.rowIndex}: ${err.issues.length} issues` : "other";
 * }
 * ```
 */
export class RowValidationError extends DbxError {
  /** Index of the invalid row. */
  readonly rowIndex: number;
  /** The validator's issues. */
  readonly issues: ReadonlyArray<StandardSchemaIssue>;

  /**
   * Creates a RowValidationError.
   *
   * @param rowIndex Index of the invalid row.
   * @param issues The validator's issues.
   */
  constructor(rowIndex: number, issues: ReadonlyArray<StandardSchemaIssue>) {
    super(`row ${rowIndex} is invalid: ${issues.map(formatIssue).join("; ")}`, { kind: "other" });
    this.name = "RowValidationError";
    this.rowIndex = rowIndex;
    this.issues = issues;
  }
}

function formatIssue(issue: StandardSchemaIssue): string {
  const path = issue.path?.map((p) => String(typeof p === "object" ? p.key : p)).join(".");
  return path ? `${path}: ${issue.message}` : issue.message;
}

function isSchema(mapper: unknown): mapper is StandardSchemaV1 {
  const std = (mapper as { "~standard"?: { validate?: unknown } } | null)?.["~standard"];
  return typeof std === "object" && std !== null && typeof std.validate === "function";
}

function checkArgs(method: string, rows: unknown, mapper: unknown): void {
  if (rows === null || typeof rows !== "object" || !(Symbol.iterator in rows)) {
    throw new TypeError(
      `Cannot run ${method}() as 'rows' must be an array of rows: current value is ${
        rows === null ? "null" : typeof rows
      }`,
    );
  }
  if (typeof mapper !== "function" && !isSchema(mapper)) {
    throw new TypeError(
      `Cannot run ${method}() as 'mapper' must be a function or a Standard Schema: current value is ${
        mapper === null ? "null" : typeof mapper
      }`,
    );
  }
}

function mapOne<T>(mapper: RowMapper<T>, row: Row, index: number): T | Promise<T> {
  if (typeof mapper === "function") {
    try {
      return mapper(row, index);
    } catch (cause) {
      throw new DbxError(
        `row ${index} could not be mapped: ${
          cause instanceof Error ? cause.message : String(cause)
        }`,
        { kind: "other", cause },
      );
    }
  }
  const result = mapper["~standard"].validate(row);
  if (result instanceof Promise) return result.then((r) => unwrap(r, index));
  return unwrap(result, index);
}

function unwrap<T>(result: StandardSchemaResult<T>, index: number): T {
  if (result.issues !== undefined) throw new RowValidationError(index, result.issues);
  // A cast, not narrowing: the union narrows only under strictNullChecks, and
  // dbx's sources must type-check in projects without it.
  return (result as { readonly value: T }).value;
}

/**
 * Maps every row with a function, or validates it with a Standard Schema
 * (zod, valibot, arktype...). Asynchronous validators are awaited; the
 * promise resolves once every row is mapped.
 *
 * @param rows Rows from `query` / `readQuery`.
 * @param mapper A function `(row, index) => T` or a Standard Schema for `T`.
 * @returns The mapped rows, in order.
 * @throws {RowValidationError} naming the first invalid row and its issues.
 * @throws {DbxError} naming the row when a mapper function throws (original as `cause`).
 * @throws {TypeError} when `rows` is not iterable or `mapper` is neither.
 *
 * @example With a schema (any Standard Schema, e.g. `z.object({...})`)
 * ```ts
 * import { collect, type StandardSchemaV1 } from "@codelab/dbx";
 *
 * const User: StandardSchemaV1<unknown, { id: number }> = {
 *   "~standard": {
 *     version: 1,
 *     vendor: "example",
 *     validate: (v) =>
 *       typeof (v as { id?: unknown }).id === "number"
 *         ? { value: { id: (v as { id: number }).id } }
 *         : { issues: [{ message: "Expected number", path: ["id"] }] },
 *   },
 * };
 * const users = await collect([{ id: 1 }, { id: 2 }], User);
 * ```
 */
export async function collect<T>(rows: Iterable<Row>, mapper: RowMapper<T>): Promise<T[]> {
  checkArgs("collect", rows, mapper);
  const out: T[] = [];
  let index = 0;
  for (const row of rows) {
    const mapped = mapOne(mapper, row, index++);
    out.push(mapped instanceof Promise ? await mapped : mapped);
  }
  return out;
}

/**
 * Maps the first row (further rows are ignored, as pgx's CollectOneRow does),
 * or a single row as `queryRow` returns it.
 *
 * @param rows Rows from `query` / `readQuery`, or one row from `queryRow` / `readQueryRow`.
 * @param mapper A function `(row, index) => T` or a Standard Schema for `T`.
 * @returns The mapped first row.
 * @throws {NoRowsError} when there is no row.
 * @throws {RowValidationError} when the row is invalid.
 *
 * @example
 * ```ts
 * import { collectOne } from "@codelab/dbx";
 *
 * const total = await collectOne([{ n: "42" }], (row) => Number(row.n));
 * const same = await collectOne({ n: "42" }, (row) => Number(row.n)); // one row, as queryRow returns it
 * console.log(total, same); // 42 42
 * ```
 */
export async function collectOne<T>(rows: Iterable<Row> | Row, mapper: RowMapper<T>): Promise<T> {
  // One row (an object that is not iterable), as queryRow returns it.
  if (typeof rows === "object" && rows !== null && !(Symbol.iterator in rows)) rows = [rows as Row];
  checkArgs("collectOne", rows, mapper);
  for (const row of rows as Iterable<Row>) return await mapOne(mapper, row, 0);
  throw new NoRowsError();
}
