/**
 * The checks every level of a config uses: one way to reject a value (a
 * {@linkcode ConfigError} naming the field and showing the value redacted),
 * numbers, flags, objects, hooks and pool settings.
 *
 * @module
 */

import type { PoolConfig, WithDefaults } from "./config.ts";
import { redactUrl } from "./redact.ts";
import { KNOWN, onlyKnownKeys } from "./keys.ts";
import { ConfigError } from "../errors.ts";
import { describe } from "../call/validate.ts";

/** Rejects `value` of `field`: `Cannot connect: '<field>' <rule>: current value is <value>`. */
export function fail(field: string, rule: string, value: unknown): never {
  throw new ConfigError(
    field,
    `Cannot connect: '${field}' ${rule}: current value is ${describe(value, redactUrl)}`,
  );
}

export function flag(field: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") fail(field, "must be a boolean", value);
  return value as boolean;
}

/** Longest timer a runtime honours: a longer one fires at once (Node's and Deno's timers are 32-bit). */
export const MAX_TIMER_MS = 2_147_483_647;

export function duration(
  field: string,
  value: unknown,
  fallback: number,
  positive = false,
): number {
  if (value === undefined) return fallback;
  if (
    typeof value !== "number" || !Number.isFinite(value) || value < 0 || (positive && value === 0)
  ) {
    fail(field, `must be a ${positive ? "positive" : "non-negative"} finite number of ms`, value);
  }
  if (value > MAX_TIMER_MS) {
    fail(
      field,
      `must be at most ${MAX_TIMER_MS} ms (about 24.8 days; a longer timer would fire at once)`,
      value,
    );
  }
  return value;
}

export function integer(field: string, value: unknown, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min) {
    fail(
      field,
      min === 0 ? "must be a non-negative integer" : `must be an integer >= ${min}`,
      value,
    );
  }
  return value;
}

export function plainObject(field: string, value: unknown): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    fail(field, "must be an object", value);
  }
  return value as Record<string, unknown>;
}

export function resolvePool(
  field: string,
  raw: unknown,
  base: WithDefaults<PoolConfig>,
): WithDefaults<PoolConfig> {
  const p = plainObject(field, raw);
  onlyKnownKeys(field, p, KNOWN.pool);
  const max = integer(`${field}.max`, p.max, base.max, 1);
  const min = integer(`${field}.min`, p.min, base.min, 0);
  if (min > max) fail(`${field}.min`, `must not exceed '${field}.max' (${max})`, min);
  return {
    max,
    min,
    idleTimeoutMs: duration(`${field}.idleTimeoutMs`, p.idleTimeoutMs, base.idleTimeoutMs),
    maxLifetimeMs: duration(`${field}.maxLifetimeMs`, p.maxLifetimeMs, base.maxLifetimeMs),
    connectTimeoutMs: duration(
      `${field}.connectTimeoutMs`,
      p.connectTimeoutMs,
      base.connectTimeoutMs,
      true,
    ),
  };
}

export function checkMethods(field: string, value: unknown, methods: readonly string[]): void {
  const obj = plainObjectOrInstance(field, value);
  for (const m of methods) {
    if (typeof obj[m] !== "function") fail(`${field}.${m}`, "must be a function", obj[m]);
  }
}

export function plainObjectOrInstance(field: string, value: unknown): Record<string, unknown> {
  if (value === null || (typeof value !== "object" && typeof value !== "function")) {
    fail(field, "must be an object", value);
  }
  return value as Record<string, unknown>;
}

export function checkTracer(field: string, value: unknown): void {
  checkMethods(field, value, ["queryStart", "queryEnd"]);
}
