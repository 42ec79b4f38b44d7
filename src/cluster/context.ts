/**
 * Context-bound executors (Go's InjectQuerier / ExtractQuerier): bind an
 * {@linkcode Executor} to the current async context so that code deep in a
 * call stack joins a transaction without it being passed around.
 *
 * @module
 */

import { AsyncLocalStorage } from "node:async_hooks";
import type { Executor } from "../executor.ts";

const storage = new AsyncLocalStorage<Executor>();

/**
 * Runs `fn` with `executor` bound to its async context (and everything it
 * awaits or starts). Bindings nest: the innermost wins.
 *
 * @param executor The executor to bind (typically a transaction).
 * @param fn The code to run.
 * @returns Whatever `fn` returns.
 *
 * @example
 * ```ts
 * import { currentExecutor, withExecutor, type Executor } from "@codelab/dbx";
 *
 * declare const tx: Executor;
 * declare const cluster: Executor;
 * await withExecutor(tx, async () => {
 *   console.log(currentExecutor(cluster) === tx); // true
 * });
 * ```
 */
export function withExecutor<T>(executor: Executor, fn: () => T): T {
  return storage.run(executor, fn);
}

/**
 * The executor bound by the innermost enclosing {@linkcode withExecutor}
 * (or `runTx`), else `fallback`.
 *
 * @param fallback What to return when nothing is bound.
 * @returns The bound executor or `fallback`.
 *
 * @example
 * ```ts
 * import { currentExecutor, type Executor } from "@codelab/dbx";
 *
 * declare const cluster: Executor;
 * const db = currentExecutor(cluster); // the cluster, outside any transaction
 * ```
 */
export function currentExecutor<E extends Executor>(fallback: E): Executor | E {
  return storage.getStore() ?? fallback;
}

/**
 * The executor bound to the current async context, if any. Internal.
 *
 * @returns The innermost bound executor, or `undefined`.
 */
export function boundExecutor(): Executor | undefined {
  return storage.getStore();
}
