/**
 * Which query object pg runs for a statement, and sending one. A named
 * statement (one the statement cache prepared) and a text without
 * parameters run as dbx's own {@linkcode LeanQuery} (`lean_query.ts`);
 * other statements (unnamed with parameters, `binary`, `rows`, `queryMode`,
 * ...) as pg's `Query`.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import { LeanQuery } from "./lean_query.ts";
import { type Failed, settleFailed } from "../failure.ts";

/** pg's Query class (`pg.Query`), and the parts of a query object @types/pg leaves out. */
interface RawQuery extends pg.Submittable {
  name?: string | undefined;
  types?: unknown;
  _rowMode?: string | undefined;
  _result: { constructor: new (rowMode: unknown, types: unknown) => unknown };
  _results: unknown;
}
const Query = (pg as unknown as {
  Query: new (
    text: string,
    values: unknown[] | undefined,
    callback: (err: Error | null, result: pg.QueryResult) => void,
  ) => RawQuery;
}).Query;

/**
 * The query object pg runs for `config`: a {@linkcode LeanQuery} for a
 * named statement with values, or a text without name nor parameters, with
 * nothing else but `rowMode` and `types`; pg's `Query`, built from the text,
 * for one with only a text, values, `rowMode` and `types` (pg copies a
 * config object property by property,
 * descriptors included, a cost on every statement); undefined for others
 * (`queryMode`, `binary`, `rows`, ...), which are left to pg.
 *
 * @param client The connection it goes to: its value parsers (pg's
 *   `types`, and any `client.setTypeParser`) read the rows, unless the query
 *   brings its own `types`.
 * @param config The statement.
 * @param callback pg's callback for its answer.
 * @returns The query for `client.query()`; undefined: pass `config` and `callback` to it.
 */
export function pgQuery(
  client: pg.ClientBase,
  config: pg.QueryConfig,
  callback: (err: Error | null, result: pg.QueryResult) => void,
): pg.Submittable | undefined {
  const c = config as pg.QueryConfig & Partial<pg.QueryArrayConfig> & Record<string, unknown>;
  if (
    c.queryMode !== undefined || c.binary !== undefined || c.portal !== undefined ||
    c.rows !== undefined || c.query_timeout !== undefined || c.callback !== undefined
  ) return undefined;
  const { name, values, text } = config;
  if (typeof text === "string" && (values == null || Array.isArray(values))) {
    const types = (c.types as pg.CustomTypesConfig | undefined) ??
      (client as unknown as { _types: pg.CustomTypesConfig })._types;
    const arrayRows = c.rowMode === "array";
    // Named, or what pg sends in the simple protocol: no name, no parameters.
    if (name !== undefined ? values != null : !values?.length) {
      return new LeanQuery(
        text,
        name,
        values ?? undefined,
        types,
        arrayRows,
        callback as never,
      ) as never;
    }
  }
  const query = new Query(config.text, config.values, callback);
  if (name !== undefined) query.name = name;
  if (c.rowMode !== undefined || c.types !== undefined) {
    // As pg's constructor does with a config: the result reads rows by these.
    query.types = c.types;
    query._rowMode = c.rowMode;
    query._result = query._results = new query._result.constructor(c.rowMode, c.types) as never;
  }
  return query;
}

/**
 * Sends one statement on a client the way {@linkcode pgQuery} builds it.
 *
 * @param client A connection (pooled or leased).
 * @param config The statement.
 * @param failed What a failure becomes (`settleFailed`).
 * @returns pg's result.
 */
export function sendQuery(
  client: pg.ClientBase,
  config: pg.QueryConfig,
  failed: Failed,
): Promise<pg.QueryResult> {
  return new Promise((resolve) => {
    const answered = (err: Error | null, result: pg.QueryResult) =>
      err ? settleFailed(err, failed, resolve) : resolve(result);
    try {
      const query = pgQuery(client, config, answered);
      if (query === undefined) client.query(config, answered);
      else client.query(query);
    } catch (err) {
      settleFailed(err, failed, resolve);
    }
  });
}
