/**
 * Error classes, predicates and normalisation of driver errors.
 *
 * Every error a {@linkcode Cluster} method throws is a {@linkcode DbxError}: it
 * carries the SQLSTATE `code` when the server sent one, a coarse `kind` to
 * branch on, the `node` it happened on, and the driver's error as `cause`.
 * The predicates (`isRetryable`, `isConnectionError`, ...) look through
 * `cause` chains and `AggregateError`s, so they work on raw driver errors,
 * wrapped errors and {@linkcode RetryExhaustedError}s alike.
 *
 * @module
 */

import { isConnectionError, pgErrorCode, walk } from "./sqlstate.ts";

/**
 * What kind of failure a {@linkcode DbxError} is: a stable, coarse category
 * for callers to branch on (HTTP status, retry decision, user message).
 *
 * @example
 * ```ts
 * import { type ErrorKind, handleError } from "@codelab/dbx";
 *
 * function httpStatus(err: unknown): number {
 *   const kind: ErrorKind = handleError(err).kind;
 *   return kind === "not_found" ? 404 : kind === "unique_violation" ? 409 : 500;
 * }
 * ```
 */
export type ErrorKind =
  | "not_found"
  | "unique_violation"
  | "foreign_key_violation"
  | "check_violation"
  | "not_null_violation"
  | "serialization_failure"
  | "deadlock"
  | "connection"
  | "timeout"
  | "canceled"
  | "read_only"
  | "other";

/**
 * Options for constructing a {@linkcode DbxError}.
 *
 * @example
 * ```ts
 * import { DbxError } from "@codelab/dbx";
 *
 * const err = new DbxError("order not found", { kind: "not_found", node: "db1:5432" });
 * console.log(err.kind); // "not_found"
 * ```
 */
export interface DbxErrorOptions {
  /** SQLSTATE code sent by the server, e.g. `"23505"`. @default undefined */
  code?: string | undefined;
  /** Category of the failure. @default derived from `code` and `cause` */
  kind?: ErrorKind | undefined;
  /** Name of the node the failure happened on. @default undefined */
  node?: string | undefined;
  /** The underlying error. @default undefined */
  cause?: unknown;
}

/**
 * Base class of every error dbx throws.
 *
 * @example Branch on the kind of a failed insert
 * ```ts
 * import { DbxError } from "@codelab/dbx";
 *
 * function status(err: unknown): number {
 *   if (err instanceof DbxError && err.kind === "unique_violation") return 409;
 *   return 500;
 * }
 * ```
 */
export class DbxError extends Error {
  /** SQLSTATE code when the server reported one (e.g. `"23505"`). */
  readonly code: string | undefined;
  /** Coarse category of the failure. */
  readonly kind: ErrorKind;
  /** Name of the node the failure happened on, when known. */
  readonly node: string | undefined;

  /**
   * Creates a DbxError.
   *
   * @param message What went wrong.
   * @param options SQLSTATE code, kind, node and cause.
   */
  constructor(message: string, options: DbxErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "DbxError";
    this.code = options.code ?? pgErrorCode(options.cause);
    this.kind = options.kind ?? kindOf(this.code, options.cause);
    this.node = options.node;
  }
}

/**
 * Thrown by `queryRow`, `readQueryRow` and `collectOne` when the statement
 * returned no row (Go's `pgx.ErrNoRows`).
 *
 * @example Turn a missing row into `undefined`
 * ```ts
 * import { NoRowsError, type Executor } from "@codelab/dbx";
 *
 * async function findUser(db: Executor, id: number): Promise<{ name: string } | undefined> {
 *   try {
 *     return await db.queryRow<{ name: string }>("select name from users where id = $1", [id]);
 *   } catch (err) {
 *     if (err instanceof NoRowsError) return undefined;
 *     throw err;
 *   }
 * }
 * ```
 */
export class NoRowsError extends DbxError {
  /**
   * Creates a NoRowsError.
   *
   * @param message What returned no rows.
   * @param options Node and cause.
   */
  constructor(message = "no rows in result set", options: DbxErrorOptions = {}) {
    super(message, { ...options, kind: "not_found" });
    this.name = "NoRowsError";
  }
}

/**
 * Thrown when no node can take the call: every candidate is marked down, or
 * (for writes) no node is, or two nodes claim to be, the primary.
 *
 * @example Report unavailability
 * ```ts
 * import { NoHealthyNodeError } from "@codelab/dbx";
 *
 * const err: unknown = new NoHealthyNodeError("no healthy primary");
 * console.log(err instanceof NoHealthyNodeError ? 503 : 500);
 * ```
 */
export class NoHealthyNodeError extends DbxError {
  /**
   * Creates a NoHealthyNodeError.
   *
   * @param message Which role had no healthy node.
   * @param options Cause (for example the last probe failure).
   */
  constructor(message: string, options: DbxErrorOptions = {}) {
    super(message, { ...options, kind: "connection" });
    this.name = "NoHealthyNodeError";
  }
}

