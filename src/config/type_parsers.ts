/**
 * The shape of value parsers a config's `types` accepts.
 *
 * @module
 */

/**
 * Value parsers by type OID, in the shape of pg's `types` (so `pg.types`
 * itself, or an object delegating to it, fits).
 *
 * @example
 * ```ts
 * import type { TypeParsers } from "@codelab/dbx";
 * import pg from "pg";
 *
 * const types: TypeParsers = {
 *   getTypeParser: (oid, format) => oid === 1700 ? Number : pg.types.getTypeParser(oid, format),
 * };
 * ```
 */
export interface TypeParsers {
  /** The parser of a type's values; `format` is `"text"` unless binary results are asked for. */
  getTypeParser(oid: number, format?: "text" | "binary"): (value: string) => unknown;
}
