/**
 * The statement cache: statements with parameters run as named prepared
 * statements, so each connection parses a text once (LRU-bounded per
 * connection), and a prepared form that is gone or stale is prepared again.
 * Used on pipelined and pooled connections alike.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { forgetStatement } from "./pg_internals.ts";
import { DbxError } from "../errors.ts";
import { pgErrorCode } from "../failure.ts";
import { memoByText } from "./text_memo.ts";
import type { Failed } from "../failure.ts";

/** A statement that changes the schema: prepared statements' parameter types may be stale after it. */
const SCHEMA_CHANGE = /(?:^|;)(?:\s|--[^\n]*(?:\n|$)|\/\*[\s\S]*?\*\/)*(?:create|alter|drop)\b/i;

/** Cheap pre-filter of {@linkcode SCHEMA_CHANGE}. */
const SCHEMA_WORDS = /\b(?:create|alter|drop)\b/i;

/** Whether a text changes the schema (any of its statements). */
const changesSchema = memoByText((sql) => SCHEMA_WORDS.test(sql) && SCHEMA_CHANGE.test(sql));

/** A statement's name on a connection, and when it was last used. */
interface Named {
  readonly name: string;
  used: number;
}

/**
 * Named statements, per connection: each connection prepares a statement
 * text the first time it sees it and reuses it, keeping the `max` most
 * recently used; the least recently used is deallocated to make room.
 * After a schema change sent through dbx (`CREATE`, `ALTER`, `DROP`) every
 * connection prepares its statements again: a prepared statement keeps the
 * parameter types it was prepared with, which a new column type or a
 * re-created enum would silently contradict.
 */
export class StatementCache {
  readonly #max: number;
  /** Per connection: the schema generation its names belong to, and text → name. */
  readonly #names = new WeakMap<
    pg.ClientBase,
    { generation: number; names: Map<string, Named> }
  >();
  /** Bumped by every schema change. */
  #generation = 0;
  /** Counts uses: a name's last use, to find the least recently used. */
  #uses = 0;
  /**
   * Random per cache: behind a pooler that shares server connections
   * between clients, another client's `dbx_1` must not pass for ours.
   */
  readonly #prefix = `dbx_${Math.floor(Math.random() * 36 ** 6).toString(36)}_`;
  #next = 0;

  /**
   * @param max Most statements prepared per connection.
   */
  constructor(max: number) {
    this.#max = max;
  }

  /**
   * The name of a statement text on a connection, given one on first sight.
   *
   * @param client The connection.
   * @param text Statement text.
   * @returns Its name there.
   */
  name(client: pg.ClientBase, text: string): string {
    const names = this.#of(client);
    const known = names.get(text);
    if (known !== undefined) {
      known.used = ++this.#uses;
      return known.name;
    }
    if (names.size >= this.#max) {
      // The least recently used goes: a scan, only when a new text comes to a full cache.
      let oldest: [string, Named] | undefined;
      for (const entry of names) {
        if (oldest === undefined || entry[1].used < oldest[1].used) oldest = entry;
      }
      names.delete(oldest![0]);
      this.#deallocate(client, oldest![1].name);
    }
    const name = `${this.#prefix}${(++this.#next).toString(36)}`;
    names.set(text, { name, used: ++this.#uses });
    return name;
  }

  /**
   * Gives a text a fresh name on a connection (its plan no longer fits:
   * 0A000), dropping the stale one.
   *
   * @param client The connection.
   * @param text Statement text.
   * @returns The new name.
   */
  rename(client: pg.ClientBase, text: string): string {
    const names = this.#of(client);
    const old = names.get(text);
    names.delete(text);
    if (old !== undefined) this.#deallocate(client, old.name);
    return this.name(client, text);
  }

  /** A connection's names, all dropped first when the schema changed since they were given. */
  #of(client: pg.ClientBase): Map<string, Named> {
    const entry = this.#names.get(client);
    if (entry === undefined) {
      const names = new Map<string, Named>();
      this.#names.set(client, { generation: this.#generation, names });
      return names;
    }
    if (entry.generation !== this.#generation) {
      for (const { name } of entry.names.values()) this.#deallocate(client, name);
      entry.names.clear();
      entry.generation = this.#generation;
    }
    return entry.names;
  }

  /**
   * Notes a statement before it is sent and once it succeeded: a schema
   * change makes every connection prepare its statements again (twice, so
   * a statement prepared while the change ran is not kept either).
   *
   * @param sql The statement text.
   * @returns Whether it changes the schema.
   */
  schemaChange(sql: string): boolean {
    if (!changesSchema(sql)) return false;
    this.#generation++;
    return true;
  }

  /** Marks every prepared statement stale (a schema change just ended). */
  schemaChanged(): void {
    this.#generation++;
  }

  /**
   * Gives a text a fresh name on a connection because its prepared form is
   * gone from the server: never the old name again, so concurrent
   * re-prepares of one text on a pipe cannot collide (42P05).
   *
   * @param client The connection.
   * @param text Statement text.
   * @returns The new name.
   */
  renew(client: pg.ClientBase, text: string): string {
    const names = this.#of(client);
    const old = names.get(text);
    names.delete(text);
    if (old !== undefined) forgetStatement(client, old.name);
    return this.name(client, text);
  }

  /**
   * Forgets every name given on a connection (the session dropped its
   * prepared statements: `DEALLOCATE ALL`, `DISCARD ALL`).
   *
   * @param client The connection.
   */
  forget(client: pg.ClientBase): void {
    this.#names.delete(client);
  }

  /**
   * Drops a prepared statement: queued behind everything already sent on
   * the connection, so statements using it still run first.
   */
  #deallocate(client: pg.ClientBase, name: string): void {
    forgetStatement(client, name);
    // A connection inside a failed transaction refuses it: the statement
    // then stays on the server until the connection closes, unused.
    client.query(`deallocate "${name}"`).catch(() => {});
  }
}

