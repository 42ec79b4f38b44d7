/** Shared helpers for tests that start real servers. */

import assert from "node:assert/strict";
import { type Cluster, type ClusterConfig, ConfigError, resolveConfig } from "../mod.ts";
import { pgBinariesUnavailable } from "../src/testing/pg_binaries.ts";

/**
 * Why no PostgreSQL binaries can be had, or undefined. Synchronous and local (a few `stat`
 * calls and `pg_config --bindir`): importing this module loads nothing from npm. On
 * linux-x64 the npm binaries count as available; they are fetched on first use.
 */
const unavailable = pgBinariesUnavailable();

/** True when no PostgreSQL binaries are available: server tests are ignored. */
export const noPostgres: boolean = unavailable !== undefined;

/** The test name, with the reason it is ignored when it is. */
export function named(name: string): string {
  return unavailable === undefined
    ? name
    : `${name} [ignored: ${unavailable}; install PostgreSQL or set DBX_PG_BIN]`;
}

/** Resolves after `ms`. */
export const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 20 ms until it holds, or throws after `ms`. */
export async function until(
  what: string | (() => string),
  check: () => boolean | Promise<boolean>,
  ms = 15_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting until ${typeof what === "function" ? what() : what}`);
}

/** Waits for `promise`, or throws naming `what` after `ms` (a hang becomes a failure). */
export async function within<T>(what: string, promise: Promise<T>, ms = 30_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting until ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Readers looping on `read`, counting reads and failures. */
export function readLoop(read: () => Promise<unknown>, n = 4): {
  readonly reads: number;
  readonly failures: unknown[];
  stop(): Promise<void>;
} {
  let running = true;
  let reads = 0;
  const failures: unknown[] = [];
  const loops = Array.from({ length: n }, async () => {
    while (running) {
      try {
        await read();
        reads++;
      } catch (err) {
        failures.push(err);
      }
    }
  });
  return {
    get reads() {
      return reads;
    },
    failures,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

/** The ConfigError that resolving `config` throws (fails the test when it does not throw). */
export function configError(config: unknown): ConfigError {
  try {
    resolveConfig(config as ClusterConfig);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${err}`);
    return err;
  }
  return assert.fail(`resolveConfig(${JSON.stringify(config)}) did not throw`);
}

/** Names of the replica nodes, config order. */
export function replicaNames(cluster: Cluster): string[] {
  return cluster.stats().nodes.filter((n) => n.role === "replica").map((n) => n.name);
}

/** Runs `fn` with replay paused on the named replicas; resumes them whatever happens. */
export async function withPausedReplay<T>(
  cluster: Cluster,
  names: readonly string[],
  fn: () => Promise<T>,
): Promise<T> {
  for (const name of names) await cluster.node(name).exec("select pg_wal_replay_pause()");
  try {
    return await fn();
  } finally {
    for (const name of names) await cluster.node(name).exec("select pg_wal_replay_resume()");
  }
}
