/**
 * A recording {@linkcode Logger} for assertions in tests.
 *
 * @module
 */

import type { Logger } from "../observe/observe.ts";

/**
 * One recorded log call.
 *
 * @example
 * ```ts
 * import { testLogger, type LogEntry } from "@codelab/dbx/testing";
 *
 * const logger = testLogger();
 * logger.warn("dbx: node is down", { node: "db2:5432" });
 * const warnings: LogEntry[] = logger.entries.filter((e) => e.level === "warn");
 * ```
 */
export interface LogEntry {
  /** The method that was called. */
  readonly level: "debug" | "info" | "warn" | "error";
  /** The message. */
  readonly msg: string;
  /** The attributes (an empty object when none were passed). */
  readonly attrs: Record<string, unknown>;
}

/**
 * A {@linkcode Logger} that records every call in `entries`.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 * import { testLogger } from "@codelab/dbx/testing";
 *
 * const logger = testLogger();
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app", logger });
 * console.log(logger.entries.length);
 * ```
 */
export interface TestLogger extends Logger {
  /** Every call so far, oldest first. */
  readonly entries: LogEntry[];
}

/**
 * Creates a logger that records every call, for assertions.
 *
 * @returns A fresh recording logger.
 *
 * @example
 * ```ts
 * import { testLogger } from "@codelab/dbx/testing";
 *
 * const logger = testLogger();
 * logger.warn("dbx: slow query", { durationMs: 120 });
 * console.log(logger.entries[0]?.level); // "warn"
 * ```
 */
export function testLogger(): TestLogger {
  const entries: LogEntry[] = [];
  const record = (level: LogEntry["level"]) => (msg: string, attrs?: Record<string, unknown>) => {
    entries.push({ level, msg, attrs: attrs ?? {} });
  };
  return {
    entries,
    debug: record("debug"),
    info: record("info"),
    warn: record("warn"),
    error: record("error"),
  };
}
