/**
 * What a thrown value says about the server and the connection, read from
 * its SQLSTATE, socket code or driver message, through `cause` chains and
 * the `errors` of aggregates. A leaf: dbx's own errors are recognised by
 * their `kind` field, so the error classes (`errors.ts`) and the failure
 * classification (`failure.ts`) both build on it without importing each other.
 *
 * @module
 */

/** A dbx error, recognised by shape: every DbxError has a string `kind`. */
function isDbxError(e: object): e is { kind: string; code: string | undefined } {
  return typeof (e as { kind?: unknown }).kind === "string" && "code" in e;
}

/**
 * SQLSTATEs that mean the connection (or the server) went away: class 08
 * except 08P01 (a protocol violation such as a bind message with the wrong
 * number of parameters is an ordinary statement error on a healthy
 * connection), and the shutdown codes of class 57P.
 */
const CONNECTION_CODES = new Set([
  "08000",
  "08001",
  "08003",
  "08004",
  "08006",
  "57P01",
  "57P02",
  "57P03",
]);

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
export function* walk(err: unknown): Generator<object> {
  const seen = new Set<unknown>();
  const stack: unknown[] = [err];
  while (stack.length > 0) {
    const e = stack.pop();
    if (e === null || typeof e !== "object" || seen.has(e)) continue;
    seen.add(e);
    yield e;
    const errors = (e as { errors?: unknown }).errors;
    const many = Array.isArray(errors) ? errors as unknown[] : undefined;
    if (many !== undefined) {
      for (let i = many.length - 1; i >= 0; i--) stack.push(many[i]);
      // A retry summary's cause is its last attempt's error, already among `errors`.
      if (isDbxError(e)) continue;
    }
    if ("cause" in e) stack.push(e.cause);
  }
}

/** The SQLSTATE of a server error object, if `e` is one (DbxError or pg's DatabaseError). */
function ownSqlState(e: object): string | undefined {
  if (isDbxError(e)) return e.code;
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
  if (isDbxError(e)) return e.kind === "connection";
  const code = ownSqlState(e);
  if (code !== undefined) return CONNECTION_CODES.has(code);
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
