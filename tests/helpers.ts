/** Shared helpers for tests that start real servers. */

import { findPgBinDir } from "../src/testing/mod.ts";

/** True when no PostgreSQL binaries are available: server tests are ignored. */
export const noPostgres: boolean = (await findPgBinDir()) === undefined;

/** The test name, with the reason it is ignored when it is. */
export function named(name: string): string {
  return noPostgres
    ? `${name} [ignored: no PostgreSQL binaries; install PostgreSQL or set DBX_PG_BIN]`
    : name;
}

/** Resolves after `ms`. */
export const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 20 ms until it holds, or throws after `ms`. */
export async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  ms = 15_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting until ${what}`);
}
