/**
 * The defaults of the config's settings objects, as validation fills them in.
 *
 * @module
 */

import type { HealthCheckConfig, PoolConfig, RetryConfig, WithDefaults } from "./config.ts";

/**
 * Defaults of {@linkcode PoolConfig}.
 *
 * @example
 * ```ts
 * import { POOL_DEFAULTS } from "@codelab/dbx";
 *
 * console.log(POOL_DEFAULTS.max); // 10
 * ```
 */
export const POOL_DEFAULTS: Readonly<WithDefaults<PoolConfig>> = Object.freeze({
  max: 10,
  min: 0,
  idleTimeoutMs: 30_000,
  maxLifetimeMs: 3_600_000,
  connectTimeoutMs: 5_000,
});

/**
 * Defaults of {@linkcode HealthCheckConfig}.
 *
 * @example
 * ```ts
 * import { HEALTH_CHECK_DEFAULTS } from "@codelab/dbx";
 *
 * console.log(HEALTH_CHECK_DEFAULTS.intervalMs); // 2000
 * ```
 */
export const HEALTH_CHECK_DEFAULTS: Readonly<WithDefaults<HealthCheckConfig>> = Object.freeze({
  intervalMs: 2_000,
  timeoutMs: 1_000,
  failuresBeforeDown: 1,
});

/**
 * Defaults of the numeric {@linkcode RetryConfig} fields.
 *
 * @example
 * ```ts
 * import { RETRY_DEFAULTS } from "@codelab/dbx";
 *
 * console.log(RETRY_DEFAULTS.maxAttempts); // 3
 * ```
 */
export const RETRY_DEFAULTS: Readonly<WithDefaults<Omit<RetryConfig, "retryable">>> = Object.freeze(
  {
    maxAttempts: 3,
    baseDelayMs: 50,
    maxDelayMs: 1_000,
    waitForPrimaryMs: 5_000,
  },
);
