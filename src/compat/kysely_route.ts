/**
 * Which Kysely statements may run on a replica under `dbxDialect(cluster,
 * { reads: "replica" })`: decided from the query's operation tree (a
 * SELECT, its CTEs SELECTs too) and its text (no locking clause).
 *
 * @module
 */

import type { CompiledQuery } from "kysely";

/** `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`. */
const LOCKING = /\bfor\s+(no\s+key\s+update|update|key\s+share|share)\b/i;

interface Node {
  readonly kind: string;
  readonly with?: { readonly expressions: readonly { readonly expression: Node }[] };
}

/** A SELECT whose CTEs are SELECTs too (data-modifying CTEs need the primary). */
function selectOnly(node: Node): boolean {
  return node.kind === "SelectQueryNode" &&
    (node.with?.expressions ?? []).every((cte) => selectOnly(cte.expression));
}

/**
 * Whether a compiled query may run on a replica: a Kysely SELECT (not raw
 * SQL) with only SELECT CTEs and no locking clause.
 *
 * @param query The compiled query.
 * @returns `true` for a plain read.
 */
export function isPlainRead(query: CompiledQuery): boolean {
  return selectOnly(query.query as Node) && !LOCKING.test(query.sql);
}
