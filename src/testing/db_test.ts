/**
 * Test helpers that need a database. {@linkcode testCluster} connects to the
 * cluster named by `DBX_TEST_MASTER_URL` / `DBX_TEST_REPLICA_URLS`; without
 * those variables, to a local primary + replica started once per process from
 * the machine's PostgreSQL binaries. {@linkcode dbTest} registers a `Deno.test`
 * around it, reported as ignored (with the reason) only when there is neither.
 *
 * The shared local cluster, in Deno's test runner: every test file runs in a
 * fresh isolate of the same process, so module state cannot carry it from one
 * file to the next; the process environment can. The first file that needs it
 * starts it inside its first test (startup leaves no open resource or pending
 * op behind, so the sanitizers stay on) and records its URLs, with the
 * process id, in `DBX_TEST_SHARED_CLUSTER`; later files connect to it. No
 * `unload` handler can stop it, since `unload` fires after each file, and
 * async work started there never finishes; instead a small `sh` watchdog,
 * started with the cluster and detached from the test runner, waits for the
 * process to end (a normal exit, Ctrl-C, a crash or `kill -9` alike), then
 * stops the servers (SIGQUIT, as `pg_ctl stop -m immediate`) and removes the
 * cluster's directory, within about a second.
 *
 * @module
 */

import { execFile } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { promisify } from "node:util";
import type { Cluster } from "../cluster/cluster.ts";
import { connect } from "../cluster/connect.ts";
import type { ClusterConfig } from "../config/config.ts";
import { redactUrl } from "../config/redact.ts";
import { ConfigError } from "../errors.ts";
import { startLocalCluster } from "./local_cluster.ts";
import { pgBinariesUnavailable } from "./pg_binaries.ts";

const execFileAsync = promisify(execFile);

/** Replicas of the shared local cluster: one is enough to route reads to a server in recovery. */
const SHARED_REPLICAS = 1;
/** Carries the shared local cluster from one test file to the next in the same process. */
const SHARED_VAR = "DBX_TEST_SHARED_CLUSTER";

/** The test database's URLs. */
interface Urls {
  master: string;
  replicas: string[];
}

/**
 * The test database's URLs from `DBX_TEST_MASTER_URL` and `DBX_TEST_REPLICA_URLS`; not
 * those of the shared local cluster. Internal.
 *
 * @returns The URLs, or `undefined` when `DBX_TEST_MASTER_URL` is unset, blank or not
 * readable (Deno without `--allow-env`).
 */
export function testDatabaseUrls(): Urls | undefined {
  const master = readEnv("DBX_TEST_MASTER_URL");
  if (master === undefined || master.trim() === "") return undefined;
  const list = (readEnv("DBX_TEST_REPLICA_URLS") ?? "").split(",").map((s) => s.trim());
  return { master: master.trim(), replicas: list.filter((s) => s !== "") };
}

/**
 * Connects to the test database: the cluster named by `DBX_TEST_MASTER_URL` (primary)
 * and `DBX_TEST_REPLICA_URLS` (comma-separated replicas) when set; otherwise a local
 * primary + 1 replica started from the machine's PostgreSQL binaries on first use, shared
 * by every test of the process and stopped when the process ends.
 *
 * @param config Settings merged over the URLs.
 * @returns A connected cluster; close it when done (`await using` does).
 * @throws {ConfigError} When `config` is invalid.
 * @throws {Error} When the database cannot be used: the message names the URL (password
 * redacted) and the server's error with its code (`28P01` for a wrong password,
 * `ECONNREFUSED`, ...), the cause is the original error; or, with no variables, when
 * there are no PostgreSQL binaries or the local cluster fails to start.
 *
 * @example
 * ```ts
 * import { testCluster } from "@codelab/dbx/testing";
 *
 * await using cluster = await testCluster({ healthCheck: { intervalMs: 200 } });
 * console.log(await cluster.query("select 1 as one"));
 * ```
 */
export async function testCluster(config: Partial<ClusterConfig> = {}): Promise<Cluster> {
  const urls = await testDatabase();
  const origin = urls.shared
    ? "the shared local test cluster"
    : "the test database DBX_TEST_MASTER_URL";
  let cluster: Cluster;
  try {
    cluster = await connect({ master: urls.master, replicas: urls.replicas, ...config });
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    throw unusable(`${origin} (${redactUrl(urls.master)})`, error);
  }
  if (config.replicas === undefined) await assertReplicasUp(cluster, origin);
  return cluster;
}

