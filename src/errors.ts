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
 * Thrown by every call made after `close()` has started.
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

/** SQLSTATEs that mean the connection (or the server) went away. */
const CONNECTION_CODES = new Set(["57P01", "57P02", "57P03", "53300"]);

/** Socket-level error codes that mean the peer was not reachable or went away. */
const SOCKET_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "EHOSTDOWN",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EADDRNOTAVAIL",
]);

/** Messages node-postgres uses for a dead or unreachable connection (they carry no code). */
const CONNECTION_MESSAGES = [
  "Connection terminated",
  "timeout exceeded when trying to connect",
  // pg's own connect timeout (Client connectionTimeoutMillis).
  "timeout expired",
  "Client has encountered a connection error",
  "Client was closed and is not queryable",
  "Connection closed",
];

const SQLSTATE = /^[0-9A-Z]{5}$/;

/** Visits `err`, its `cause` chain and the members of AggregateErrors, depth first. */
function* walk(err: unknown): Generator<object> {
  const seen = new Set<unknown>();
  const stack: unknown[] = [err];
  while (stack.length > 0) {
    const e = stack.pop();
    if (e === null || typeof e !== "object" || seen.has(e)) continue;
    seen.add(e);
    yield e;
    if (e instanceof RetryExhaustedError) {
      for (let i = e.errors.length - 1; i >= 0; i--) stack.push(e.errors[i]);
      continue;
    }
    if (e instanceof AggregateError) {
      for (let i = e.errors.length - 1; i >= 0; i--) stack.push(e.errors[i]);
    }
    if ("cause" in e) stack.push(e.cause);
  }
}

/** The SQLSTATE of a server error object, if `e` is one (DbxError or pg's DatabaseError). */
function ownSqlState(e: object): string | undefined {
  if (e instanceof DbxError) return e.code;
  const code = (e as { code?: unknown }).code;
  // pg's DatabaseError carries `severity`; socket errors also use 5-letter codes (EPIPE).
  if (typeof code === "string" && SQLSTATE.test(code) && "severity" in e) return code;
  return undefined;
}

/**
 * The SQLSTATE code carried by `err` or anything in its cause chain.
 *
 * @param err Any thrown value.
 * @returns The first SQLSTATE found, or `undefined`.
 *
 * @example
 * ```ts
 * import { pgErrorCode } from "@codelab/dbx";
 *
 * const err = new Error("wrapped", { cause: Object.assign(new Error("dup"), { code: "23505", severity: "ERROR" }) });
 * console.log(pgErrorCode(err)); // "23505"
 * ```
 */
export function pgErrorCode(err: unknown): string | undefined {
  for (const e of walk(err)) {
    const code = ownSqlState(e);
    if (code !== undefined) return code;
  }
  return undefined;
}

function isConnectionLike(e: object): boolean {
  if (e instanceof DbxError) return e.kind === "connection";
  const code = ownSqlState(e);
  if (code !== undefined) return code.startsWith("08") || CONNECTION_CODES.has(code);
  const sock = (e as { code?: unknown }).code;
  if (typeof sock === "string" && SOCKET_CODES.has(sock)) return true;
  const message = (e as { message?: unknown }).message;
  return typeof message === "string" && CONNECTION_MESSAGES.some((m) => message.startsWith(m));
}

/**
 * Whether `err` means a connection could not be made or was lost: socket
 * errors, node-postgres' "Connection terminated unexpectedly", SQLSTATE
 * class 08, and 57P01/57P02/57P03 (server shutting down or starting up).
 *
 * @param err Any thrown value.
 * @returns `true` when a connection failure is found anywhere in the chain.
 *
 * @example
 * ```ts
 * import { isConnectionError } from "@codelab/dbx";
 *
 * console.log(isConnectionError(new Error("Connection terminated unexpectedly"))); // true
 * ```
 */
export function isConnectionError(err: unknown): boolean {
  for (const e of walk(err)) if (isConnectionLike(e)) return true;
  return false;
}

/**
 * Whether `err` is a serialization failure (40001) or deadlock (40P01): the
 * transaction was rolled back and re-running it may succeed.
 *
 * @param err Any thrown value.
 * @returns `true` for SQLSTATE 40001 or 40P01.
 *
 * @example
 * ```ts
 * import { isSerializationFailure } from "@codelab/dbx";
 *
 * console.log(isSerializationFailure(Object.assign(new Error("x"), { code: "40001", severity: "ERROR" }))); // true
 * ```
 */
export function isSerializationFailure(err: unknown): boolean {
  const code = pgErrorCode(err);
  return code === "40001" || code === "40P01";
}

/**
 * Whether `err` is an integrity constraint violation (SQLSTATE class 23:
 * unique, foreign key, check, not null, exclusion).
 *
 * @param err Any thrown value.
 * @returns `true` for any 23xxx code.
 *
 * @example
 * ```ts
 * import { isConstraintViolation } from "@codelab/dbx";
 *
 * console.log(isConstraintViolation(Object.assign(new Error("x"), { code: "23505", severity: "ERROR" }))); // true
 * ```
 */
export function isConstraintViolation(err: unknown): boolean {
  return pgErrorCode(err)?.startsWith("23") ?? false;
}

/**
 * Whether the failure is transient, so that the same statement may succeed
 * when tried again (possibly elsewhere): connection failures, serialization
 * failures and deadlocks, too many connections, and writes that reached a
 * read-only node (25006). It says nothing about whether re-sending is *safe*:
 * the cluster re-sends a write only when it knows the write never reached a
 * server (see the retry contract in the README).
 *
 * @param err Any thrown value.
 * @returns `true` when trying again may succeed.
 *
 * @example
 * ```ts
 * import { isRetryable } from "@codelab/dbx";
 *
 * console.log(isRetryable(Object.assign(new Error("x"), { code: "ECONNREFUSED" }))); // true
 * ```
 */
export function isRetryable(err: unknown): boolean {
  if (isConnectionError(err)) return true;
  const code = pgErrorCode(err);
  return code === "40001" || code === "40P01" || code === "25006";
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
