/**
 * Validation of `sendBatch` arguments, before anything is sent.
 *
 * @module
 */

import { checkCallOptions, describe } from "../call/validate.ts";
import type { BatchOptions } from "./batch.ts";

/**
 * Validates a batch before anything is sent. An empty batch is valid (it
 * resolves to `[]` without a round trip). Internal.
 *
 * @param queries The statements.
 * @throws {TypeError} naming the first bad entry (`queries[3].sql`, ...).
 * @throws {RangeError} for an entry whose `sql` is blank.
 */
export function checkBatch(queries: unknown): void {
  if (!Array.isArray(queries)) {
    throw new TypeError(
      `Cannot run sendBatch() as 'queries' must be an array: current value is ${describe(queries)}`,
    );
  }
  // An index loop, not forEach: holes of a sparse array must be reported too.
  for (let i = 0; i < queries.length; i++) {
    const q: unknown = queries[i];
    if (q === null || typeof q !== "object") {
      throw new TypeError(
        `Cannot run sendBatch() as 'queries[${i}]' must be an object with 'sql': current value is ${
          describe(q)
        }`,
      );
    }
    const { sql, args } = q as { sql?: unknown; args?: unknown };
    if (typeof sql !== "string") {
      throw new TypeError(
        `Cannot run sendBatch() as 'queries[${i}].sql' must be a string: current value is ${
          describe(sql)
        }`,
      );
    }
    if (sql.trim() === "") {
      throw new RangeError(`Cannot run sendBatch() as 'queries[${i}].sql' must not be empty`);
    }
    if (args !== undefined && !Array.isArray(args)) {
      throw new TypeError(
        `Cannot run sendBatch() as 'queries[${i}].args' must be an array: current value is ${
          describe(args)
        }`,
      );
    }
  }
}

/**
 * Validates a batch and its options. Internal.
 *
 * @param queries The statements.
 * @param options `atomic`, `signal`, `timeoutMs`.
 * @returns Whether the batch is atomic.
 * @throws {TypeError} or {RangeError} naming the bad argument.
 */
export function checkBatchOptions(queries: unknown, options: BatchOptions | undefined): boolean {
  checkBatch(queries);
  checkCallOptions("sendBatch", options);
  const atomic = options?.atomic ?? true;
  if (typeof atomic !== "boolean") {
    throw new TypeError(
      `Cannot run sendBatch() as 'options.atomic' must be a boolean: current value is ${
        describe(atomic)
      }`,
    );
  }
  return atomic;
}