/** Whether a named statement failed only because its prepared form is gone or stale (nothing ran). */
function staleStatement(err: unknown): "gone" | "stale" | undefined {
  const code = pgErrorCode(err);
  if (code === "26000") return "gone";
  // A parameter type dropped since it was prepared (a re-created enum): refused at Bind.
  if (code === "XX000" && /cache lookup failed for type/.test(String((err as Error).message))) {
    return "stale";
  }
  if (
    code === "0A000" &&
    /cached plan must not change result type/.test(String((err as Error).message))
  ) {
    return "stale";
  }
  return undefined;
}

/**
 * A statement method's query config: a text, its bind parameters, and the
 * cache's name. Made for one {@linkcode sendCached} call (each attempt makes
 * its own), which names it in place: pg copies the name when the query is
 * built, so a re-send under a new name leaves the first query as it was.
 */
class StatementConfig {
  name: string | undefined = undefined;
  constructor(readonly text: string, readonly values: readonly unknown[] | undefined) {}
}

/**
 * The query config of a statement text and its bind parameters.
 *
 * @param sql Statement text.
 * @param args Bind parameters.
 * @returns `{ text, values }` for pg.
 */
export function statementConfig(
  sql: string,
  args: readonly unknown[] | undefined,
): pg.QueryConfig {
  return new StatementConfig(sql, args) as pg.QueryConfig;
}

/**
 * `config` with the cache's `name` (undefined: none): a statement method's
 * own config named in place (this runs for every statement), any other
 * copied with every other field kept.
 */
function withName(config: pg.QueryConfig, name: string | undefined): pg.QueryConfig {
  if (!(config instanceof StatementConfig)) return { ...config, name };
  config.name = name;
  return config as pg.QueryConfig;
}

/**
 * Sends a statement, named when the cache gives it a name; re-prepares and
 * re-sends it once when its prepared form is gone (26000) or stale (0A000,
 * or XX000 "cache lookup failed for type" for a parameter type dropped
 * since): the server ran nothing. A schema change goes unnamed and makes
 * every connection prepare again. A query config's own `name` (an ORM's
 * prepared statement) is replaced by the cache's, keyed by text like every
 * other statement (unnamed when the cache is off); its `rowMode` and
 * `types` are kept.
 *
 * @param client The connection it goes to (its prepared statements).
 * @param cache The statement names; undefined when off.
 * @param config The statement: text, bind parameters, and pg's options.
 * @param send Sends one query config; its promise settles with what
 *   `failed` makes of a failure (`settleFailed` in `failure.ts`).
 * @returns The driver's result.
 */
export function sendCached(
  client: pg.ClientBase,
  cache: StatementCache | undefined,
  config: pg.QueryConfig,
  send: (config: pg.QueryConfig, failed: Failed) => Promise<pg.QueryResult>,
): Promise<pg.QueryResult> {
  const sql = config.text;
  if (cache?.schemaChange(sql)) {
    return sendCached(client, undefined, config, send).then((result) => {
      cache.schemaChanged();
      return result;
    });
  }
  const args = config.values;
  const name = args === undefined || args.length === 0 ? undefined : cache?.name(client, sql);
  if (name === undefined) {
    const unnamed = config.name === undefined ? config : withName(config, undefined);
    return send(unnamed, (err) => named(err, "", sql));
  }
  return send(withName(config, name), (err) => {
    if (pgErrorCode(err) === "42P05") {
      // Our own name already prepared on this server connection: only a
      // pooler handing one server connection to several clients does that.
      throw new DbxError(
        `prepared statement "${name}" already exists on the server connection: behind a transaction-mode pooler (PgBouncer) set statementCache: false`,
        { kind: "other", cause: err },
      );
    }
    const why = staleStatement(err);
    // Inside a transaction the failure aborted it: nothing can be re-sent.
    if (why === undefined || client.getTransactionStatus() !== "I") return named(err, name, sql);
    const again = why === "gone" ? cache!.renew(client, sql) : cache!.rename(client, sql);
    return send(withName(config, again), (e) => named(e, again, sql));
  });
}

/** Longest prefix of a statement's text that an error message shows. */
const SHOWN_SQL_CHARS = 80;

/** Per error `sendCached` rejected with: its statement's name ("" when unnamed) and text. */
const statements = new WeakMap<object, { readonly name: string; readonly sql: string }>();

/** Remembers which statement `err` is about, and rethrows it. */
function named(err: unknown, name: string, sql: string): never {
  if (typeof err === "object" && err !== null) statements.set(err, { name, sql });
  throw err;
}

/**
 * The message of an error {@linkcode sendCached} rejected with, naming the
 * statement by its text (on one line, at most 80 characters) where the
 * server named it by dbx's internal prepared-statement name: `bind message
 * supplies 1 parameters, but prepared statement "select $1 + $2" requires 2`.
 *
 * @param err A thrown value.
 * @param message Its message as the server worded it.
 * @returns The message, naming the statement's text when the server named the statement.
 */
export function statementMessage(err: unknown, message: string): string {
  const statement = typeof err === "object" && err !== null ? statements.get(err) : undefined;
  if (statement === undefined) return message;
  const text = statement.sql.replace(/\s+/g, " ").trim();
  const shown = text.length > SHOWN_SQL_CHARS ? `${text.slice(0, SHOWN_SQL_CHARS)}…` : text;
  return message.replaceAll(`statement "${statement.name}"`, () => `statement "${shown}"`);
}
