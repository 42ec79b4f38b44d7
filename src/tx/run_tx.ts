/**
 * `runTx`: opens a transaction (or, nested, a savepoint), binds it to the
 * async context for the callback, commits on return, rolls back on throw and
 * re-throws the original error; with `retries`, re-runs the whole callback
 * after a serialization failure or deadlock (40001 / 40P01), reported like
 * any retry. Also the options of `begin` and `runTx`.
 *
 * @module
 */

import { abortedError, failureOf } from "../call/attempt.ts";
import { withExecutor } from "../cluster/context.ts";
import { backoffDelay, delay } from "../call/retry.ts";
import { withCall } from "../call/signal.ts";
import type { Tx } from "../executor.ts";
import type { Savepoint, Transaction } from "./tx.ts";
import { checkCallOptions, describe } from "../call/validate.ts";

/**
 * Transaction isolation levels PostgreSQL implements.
 *
 * @example
 * ```ts
 * import type { IsolationLevel } from "@codelab/dbx";
 *
 * const level: IsolationLevel = "repeatable read";
 * ```
 */
export type IsolationLevel = "read committed" | "repeatable read" | "serializable";

/**
 * Characteristics of a transaction (`BEGIN ...`).
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * await using tx = await cluster.begin({ isolation: "serializable", readOnly: true, deferrable: true });
 * ```
 */
export interface TxOptions {
  /** Isolation level. @default the server's default_transaction_isolation (normally "read committed") */
  isolation?: IsolationLevel | undefined;
  /** `READ ONLY`: writes fail with 25006. @default false */
  readOnly?: boolean | undefined;
  /** `DEFERRABLE` (meaningful for serializable read-only transactions). @default false */
  deferrable?: boolean | undefined;
  /**
   * Cancels opening the transaction (`begin`), or the whole call (`runTx`:
   * a statement running when it aborts is cancelled on the server).
   * @default undefined
   */
  signal?: AbortSignal | undefined;
  /** Deadline in ms, with the same reach as `signal`. @default undefined */
  timeoutMs?: number | undefined;
}

/**
 * Options of `runTx`.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * await cluster.runTx((tx) => tx.exec("update counters set n = n + 1"), {
 *   isolation: "serializable",
 *   retries: 3,
 * });
 * ```
 */
export interface RunTxOptions extends TxOptions {
  /**
   * How many times to re-run the whole callback after a serialization
   * failure (40001) or deadlock (40P01). Nothing else is retried.
   * @default 0
   */
  retries?: number | undefined;
}

const ISOLATION: Readonly<Record<IsolationLevel, string>> = {
  "read committed": "read committed",
  "repeatable read": "repeatable read",
  serializable: "serializable",
};

/**
 * Builds the BEGIN statement for `options`, validating them.
 *
 * @param method The public method, for error messages.
 * @param options Transaction characteristics.
 * @returns The statement.
 * @throws {RangeError} for an unknown isolation level or non-boolean flags.
 */
export function beginStatement(method: string, options: TxOptions | undefined): string {
  if (options === undefined) return "begin";
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`Cannot run ${method}() as 'options' must be an object`);
  }
  checkCallOptions(method, options);
  let sql = "begin";
  const { isolation, readOnly, deferrable } = options;
  if (isolation !== undefined) {
    if (!Object.hasOwn(ISOLATION, isolation)) {
      throw new RangeError(
        `Cannot run ${method}() as 'options.isolation' must be one of ${
          Object.keys(ISOLATION).map((k) => `"${k}"`).join(", ")
        }: current value is ${describe(isolation)}`,
      );
    }
    sql += ` isolation level ${ISOLATION[isolation]}`;
  }
  for (const [field, value] of [["readOnly", readOnly], ["deferrable", deferrable]] as const) {
    if (value !== undefined && typeof value !== "boolean") {
      throw new TypeError(
        `Cannot run ${method}() as 'options.${field}' must be a boolean: current value is ${
          describe(value)
        }`,
      );
    }
  }
  if (readOnly !== undefined) sql += readOnly ? " read only" : " read write";
  if (deferrable !== undefined) sql += deferrable ? " deferrable" : " not deferrable";
  return sql;
}

