/**
 * `deno task test`: runs the test suite against a database.
 *
 * - `DBX_TEST_MASTER_URL` set: runs the tests against that database as they are.
 * - else, local PostgreSQL binaries found: starts a throwaway primary plus two replicas,
 *   points the tests at it through `DBX_TEST_MASTER_URL` / `DBX_TEST_REPLICA_URLS`, and
 *   removes it afterwards, also on Ctrl-C or SIGTERM.
 * - else: warns that database tests will be reported as ignored and runs the rest.
 *
 * Arguments are passed on to `deno test`, e.g. `deno task test tests/retry_test.ts`.
 *
 * @module
 */

import { findPgBinDir, startLocalCluster } from "../src/testing/local_cluster.ts";

const PERMISSIONS = [
  "--allow-net",
  "--allow-env",
  "--allow-read",
  "--allow-write",
  "--allow-run",
];
const SIGNALS: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
const SIGNAL_EXIT_CODES: Partial<Record<Deno.Signal, number>> = { SIGINT: 130, SIGTERM: 143 };

/** Set by the signal handler; the running `deno test` child, if any, gets the signal too. */
let interrupted: Deno.Signal | undefined;
let child: Deno.ChildProcess | undefined;

function onSignal(signal: Deno.Signal): void {
  if (interrupted !== undefined) {
    // A second signal is the way out when cleanup itself hangs.
    console.error("Interrupted again: exiting without cleaning up the local cluster");
    Deno.exit(SIGNAL_EXIT_CODES[signal] ?? 1);
  }
  interrupted = signal;
  try {
    // On Ctrl-C the child already got SIGINT from the terminal; SIGTERM only reaches us.
    child?.kill(signal);
  } catch {
    // The child has already exited.
  }
}

/**
 * Prints one plain summary line from the JUnit report, e.g.
 * `dbx tests: 208 passed, 0 failed, 0 skipped`, so CI logs state the count
 * in a form any reader (or tool) understands.
 */
async function printSummary(junitPath: string): Promise<void> {
  let xml: string;
  try {
    xml = await Deno.readTextFile(junitPath);
  } catch {
    return;
  }
  const cases = [...xml.matchAll(/<testcase\b[\s\S]*?(?:\/>|<\/testcase>)/g)].map((m) => m[0]);
  const skipped = cases.filter((c) => /<skipped/.test(c)).length;
  const failed = cases.filter((c) => /<failure|<error/.test(c)).length;
  console.log(
    `dbx tests: ${cases.length - skipped - failed} passed, ${failed} failed, ${skipped} skipped`,
  );
}

async function runTests(env: Record<string, string>): Promise<number> {
  if (interrupted !== undefined) return SIGNAL_EXIT_CODES[interrupted] ?? 1;
  const junitPath = await Deno.makeTempFile({ prefix: "dbx-junit-", suffix: ".xml" });
  try {
    return await runDenoTest(env, junitPath);
  } finally {
    await printSummary(junitPath);
    await Deno.remove(junitPath).catch(() => {});
  }
}

async function runDenoTest(env: Record<string, string>, junitPath: string): Promise<number> {
  child = new Deno.Command(Deno.execPath(), {
    args: ["test", ...PERMISSIONS, `--junit-path=${junitPath}`, ...Deno.args],
    env,
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  const status = await child.status;
  child = undefined;
  if (interrupted !== undefined) return SIGNAL_EXIT_CODES[interrupted] ?? 1;
  return status.code;
}

async function main(): Promise<number> {
  if (Deno.env.get("DBX_TEST_MASTER_URL")) {
    return await runTests({});
  }
  const binDir = await findPgBinDir();
  if (binDir === undefined) {
    const reason = Deno.env.get("DBX_PG_BIN")
      ? `DBX_PG_BIN=${Deno.env.get("DBX_PG_BIN")} does not contain initdb, pg_ctl and postgres`
      : "no PostgreSQL binaries found (DBX_PG_BIN, pg_config --bindir, " +
        "/usr/lib/postgresql/<version>/bin)";
    console.warn(
      `%cWARNING: database tests will be IGNORED: DBX_TEST_MASTER_URL is unset and ${reason}. ` +
        "Install PostgreSQL, set DBX_PG_BIN, or set DBX_TEST_MASTER_URL.",
      "color: yellow; font-weight: bold",
    );
    return await runTests({});
  }

  console.log(`Starting a local PostgreSQL cluster (1 primary, 2 replicas) from ${binDir}`);
  const aborter = new AbortController();
  const abortOnSignal = (): void => aborter.abort(new Error(`Interrupted by ${interrupted}`));
  for (const signal of SIGNALS) Deno.addSignalListener(signal, abortOnSignal);
  try {
    await using cluster = await startLocalCluster({ replicas: 2, signal: aborter.signal });
    return await runTests({
      DBX_TEST_MASTER_URL: cluster.masterUrl,
      DBX_TEST_REPLICA_URLS: cluster.replicaUrls.join(","),
    });
  } catch (error) {
    if (interrupted === undefined) throw error;
    return SIGNAL_EXIT_CODES[interrupted] ?? 1;
  } finally {
    for (const signal of SIGNALS) Deno.removeSignalListener(signal, abortOnSignal);
  }
}

// Registered first, so that a signal at any point lets the cluster be disposed.
const handlers = SIGNALS.map((signal) => [signal, () => onSignal(signal)] as const);
for (const [signal, handler] of handlers) Deno.addSignalListener(signal, handler);
const code = await main().catch((error: unknown) => {
  console.error(error);
  return 1;
});
for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
Deno.exit(code);
