/**
 * Argument checks shared by every public entry: one way to show a bad value
 * (never a password, never a whole data set), the statement check every
 * statement method runs, and the check of call options (`signal`,
 * `timeoutMs`, `maxLagMs`, `consistentWith`).
 *
 * @module
 */

import { DbxError } from "../errors.ts";
import { sessionAdvice, sessionEffect } from "../node/session_state.ts";
import { parseLsn } from "./route.ts";

/** Most bind parameters one statement can carry (the protocol counts them in 16 bits). */
export const MAX_BIND_PARAMETERS = 65_535;

/** Longest string shown in an error. */
const SHOWN_CHARS = 60;

/**
 * Shows a value in an error message: short, typed, and with any
 * connection-string password redacted.
 *
 * @param value The bad value.
 * @param redact Redacts a connection string (injected: config.ts owns the rules).
 * @returns Text for "current value is ...".
 */
export function describe(value: unknown, redact?: (url: string) => string): string {
  if (value === null || value === undefined) return String(value);
  // Anything that could hold a connection string's password goes through `redact`.
  const hide = (s: string) =>
    redact !== undefined && /^[a-z][a-z0-9+.-]*:|\/\/|@/i.test(s) ? redact(s) : s;
  switch (typeof value) {
    case "string": {
      // A certificate or key pasted in the wrong place: not one character of it.
      if (/-----BEGIN [A-Z0-9 ]+-----/.test(value)) return `PEM text (${value.length} characters)`;
      const shown = hide(value);
      return JSON.stringify(
        shown.length > SHOWN_CHARS ? `${shown.slice(0, SHOWN_CHARS)}...` : shown,
      );
    }
    case "number":
    case "boolean":
      return String(value);
    case "bigint":
      return `${value}n`;
    case "function":
      return "a function";
    case "symbol":
      return "a symbol";
  }
  if (Array.isArray(value)) {
    // Items one level deep only: an object in a list (a NodeConfig with its
    // `ssl.key`, a `password` field) is named, never printed.
    const items = value.slice(0, 10).map((v) =>
      v !== null && typeof v === "object"
        ? Array.isArray(v) ? `an array of ${v.length}` : "an object"
        : describe(v, redact)
    );
    return `[${items.join(",")}${value.length > 10 ? `,...] (${value.length} items)` : "]"}`;
  }
  return `an object (${Object.prototype.toString.call(value)})`;
}

/** Longest `timeoutMs` a timer honours: a longer one would fire at once. */
const MAX_TIMEOUT_MS = 2_147_483_647;

/**
 * Checks the statement and arguments of a statement method.
 *
 * @param method Method name for the message.
 * @param sql Must be a string.
 * @param args Must be undefined or an array of at most 65 535 values.
 * @throws {TypeError} when `sql` is not a string or `args` not an array.
 * @throws {RangeError} when `args` has more values than the protocol can bind.
 */
export function checkStatement(method: string, sql: unknown, args: unknown): void {
  if (typeof sql !== "string") {
    throw new TypeError(
      `Cannot run ${method}() as 'sql' must be a string: current value is ${describe(sql)}`,
    );
  }
  if (args === undefined) return;
  if (!Array.isArray(args)) {
    throw new TypeError(
      `Cannot run ${method}() as 'args' must be an array: current value is ${describe(args)}`,
    );
  }
  if (args.length > MAX_BIND_PARAMETERS) {
    throw new RangeError(
      `Cannot run ${method}() as 'args' must hold at most ${MAX_BIND_PARAMETERS} values (the protocol's limit of bind parameters): current value has ${args.length}`,
    );
  }
}

/**
 * Refuses a statement that would change session state on a shared
 * connection (a pipe, or a pooled connection the next caller gets): other
 * callers would run under its settings, role, locks or temporary objects.
 *
 * @param method Method name for the message.
 * @param sql The statement text.
 * @throws {DbxError} (kind `other`) naming the statement and the right tool.
 */
export function checkShared(method: string, sql: string): void {
  if (sessionEffect(sql) === undefined) return;
  throw new DbxError(
    `Cannot run ${method}() with ${
      describe(sql.length > 80 ? `${sql.slice(0, 77)}...` : sql)
    } as it changes session state that other callers would see on a shared connection: ${
      sessionAdvice(sql)
    }`,
    { kind: "other" },
  );
}

/**
 * Checks the options of a call: `signal`, `timeoutMs` and, for reads,
 * `maxLagMs` and `consistentWith`.
 *
 * @param method Method name for the message.
 * @param options The options (undefined is fine).
 * @throws {TypeError} when `options` is not an object or `signal` not an AbortSignal.
 * @throws {RangeError} when a number or the token is out of range.
 */
export function checkCallOptions(method: string, options: unknown): void {
  if (options === undefined) return;
  if (typeof options !== "object" || options === null) {
    throw new TypeError(
      `Cannot run ${method}() as 'options' must be an object: current value is ${
        describe(options)
      }`,
    );
  }
  const { signal, timeoutMs, maxLagMs, consistentWith } = options as Record<string, unknown>;
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError(
      `Cannot run ${method}() as 'options.signal' must be an AbortSignal: current value is ${
        describe(signal)
      }`,
    );
  }
  for (const [field, value] of [["timeoutMs", timeoutMs], ["maxLagMs", maxLagMs]] as const) {
    if (
      value !== undefined &&
      (typeof value !== "number" || !Number.isFinite(value) || value < 0 ||
        (field === "timeoutMs" && value === 0))
    ) {
      throw new RangeError(
        `Cannot run ${method}() as 'options.${field}' must be a ${
          field === "timeoutMs" ? "positive" : "non-negative"
        } finite number: current value is ${describe(value)}`,
      );
    }
  }
  if (typeof timeoutMs === "number" && timeoutMs > MAX_TIMEOUT_MS) {
    throw new RangeError(
      `Cannot run ${method}() as 'options.timeoutMs' must be at most ${MAX_TIMEOUT_MS} ms (a longer timer would fire at once): current value is ${timeoutMs}`,
    );
  }
  if (
    consistentWith !== undefined &&
    (typeof consistentWith !== "string" || parseLsn(consistentWith) === undefined)
  ) {
    throw new RangeError(
      `Cannot run ${method}() as 'options.consistentWith' must be a token from writeToken() (two hex numbers of 1 to 8 digits, 'X/X'): current value is ${
        describe(consistentWith)
      }`,
    );
  }
}

/**
 * Checks a route option: `"primary"` (the write rules) or `"replica"` (the read rules).
 *
 * @param method Method name for the message.
 * @param field The option's name.
 * @param value Its value (undefined means `"primary"`).
 * @returns The route.
 * @throws {RangeError} naming the field and the value.
 */
export function checkRoute(method: string, field: string, value: unknown): "primary" | "replica" {
  if (value === undefined) return "primary";
  if (value === "primary" || value === "replica") return value;
  throw new RangeError(
    `Cannot ${method} as '${field}' must be "primary" or "replica": current value is ${
      describe(value)
    }`,
  );
}

/**
 * The checks of one statement call before anything is sent: its text,
 * arguments and options.
 *
 * @param method Method name for the message.
 * @param sql The statement text.
 * @param args Bind parameters.
 * @param options The call's options.
 * @throws {TypeError} / {RangeError} naming the bad argument.
 */
export function checkCall(method: string, sql: unknown, args: unknown, options: unknown): void {
  checkStatement(method, sql, args);
  checkCallOptions(method, options);
}