/**
 * The URLs {@linkcode testCluster} connects to: those of `DBX_TEST_MASTER_URL` /
 * `DBX_TEST_REPLICA_URLS` when set, else those of the shared local cluster, started on
 * first use. Internal: for tests that need the URLs themselves.
 *
 * @returns The URLs, and whether they are the shared local cluster's.
 * @throws {Error} Without the variables, when there are no PostgreSQL binaries or the
 * local cluster fails to start.
 */
export async function testDatabase(): Promise<Urls & { shared: boolean }> {
  const env = testDatabaseUrls();
  if (env !== undefined) return { ...env, shared: false };
  return { ...await sharedLocalCluster(), shared: true };
}

/**
 * Options of {@linkcode dbTest}.
 *
 * @example
 * ```ts
 * import { dbTest } from "@codelab/dbx/testing";
 *
 * dbTest("slow queries are logged", async (cluster) => {
 *   await cluster.query("select pg_sleep(0.2)");
 * }, { config: { slowQueryThresholdMs: 100 } });
 * ```
 */
export interface DbTestOptions {
  /** Settings merged over the URLs of the test database. @default {} */
  config?: Partial<ClusterConfig> | undefined;
}

/**
 * Registers a `Deno.test` that gets a cluster from {@linkcode testCluster} and closes it
 * afterwards. It fails when the database named by `DBX_TEST_MASTER_URL` cannot be used
 * (with the server's error, e.g. `28P01`); without the variables it runs against the
 * shared local cluster; it is reported as ignored, with the reason in its name, only
 * when there are neither variables nor PostgreSQL binaries. The first test to run
 * starts the local cluster, which takes a few seconds.
 *
 * @param name Test name.
 * @param fn The test body: gets the cluster and the test context.
 * @param options Cluster settings for this test.
 * @returns Nothing: the test is registered with `Deno.test`.
 * @throws {Error} outside Deno (Bun, Node), which has no `Deno.test`: use
 * {@linkcode testCluster} with the runner's own test function there.
 *
 * @example
 * ```ts
 * import { dbTest } from "@codelab/dbx/testing";
 * import assert from "node:assert/strict";
 *
 * dbTest("select 1 answers", async (cluster) => {
 *   assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
 * });
 * ```
 */
export function dbTest(
  name: string,
  fn: (cluster: Cluster, t: Deno.TestContext) => Promise<void> | void,
  options: DbTestOptions = {},
): void {
  const register = denoTestRegistrar();
  const why = noDatabase();
  register({
    name: why === undefined ? name : `${name} (ignored: ${why})`,
    ignore: why !== undefined,
    async fn(t) {
      const cluster = await testCluster(options.config);
      try {
        await fn(cluster, t);
      } finally {
        await cluster.close();
      }
    },
  });
}

/**
 * Deno's `Deno.test`, for {@linkcode dbTest}: on another runtime (Bun, Node)
 * there is none, and the error says what to use there.
 *
 * @param global Where to look for `Deno`. @default globalThis
 * @returns A function that registers a test.
 * @throws {Error} when `global` has no `Deno.test`.
 */
export function denoTestRegistrar(
  global: object = globalThis,
): (definition: Deno.TestDefinition) => void {
  const deno = (global as { Deno?: { test?: unknown } }).Deno;
  const test = deno?.test;
  if (typeof test !== "function") {
    throw new Error(
      "dbTest() needs Deno's test runner (Deno.test), which this runtime does not have: " +
        "use testCluster() in your runner's own test function instead, e.g. " +
        "test(name, async () => { await using cluster = await testCluster(); ... })",
    );
  }
  return (definition) => test.call(deno, definition);
}

/** What {@linkcode noDatabase} decided for this test file. */
let decided: { why: string | undefined } | undefined;

/**
 * Why database tests cannot run here, or `undefined` when they can: decided once per test
 * file, when its first test is registered, without a connection and without loading the
 * npm binaries.
 */
function noDatabase(): string | undefined {
  decided ??= { why: undecided() };
  return decided.why;
}

function undecided(): string | undefined {
  if (testDatabaseUrls() !== undefined || sharedFromEnv() !== undefined) return undefined;
  const problem = pgBinariesUnavailable();
  return problem === undefined ? undefined : `no test database: ${noBinaries(problem)}`;
}

function noBinaries(problem: string): string {
  return `DBX_TEST_MASTER_URL is not set and a local cluster cannot start (${problem}); ` +
    "set DBX_TEST_MASTER_URL or install PostgreSQL";
}

