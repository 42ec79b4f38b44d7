/**
 * What the ORM suite runners share: running a command, the version of an npm
 * package `deno.lock` resolves, installing a checkout's test dependencies
 * (npm, no install scripts), and a throwaway local cluster with a role and a
 * database of the suite's own.
 *
 * @module
 */

import { join } from "node:path";
// @ts-types="@types/pg"
import pg from "pg";
import type { LocalCluster, LocalClusterOptions } from "../../src/testing/local_cluster.ts";

/**
 * Runs a command with inherited output.
 *
 * @param cmd The program.
 * @param args Its arguments.
 * @param cwd Where.
 * @param options Extra environment; `allowFail` keeps a non-zero exit from throwing.
 * @returns The exit code.
 */
export async function run(
  cmd: string,
  args: string[],
  cwd: string,
  options: { env?: Record<string, string>; allowFail?: boolean } = {},
): Promise<number> {
  const { code } = await new Deno.Command(cmd, {
    args,
    cwd,
    env: options.env ?? {},
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (code !== 0 && !options.allowFail) {
    throw new Error(`${cmd} ${args.join(" ")} exited with ${code}`);
  }
  return code;
}

/**
 * The version of an npm package that dbx's `deno.lock` resolves.
 *
 * @param name The package.
 * @returns Its version, e.g. `0.29.9`.
 */
export async function lockedVersion(name: string): Promise<string> {
  const lock = JSON.parse(
    await Deno.readTextFile(new URL("../../deno.lock", import.meta.url)),
  ) as { specifiers: Record<string, string> };
  for (const [specifier, resolved] of Object.entries(lock.specifiers)) {
    if (specifier.startsWith(`npm:${name}@`)) return resolved.split("_")[0]!;
  }
  throw new Error(`deno.lock resolves no npm:${name}`);
}

/** How {@linkcode prepareCheckout} sets a checkout up. */
export interface CheckoutPlan {
  /** Dependencies (dev or not) of the checkout's package.json to install (the rest are dropped). */
  deps: readonly string[];
  /** More packages to install, name → version. */
  extraDeps?: Record<string, string>;
  /** An npm release whose files replace a folder of the checkout (the library under test). */
  library?: { name: string; version: string; into: string };
}

/**
 * Installs a checkout's test dependencies with npm (install scripts off),
 * once: a marker file remembers the plan it was prepared with.
 *
 * @param dir The checkout.
 * @param plan What to install.
 */
export async function prepareCheckout(dir: string, plan: CheckoutPlan): Promise<void> {
  const marker = join(dir, ".dbx-suite-prepared");
  const wanted = JSON.stringify(plan);
  if (await Deno.readTextFile(marker).catch(() => "") === wanted) return;
  const packagePath = join(dir, "package.json");
  const original = join(dir, "package.json.orig");
  const text = await Deno.readTextFile(original).catch(() => Deno.readTextFile(packagePath));
  await Deno.writeTextFile(original, text);
  const manifest = JSON.parse(text) as {
    devDependencies?: Record<string, string>;
    dependencies?: Record<string, string>;
    scripts?: Record<string, string>;
  };
  const devDependencies: Record<string, string> = { ...plan.extraDeps };
  for (const dep of plan.deps) {
    const version = manifest.devDependencies?.[dep] ?? manifest.dependencies?.[dep];
    if (version !== undefined) devDependencies[dep] = version;
  }
  manifest.devDependencies = devDependencies;
  delete manifest.dependencies;
  delete manifest.scripts;
  await Deno.writeTextFile(packagePath, JSON.stringify(manifest, null, 2));
  await run("npm", ["install", "--ignore-scripts", "--no-audit", "--no-fund"], dir);
  if (plan.library !== undefined) {
    const { name, version, into } = plan.library;
    const tmp = await Deno.makeTempDir({ prefix: "dbx-suite-" });
    try {
      await run("npm", ["pack", `${name}@${version}`, "--pack-destination", tmp], tmp);
      const tarball = [...Deno.readDirSync(tmp)].find((e) => e.name.endsWith(".tgz"))!.name;
      await run("tar", ["-xzf", tarball], tmp);
      await Deno.remove(join(dir, into), { recursive: true }).catch(() => {});
      await run("cp", ["-r", join(tmp, "package", into), join(dir, into)], dir);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  }
  await Deno.writeTextFile(marker, wanted);
}

/** Where a suite finds its database. */
export interface SuiteUrls {
  /** The primary's port. */
  port: number;
  /** The suite's role and database on the primary. */
  master: string;
  /** The same on each replica. */
  replicas: string[];
}

function withRole(url: string, user: string, database: string): string {
  const u = new URL(url);
  u.username = user;
  u.password = user;
  u.pathname = `/${database}`;
  return u.href;
}

/**
 * Starts a local cluster (a primary, two replicas), creates a superuser
 * `user` (password `user`) and a database it owns, waits until the replicas
 * have them, runs `fn`, and removes the cluster.
 *
 * @param start `startLocalCluster`.
 * @param user Role name (and its password).
 * @param database Database name.
 * @param fn What to run against it.
 */
export async function withLocalCluster(
  start: (options: LocalClusterOptions) => Promise<LocalCluster>,
  user: string,
  database: string,
  fn: (urls: SuiteUrls) => Promise<void>,
): Promise<void> {
  await using local = await start({ replicas: 2 });
  const admin = new pg.Client({ connectionString: local.masterUrl });
  await admin.connect();
  try {
    await admin.query(`create role ${user} superuser login password '${user}'`);
    await admin.query(`create database ${database} owner ${user}`);
  } finally {
    await admin.end();
  }
  for (const url of local.replicaUrls) {
    // Replay brings the role and the database: wait for them.
    for (let i = 0;; i++) {
      const client = new pg.Client({ connectionString: withRole(url, user, database) });
      const ok = await client.connect().then(() => true, () => false);
      await client.end().catch(() => {});
      if (ok) break;
      if (i === 100) throw new Error(`replica ${url} never got ${database}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  const port = Number(new URL(local.masterUrl).port);
  await fn({
    port,
    master: withRole(local.masterUrl, user, database),
    replicas: local.replicaUrls.map((u) => withRole(u, user, database)),
  });
}
