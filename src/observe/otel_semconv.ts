/**
 * What the OpenTelemetry spans and metrics of dbx share: the instrumentation
 * scope, the database system name and the attribute values derived from a
 * statement (`db.operation.name`) or a failure (`error.type`). Internal.
 *
 * @module
 */

/** The instrumentation scope of dbx's tracer and meter. */
export const INSTRUMENTATION_NAME = "@codelab/dbx";
/** Its version. */
export const INSTRUMENTATION_VERSION = "0.1.0";
/** `db.system.name`. */
export const DB_SYSTEM = "postgresql";

/** A leading plain word; anything else (a parenthesis, a comment) yields no operation. */
const FIRST_WORD = /^\s*([A-Za-z]+)(?![\w$])/;
/** Node.js system error codes (ECONNREFUSED, ETIMEDOUT): low-cardinality, unlike messages. */
const SYSTEM_ERROR_CODE = /^E[A-Z0-9_]+$/;

/**
 * The statement's first keyword, upper-cased (`SELECT`, `INSERT`, `WITH`, ...).
 * An anchored regex only looks at the start of the text, so this stays cheap
 * for long statements.
 *
 * @param sql The statement.
 * @returns `db.operation.name`, or undefined when the text starts otherwise.
 */
export function operationOf(sql: string): string | undefined {
  return FIRST_WORD.exec(sql)?.[1]?.toUpperCase();
}

/**
 * `error.type`: the SQLSTATE when the server sent one, else the client's
 * error code (`ECONNRESET`), else the error's class name.
 *
 * @param err The failure.
 * @param sqlState Its SQLSTATE, if any.
 * @returns A low-cardinality error type.
 */
export function errorTypeOf(err: unknown, sqlState: string | undefined): string {
  if (sqlState !== undefined) return sqlState;
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === "string" && SYSTEM_ERROR_CODE.test(code)) return code;
    return err.name;
  }
  return "_OTHER";
}