/** This module instance's start of the shared cluster, so its tests wait for one start. */
let starting: Promise<Urls> | undefined;

function sharedLocalCluster(): Promise<Urls> {
  const shared = sharedFromEnv();
  if (shared !== undefined) return Promise.resolve(shared);
  starting ??= startShared();
  return starting;
}

async function startShared(): Promise<Urls> {
  const problem = pgBinariesUnavailable();
  if (problem !== undefined) throw new Error(`No test database: ${noBinaries(problem)}`);
  const dir = await mkdtemp(join(tmpdir(), "dbx-test-cluster-"));
  // Before the start, so that a Ctrl-C during it leaves nothing behind either.
  await stopAtExit(dir);
  const local = await startLocalCluster({ replicas: SHARED_REPLICAS, dir }).catch(
    (error: unknown) => {
      throw new Error(
        `Cannot start the shared local test cluster: ${(error as Error).message}`,
        { cause: error },
      );
    },
  );
  const urls = { master: local.masterUrl, replicas: [...local.replicaUrls] };
  try {
    process.env[SHARED_VAR] = JSON.stringify({ pid: process.pid, ...urls });
  } catch {
    // Deno without --allow-env: each test file starts its own (the watchdog stops them all).
  }
  return urls;
}

/** The shared local cluster started earlier by this process, if any. */
function sharedFromEnv(): Urls | undefined {
  const raw = readEnv(SHARED_VAR);
  if (raw === undefined) return undefined;
  try {
    const value = JSON.parse(raw) as { pid?: unknown; master?: unknown; replicas?: unknown };
    // A child process inherits the variable, not the cluster's lifetime: it starts its own.
    if (
      value.pid === process.pid && typeof value.master === "string" &&
      Array.isArray(value.replicas) && value.replicas.every((r) => typeof r === "string")
    ) {
      return { master: value.master, replicas: value.replicas as string[] };
    }
  } catch {
    // Not ours.
  }
  return undefined;
}

/**
 * Waits in the background, detached from this process (its output goes nowhere and it
 * ignores the terminal's signals), until this process is gone; then stops every server
 * whose data directory is in `dir` and removes `dir`.
 */
const WATCHDOG = `trap '' INT TERM HUP
while kill -0 "$1" 2>/dev/null; do sleep 1; done
pids=""
for f in "$2"/*/postmaster.pid; do
  [ -f "$f" ] || continue
  pid=$(head -n 1 "$f")
  case "$pid" in ""|*[!0-9]*) continue ;; esac
  kill -QUIT "$pid" 2>/dev/null && pids="$pids $pid"
done
for pid in $pids; do
  n=0
  while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
done
rm -rf "$2"`;

async function stopAtExit(dir: string): Promise<void> {
  // The outer shell returns at once, so no process or pipe of ours outlives the test.
  await execFileAsync("sh", [
    "-c",
    `sh -c "$0" dbx-test-cluster-watchdog "$@" </dev/null >/dev/null 2>&1 &`,
    WATCHDOG,
    String(process.pid),
    dir,
  ]);
}

/**
 * A replica of the test database that failed its first probe would silently send every
 * read to the primary: fail with its error instead.
 */
async function assertReplicasUp(cluster: Cluster, origin: string): Promise<void> {
  if (cluster.stats().nodes.every((node) => node.healthy)) return;
  // Probe again for the reason (the stats do not keep it).
  const down = (await cluster.health()).nodes.filter((node) => !node.healthy);
  if (down.length === 0) return;
  await cluster.close();
  const which = down.map((node) => `${node.name}: ${node.error ?? "down"}`).join("; ");
  throw new Error(
    `Cannot use ${origin}: ${down.length === 1 ? "a replica is" : "replicas are"} down (${which})`,
  );
}

/** The error of a test database that cannot be used, with the server's code up front. */
function unusable(what: string, error: unknown): Error {
  const code = errorCode(error);
  const message = error instanceof Error ? error.message : String(error);
  return new Error(
    `Cannot connect to ${what}: ${message}${code === undefined ? "" : ` [${code}]`}`,
    { cause: error },
  );
}

/** The first SQLSTATE or system error code (`28P01`, `ECONNREFUSED`) along the causes. */
function errorCode(error: unknown): string | undefined {
  let current = error;
  for (let depth = 0; depth < 10 && current instanceof Object; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string" && code !== "") return code;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

function readEnv(name: string): string | undefined {
  try {
    return process.env[name];
  } catch {
    // Deno without --allow-env: treat as unset.
    return undefined;
  }
}
