/**
 * Lifecycle and health contracts for service frameworks (the Executor
 * design's Client and Component): code that only runs statements depends on
 * `Executor`, code that also opens transactions on `Client`, and a service
 * launcher or health endpoint on `Component`. `Cluster` implements all three.
 *
 * @module
 */

import type { HealthReport } from "./stats.ts";
import type { DbxError } from "../errors.ts";
import type { Executor } from "../executor.ts";
import type { Tx } from "../executor.ts";
import type { TxOptions } from "../tx/run_tx.ts";

/**
 * An {@linkcode Executor} that can also open transactions, report
 * reachability and normalise errors.
 *
 * @example A service that depends only on Client
 * ```ts
 * import type { Client } from "@codelab/dbx";
 *
 * async function transfer(db: Client, from: number, to: number, amount: number): Promise<void> {
 *   await using tx = await db.begin({ isolation: "serializable" });
 *   await tx.exec("update accounts set balance = balance - $1 where id = $2", [amount, from]);
 *   await tx.exec("update accounts set balance = balance + $1 where id = $2", [amount, to]);
 *   await tx.commit();
 * }
 * ```
 */
export interface Client extends Executor {
  /**
   * The executor bound to the current async context, else the client itself.
   *
   * @returns The bound transaction or the client.
   */
  getExecutor(): Executor;
  /**
   * Opens a transaction.
   *
   * @param options Isolation level, read-only, deferrable.
   * @returns The open transaction.
   */
  begin(options?: TxOptions): Promise<Tx>;
  /**
   * Checks that every server answers.
   *
   * @returns Resolves when all answered.
   */
  ping(): Promise<void>;
  /**
   * Normalises any error into a {@linkcode DbxError}.
   *
   * @param err Any thrown value.
   * @returns The normalised error.
   */
  handleError(err: unknown): DbxError;
}

/**
 * A {@linkcode Client} with a lifecycle and a health report, for service
 * launchers and readiness endpoints.
 *
 * @example Manage the cluster from a launcher
 * ```ts
 * import { Cluster, type Component } from "@codelab/dbx";
 *
 * const db: Component = new Cluster({ master: "postgres://app@db1:5432/app" });
 * await db.start();
 * console.log((await db.health()).writable);
 * await db.stop();
 * ```
 */
export interface Component extends Client {
  /**
   * Connects and starts background work.
   *
   * @returns Resolves when ready.
   */
  start(): Promise<void>;
  /**
   * Stops background work and closes connections.
   *
   * @returns Resolves when stopped.
   */
  stop(): Promise<void>;
  /**
   * Probes every server now.
   *
   * @returns The health report.
   */
  health(): Promise<HealthReport>;
}
