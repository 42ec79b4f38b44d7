/**
 * COPY FROM STDIN for `cluster.copyFrom`. (Being implemented.)
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";

/** Rows for COPY: arrays of column values, from a sync or async iterable. */
export type CopyRows = Iterable<readonly unknown[]> | AsyncIterable<readonly unknown[]>;

/**
 * Validates copyFrom's arguments before anything is sent.
 *
 * @param method The public method name, for messages.
 * @param table Table name, optionally schema-qualified.
 * @param columns Column names.
 * @param rows The rows source.
 */
export function checkCopyArgs(method: string, table: unknown, columns: unknown, rows: unknown): void {
  void method;
  void table;
  void columns;
  void rows;
  throw new Error("not implemented");
}

/**
 * Streams `rows` into `table` with COPY FROM STDIN on `client`.
 *
 * @param client A connection taken from the primary's pool.
 * @param table Table name.
 * @param columns Column names.
 * @param rows The rows.
 * @returns Rows copied.
 */
export function copyIn(
  client: pg.PoolClient,
  table: string,
  columns: readonly string[],
  rows: CopyRows,
): Promise<number> {
  void client;
  void table;
  void columns;
  void rows;
  return Promise.reject(new Error("not implemented"));
}
