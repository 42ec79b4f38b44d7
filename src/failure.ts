/**
 * Failure classification: what a failed attempt means for its node, for a
 * re-send and for the caller, decided once per failure
 * ({@linkcode classify}), plus the public predicates built on the same
 * rules. They look through `cause` chains and `AggregateError`s, so they work
 * on raw driver errors, wrapped errors and retry summaries alike.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { isConnectionError, pgErrorCode, walk } from "./sqlstate.ts";

export { isConnectionError, pgErrorCode, walk };

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
 * failures and deadlocks, and writes that reached a
 * read-only node (25006), and connections a full server refused (53300). It says nothing about whether re-sending is *safe*:
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
  // 53300: too many connections, refused at connect time, before anything was sent.
  return code === "40001" || code === "40P01" || code === "25006" || code === "53300";
}

/** pg's error for a statement refused, before anything was written, on a dead client. */
const UNQUERYABLE = "Client has encountered a connection error and is not queryable";

/** Errors raised before a statement was handed to a connection: safe to re-send anywhere. */
const notSent = new WeakSet<object>();

/**
 * Marks `err` as raised before its statement could reach any server (pool
 * acquire, connect refused, startup rejected, refused by a dead client).
 *
 * @param err The error.
 * @returns `err`, for `throw markNotSent(err)`.
 */
export function markNotSent<E>(err: E): E {
  if (typeof err === "object" && err !== null) notSent.add(err);
  return err;
}

/** Writes whose connection was lost after they were sent: applied or not, nobody knows. */
const inDoubt = new WeakSet<object>();

/**
 * Marks `err` as a write whose outcome is unknown (sent, then the
 * connection was lost before the answer).
 *
 * @param err The error.
 * @returns `err`, for `throw markInDoubt(err)`.
 */
export function markInDoubt<E>(err: E): E {
  if (typeof err === "object" && err !== null) inDoubt.add(err);
  return err;
}

/**
 * Whether `err` is a write (or COMMIT) that reached the server before its
 * connection was lost: it may have been applied, and dbx did not re-send it.
 * Such writes are "in flight" when a primary dies; every other failed write
 * was certainly not applied. Reconcile in doubt writes by reading back (or
 * make them idempotent).
 *
 * @param err Any thrown value.
 * @returns `true` when the write's outcome is unknown.
 *
 * @example
 * ```ts
 * import { connect, mayHaveBeenApplied } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * try {
 *   await cluster.exec("insert into payments(id, amount) values ($1, $2)", ["p-1", 10]);
 * } catch (err) {
 *   if (mayHaveBeenApplied(err)) {
 *     const [row] = await cluster.query("select 1 from payments where id = $1", ["p-1"]);
 *     console.log(row ? "it was applied" : "it was not");
 *   }
 * }
 * ```
 */
export function mayHaveBeenApplied(err: unknown): boolean {
  for (const e of walk(err)) if (inDoubt.has(e)) return true;
  return false;
}

/** Errors about one connection that say nothing about its node's health. */
const nodeFine = new WeakSet<object>();

/**
 * Marks `err` as the loss of one connection that dbx closed on purpose (or a
 * busy pool): retried like a lost connection, but the node stays up.
 *
 * @param err The error.
 * @returns `err`.
 */
export function markNodeFine<E>(err: E): E {
  if (typeof err === "object" && err !== null) nodeFine.add(err);
  return err;
}

/**
 * Every connection of a node's pool stayed busy for `connectTimeoutMs`: the
 * statement was not sent and may go elsewhere, but the node is fine.
 */
export class PoolExhaustedError extends Error {
  /**
   * @param ms How long the caller waited.
   */
  constructor(ms: number) {
    // The message keeps pg-pool's wording, which callers already match on.
    super(`timeout exceeded when trying to connect (${ms} ms): every pooled connection is busy`);
    this.name = "PoolExhaustedError";
    markNodeFine(this);
  }
}

/**
 * What a failed attempt means, decided once by {@linkcode classify} and
 * read by every decision that follows (mark the node down, re-send, wrap).
 */
export interface Failure {
  /** The connection or the server went away: the node is marked down. */
  readonly connectionLost: boolean;
  /** The statement may have reached the server (false only when it provably did not). */
  readonly sent: boolean;
  /** The server refused a write as read-only (25006): it is not, or no longer, the primary. */
  readonly readOnly: boolean;
  /** 40001 or 40P01: the whole transaction may be run again. */
  readonly serialization: boolean;
  /** SQLSTATE, when the server sent one. */
  readonly code: string | undefined;
}

/**
 * Classifies a failed attempt.
 *
 * @param err What the attempt threw.
 * @returns The classification.
 */
export function classify(err: unknown): Failure {
  const code = pgErrorCode(err);
  return {
    connectionLost: !(typeof err === "object" && err !== null && nodeFine.has(err)) &&
      isConnectionError(err),
    sent: !(typeof err === "object" && err !== null &&
      (notSent.has(err) || (err as { message?: unknown }).message === UNQUERYABLE)),
    readOnly: code === "25006",
    serialization: code === "40001" || code === "40P01",
    code,
  };
}

/**
 * What a statement's failure becomes (`sendCached` in `node/statement_cache.ts`:
 * the error, named by its statement, or the answer of the statement sent
 * again): it returns the promise to settle with, or throws.
 */
export type Failed = (err: unknown) => Promise<pg.QueryResult>;

/**
 * Settles a statement's promise with its failure `err` as `.catch(failed)`
 * on it would (`failed` runs as a promise reaction, once the answer at hand
 * is handled), without one more promise for every statement that succeeds.
 *
 * @param err The failure.
 * @param failed What it becomes.
 * @param resolve The statement promise's resolve.
 */
export function settleFailed(
  err: unknown,
  failed: Failed,
  resolve: (value: Promise<pg.QueryResult>) => void,
): void {
  resolve(Promise.reject(err).catch(failed));
}
