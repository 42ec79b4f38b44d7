/**
 * Which statements change the state of their session beyond themselves:
 * settings (`SET`, `RESET`, `set_config(…, false)`), the role, prepared
 * statements (`PREPARE`, `DEALLOCATE`, `DISCARD`), `LISTEN`, `LOAD`,
 * temporary objects and session advisory locks. A connection that ran one
 * is "session-modified": shared paths refuse such statements
 * (`call/validate.ts`), and a lease that ran one is reset before anyone
 * else gets its connection (`lease.ts`).
 *
 * The check reads the statement text: every statement of a multi-statement
 * text, after leading comments. `SET LOCAL`, `SET TRANSACTION` and
 * `SET CONSTRAINTS` end with their transaction and do not count.
 *
 * @module
 */

import { memoByText } from "./text_memo.ts";

/** What a statement leaves behind on its session. */
export type SessionEffect =
  /** Nothing beyond the statement (or its transaction). */
  | undefined
  /** Session state other callers would see: a setting, the role, a lock, a temporary object. */
  | "session"
  /** Prepared statements dropped (`DEALLOCATE`, `DISCARD ALL` / `PLANS`): the statement cache must forget them. */
  | "statements";

/** Whitespace and comments before a statement's first word. */
const LEAD = String.raw`(?:^|;)(?:\s|--[^\n]*(?:\n|$)|/\*[\s\S]*?\*/)*`;

/** Statements that drop prepared statements. */
const DROPS_STATEMENTS = new RegExp(`${LEAD}(?:deallocate|discard\\s+(?:all|plans))\\b`, "i");

/** Statements, by their first words, that change session state. */
const SESSION_COMMANDS = new RegExp(
  `${LEAD}(?:set\\s+(?!local\\b|transaction\\b|constraints\\b)|reset\\b|discard\\b|` +
    `deallocate\\b|prepare\\b|listen\\b|unlisten\\b|load\\b|` +
    `create\\s+(?:or\\s+replace\\s+)?(?:global\\s+|local\\s+)?temp(?:orary)?\\b)`,
  "i",
);

/**
 * Functions and clauses anywhere in a statement that change session state:
 * `set_config(…)` unless its last argument is `true` (local to the
 * transaction), session-level advisory locks (not `pg_advisory_xact_lock`),
 * `SELECT … INTO TEMP`.
 */
const SESSION_CALLS =
  /\bset_config\s*\((?![^;]*,\s*true\s*\))|\bpg_(?:try_)?advisory_(?:un)?lock(?:_shared)?\s*\(|\binto\s+temp(?:orary)?\b/i;

/**
 * Cheap pre-filter: every pattern above needs one of these words (at a word's start:
 * `offset` or a column `dataset` do not count; `pg_advisory_lock` has no word break).
 */
const CANDIDATE = /\b(?:set|reset|discard|deallocate|prepare|listen|unlisten|load|temp)|advisory/i;

/**
 * What `sql` leaves behind on its session.
 *
 * @param sql A statement text (possibly several statements).
 * @returns `"statements"` when it drops prepared statements, `"session"`
 * when it changes other session state, `undefined` when neither.
 */
export const sessionEffect: (sql: string) => SessionEffect = memoByText((sql) => {
  if (!CANDIDATE.test(sql)) return undefined;
  if (DROPS_STATEMENTS.test(sql)) return "statements";
  return SESSION_COMMANDS.test(sql) || SESSION_CALLS.test(sql) ? "session" : undefined;
});

/**
 * The tool to use instead of a session-changing statement on a shared
 * connection, for the error that refuses it.
 *
 * @param sql The refused statement.
 * @returns A sentence naming the right tool.
 */
export function sessionAdvice(sql: string): string {
  if (/\blisten\b/i.test(sql)) return "use cluster.listen() for notifications";
  if (/advisory/i.test(sql)) {
    return "use pg_advisory_xact_lock() inside runTx(), or cluster.withConnection() for a session lock";
  }
  if (/\btemp/i.test(sql)) return "use cluster.withConnection() for temporary objects";
  if (/\b(?:prepare|deallocate|discard)\b/i.test(sql)) {
    return "dbx prepares statements itself (statementCache); use cluster.withConnection() for a session of your own";
  }
  return "use the 'session' setting for every connection, SET LOCAL inside runTx(), or cluster.withConnection() for a session of your own";
}

/** A statement, anywhere in a text, that opens a transaction. */
const OPENS_TRANSACTION = new RegExp(`${LEAD}(?:begin|start\\s+transaction)\\b`, "i");

/**
 * Whether `sql` opens a transaction (`BEGIN`, `START TRANSACTION`, as any
 * of its statements): what follows must stay on its connection.
 *
 * @param sql A statement text (possibly several statements).
 * @returns `true` when it opens a transaction.
 */
export function startsTransaction(sql: string): boolean {
  return OPENS_TRANSACTION.test(sql);
}