/** Attaches a rollback failure to the error that caused the rollback, never replacing it. */
function attachRollbackError(err: unknown, rollbackErr: unknown): void {
  if (err instanceof Error && err.cause === undefined) {
    Object.defineProperty(err, "cause", { value: rollbackErr, configurable: true, writable: true });
  }
}

/** What `runTransaction` needs from the cluster. */
export interface TxOpener {
  /** Opens a top-level transaction whose statements cancel on `signal`. */
  open(options: TxOptions | undefined, signal: AbortSignal | undefined): Promise<Transaction>;
  /** Reports a callback about to be re-run (hook, stats, log). */
  retried(tx: Transaction, attempt: number, error: unknown): void;
  /** Backoff between re-runs. */
  readonly backoff: { readonly baseDelayMs: number; readonly maxDelayMs: number };
}

/** Characteristics a savepoint cannot have: a nested `runTx` refuses them. */
const TOP_LEVEL_ONLY = ["isolation", "readOnly", "deferrable"] as const;

/**
 * Validates `runTx`'s arguments (before anything is opened).
 *
 * @param fn The callback.
 * @param options The options.
 * @param nested Whether it will run as a savepoint.
 * @returns The number of re-runs allowed.
 */
function checkRunTx(fn: unknown, options: RunTxOptions | undefined, nested: boolean): number {
  if (typeof fn !== "function") {
    throw new TypeError(
      `Cannot run runTx() as 'fn' must be a function: current value is ${describe(fn)}`,
    );
  }
  beginStatement("runTx", options);
  const retries = options?.retries ?? 0;
  if (!Number.isInteger(retries) || retries < 0) {
    throw new RangeError(
      `Cannot run runTx() as 'options.retries' must be a non-negative integer: current value is ${
        describe(retries)
      }`,
    );
  }
  if (nested) {
    for (const field of TOP_LEVEL_ONLY) {
      if (options?.[field] !== undefined) {
        throw new TypeError(
          `Cannot run runTx() as 'options.${field}' cannot apply to a nested transaction (a savepoint of the enclosing one): current value is ${
            describe(options[field])
          }`,
        );
      }
    }
  }
  return retries;
}

/**
 * Runs `fn` in a transaction (a savepoint of `parent` when nested).
 *
 * @param opener Opens transactions and reports re-runs.
 * @param fn The callback; its `tx` is also bound to the async context.
 * @param options Characteristics, `retries`, `signal`, `timeoutMs`.
 * @param parent The enclosing transaction or savepoint of the same cluster.
 * @returns What `fn` returned, once committed.
 */
export function runTransaction<T>(
  opener: TxOpener,
  fn: (tx: Tx) => Promise<T>,
  options: RunTxOptions | undefined,
  parent: Transaction | Savepoint | undefined,
): Promise<T> {
  let retries: number;
  try {
    retries = checkRunTx(fn, options, parent !== undefined);
  } catch (err) {
    return Promise.reject(err);
  }
  return withCall(options, async (signal) => {
    for (let attempt = 1;; attempt++) {
      const tx = parent !== undefined
        ? await parent.root.savepoint()
        : await opener.open(options, signal);
      try {
        const result = await withExecutor(tx, () => fn(tx));
        if (signal?.aborted) throw abortedError(signal.reason);
        if (tx.active) await tx.commit();
        return result;
      } catch (err) {
        if (tx.active) {
          try {
            await tx.rollback();
          } catch (rollbackErr) {
            attachRollbackError(err, rollbackErr);
          }
        }
        // A savepoint cannot be re-run on its own: the serialization failure
        // aborted the enclosing transaction, whose runTx decides.
        if (parent !== undefined || attempt > retries || !failureOf(err).serialization) throw err;
        opener.retried(tx.root, attempt, err);
        try {
          await delay(backoffDelay(attempt, opener.backoff), signal);
        } catch (reason) {
          throw abortedError(reason, err);
        }
      }
    }
  });
}