/**
 * Thrown by every call made after `close()` has started. The message names
 * the method called, what closed the cluster (`close()`, `stop()`, the end
 * of its `await using` block) and where, e.g. `Cannot run query() as the
 * cluster was closed at the end of its 'await using' block (file:///app/main.ts:9:1); ...`:
 * a module-level `await using` closes the cluster when the module body ends,
 * while `Deno.serve()` still takes requests.
 *
 * @example
 * ```ts
 * import { ClusterClosedError } from "@codelab/dbx";
 *
 * const err = new ClusterClosedError();
 * console.log(err.message); // "cluster is closed"
 * ```
 */
export class ClusterClosedError extends DbxError {
  /**
   * Creates a ClusterClosedError.
   *
   * @param message Defaults to `"cluster is closed"`.
   */
  constructor(message = "cluster is closed") {
    super(message, { kind: "other" });
    this.name = "ClusterClosedError";
  }
}

/**
 * Thrown when every attempt allowed by the retry policy failed. `errors`
 * holds one error per attempt, oldest first; `cause` is the last one, and
 * `code`, `kind` and `node` are taken from it.
 *
 * @example Inspect each attempt
 * ```ts
 * import { RetryExhaustedError } from "@codelab/dbx";
 *
 * function attempts(err: unknown): number {
 *   return err instanceof RetryExhaustedError ? err.errors.length : 1;
 * }
 * ```
 */
export class RetryExhaustedError extends DbxError {
  /** One error per attempt, oldest first. */
  readonly errors: readonly unknown[];

  /**
   * Creates a RetryExhaustedError.
   *
   * @param errors The error of each attempt, oldest first (at least one).
   * @param message Defaults to a summary naming the attempt count and the last error.
   */
  constructor(errors: readonly unknown[], message?: string) {
    const last = errors.at(-1);
    super(
      message ??
        `all ${errors.length} attempts failed; last error: ${
          last instanceof Error ? last.message : String(last)
        }`,
      { cause: last, node: last instanceof DbxError ? last.node : undefined },
    );
    this.name = "RetryExhaustedError";
    this.errors = errors;
  }
}

/**
 * Thrown by `connect()` (and other entries taking options) when a setting is
 * invalid. The message names the field and its value; passwords are redacted.
 *
 * @example
 * ```ts
 * import { connect, ConfigError } from "@codelab/dbx";
 *
 * try {
 *   await connect({ master: "" });
 * } catch (err) {
 *   if (err instanceof ConfigError) console.log(err.field); // "master"
 * }
 * ```
 */
export class ConfigError extends DbxError {
  /** Path of the offending field, e.g. `"pool.max"` or `"replicas[1].url"`. */
  readonly field: string;

  /**
   * Creates a ConfigError.
   *
   * @param field Path of the offending field.
   * @param message Full message naming the field and the (redacted) value.
   */
  constructor(field: string, message: string) {
    super(message, { kind: "other" });
    this.name = "ConfigError";
    this.field = field;
  }
}

/** Maps a SQLSTATE (and otherwise the cause) to an {@linkcode ErrorKind}. */
function kindOf(code: string | undefined, cause: unknown): ErrorKind {
  switch (code) {
    case "23505":
      return "unique_violation";
    case "23503":
      return "foreign_key_violation";
    case "23514":
      return "check_violation";
    case "23502":
      return "not_null_violation";
    case "40001":
      return "serialization_failure";
    case "40P01":
      return "deadlock";
    case "57014":
      return "canceled";
    case "25006":
      return "read_only";
  }
  for (const e of walk(cause)) {
    if (e instanceof DbxError && e.kind !== "other") return e.kind;
    const name = (e as { name?: unknown }).name;
    if (name === "TimeoutError") return "timeout";
    if (name === "AbortError") return "canceled";
  }
  return isConnectionError(cause) ? "connection" : "other";
}

/**
 * Normalises any thrown value into a {@linkcode DbxError}: a DbxError is
 * returned as is; anything else is wrapped with its SQLSTATE and kind, the
 * original kept as `cause`.
 *
 * @param err Any thrown value.
 * @param node Name of the node it happened on, when known.
 * @returns A DbxError describing `err`.
 *
 * @example
 * ```ts
 * import { handleError } from "@codelab/dbx";
 *
 * const e = handleError(Object.assign(new Error("duplicate key"), { code: "23505", severity: "ERROR" }));
 * console.log(e.kind); // "unique_violation"
 * ```
 */
export function handleError(err: unknown, node?: string): DbxError {
  if (err instanceof DbxError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new DbxError(message, { cause: err, node });
}

/**
 * A driver's error message with what to do about it, where the driver's
 * words alone do not say: a SCRAM login without a password, a server whose
 * connection limit is reached (53300).
 *
 * @param err The driver's error.
 * @param message Its message (possibly already reworded).
 * @returns The message, with advice where there is some.
 */
export function withAdvice(err: unknown, message: string): string {
  if (message.includes("client password must be a string")) {
    return "password required: the server asks for a password (SCRAM) and the connection string has none";
  }
  if (pgErrorCode(err) === "53300") {
    // The server is up and full: the call is retried elsewhere or after a backoff.
    return `${message}: the server's connection limit is reached (max_connections, or the role's CONNECTION LIMIT); size pool.max and pipeline.connections per instance, or put PgBouncer in front (README: Running many instances)`;
  }
  return message;
}
