import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { chmod, lstat, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import process from "node:process";
import { promisify } from "node:util";
import { embeddedPgBinDir } from "../src/testing/embedded_pg.ts";
import { findPgBinaries, startLocalCluster } from "../src/testing/local_cluster.ts";
import { query } from "./pg_query.ts";

const execFileAsync = promisify(execFile);

const supported = process.platform === "linux" && process.arch === "x64";
const named = (name: string): string =>
  supported ? name : `${name} [ignored: the npm PostgreSQL binaries are for linux-x64 only]`;

/**
 * Hiding the system PostgreSQL needs a private mount namespace, so root and `unshare`;
 * elsewhere the fallback test is ignored (the others force the npm binaries instead).
 */
const canHideSystemPg = supported && await execFileAsync("unshare", ["--mount", "true"]).then(
  () => true,
  () => false,
);

async function waitFor(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((ok) => setTimeout(ok, 50));
  }
  throw new Error(`Timed out waiting until ${what}`);
}

async function ids(url: string): Promise<number[]> {
  const rows = await query<{ id: number }>(url, "select id from items order by id");
  return rows.map((row) => row.id);
}

async function exists(path: string): Promise<boolean> {
  return await stat(path).then(() => true, () => false);
}

/** The postmaster's pid, from the first line of its lock file. */
async function postmasterPid(dataDir: string): Promise<number> {
  const [line] = (await readFile(join(dataDir, "postmaster.pid"), "utf8")).split("\n");
  return Number(line);
}

async function withEnv<T>(
  name: string,
  value: string,
  fn: () => Promise<T>,
): Promise<T> {
  const saved = process.env[name];
  process.env[name] = value;
  try {
    return await fn();
  } finally {
    if (saved === undefined) delete process.env[name];
    else process.env[name] = saved;
  }
}

Deno.test("startLocalCluster() rejects an unknown 'binaries' or one next to 'binDir'", async () => {
  await assert.rejects(startLocalCluster({ binaries: "system" as "auto" }), {
    name: "TypeError",
    message: `Cannot start local cluster as 'binaries' must be "auto" or "embedded": ` +
      `current value is "system"`,
  });
  await assert.rejects(startLocalCluster({ binaries: "embedded", binDir: "/usr/bin" }), {
    name: "TypeError",
    message: `Cannot start local cluster as 'binaries' must be "auto" when 'binDir' is set: ` +
      `current value is "embedded"`,
  });
});

Deno.test({
  name: named("findPgBinaries() reports DBX_PG_BIN=embedded as the npm binaries, made runnable"),
  ignore: !supported,
  async fn() {
    const found = await withEnv("DBX_PG_BIN", "embedded", () => findPgBinaries());
    assert.ok(found !== undefined);
    assert.equal(found.source, "embedded");
    const binDir = found.binDir;
    assert.equal(binDir, await embeddedPgBinDir());
    assert.match(binDir, /\/dbx-embedded-pg-[\w.+-]+\/bin$/);
    for (const binary of ["initdb", "pg_ctl", "postgres"]) {
      const info = await stat(join(binDir, binary));
      assert.equal(info.mode & 0o755, 0o755, `${binary} is runnable by everyone`);
    }
    assert.equal(await exists(join(binDir, "pg_basebackup")), false);
    // What the package's postinstall would have linked: postgres needs these sonames.
    const lib = join(dirname(binDir), "lib");
    for (const soname of ["libicuuc.so.60", "libicui18n.so.60"]) {
      assert.ok((await lstat(join(lib, soname))).isSymbolicLink(), `${soname} is linked`);
      assert.ok((await stat(join(lib, soname))).isFile(), `${soname} resolves`);
    }
    const { stdout } = await execFileAsync(join(binDir, "postgres"), ["--version"]);
    assert.match(stdout, /^postgres \(PostgreSQL\) \d+\.\d+/);
    assert.equal((await stat(dirname(binDir))).mode & 0o022, 0, "the copy is closed to others");
  },
});

Deno.test({
  name: named("embeddedPgBinDir() refuses a copy under the temp dir that others can write"),
  ignore: !supported,
  async fn() {
    const copy = dirname(await embeddedPgBinDir());
    const scratch = await mkdtemp(join(tmpdir(), "dbx-emb-tmp-"));
    try {
      // Planted by "someone else": a ready-looking copy that anybody may change.
      const planted = join(scratch, basename(copy));
      await mkdir(planted);
      await writeFile(join(planted, ".ready"), "");
      await chmod(planted, 0o777);
      await withEnv("TMPDIR", scratch, async () => {
        assert.equal(tmpdir(), scratch);
        await assert.rejects(embeddedPgBinDir(), {
          message: `${planted} is not a directory owned by this user and closed to others; ` +
            "remove it or point TMPDIR elsewhere",
        });
      });
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  },
});

Deno.test({
  name: named("startLocalCluster() falls back to the npm binaries where no PostgreSQL is found") +
    (supported && !canHideSystemPg
      ? " [ignored: hiding the system PostgreSQL needs root and unshare --mount]"
      : ""),
  ignore: !canHideSystemPg,
  async fn() {
    const scratch = await mkdtemp(join(tmpdir(), "dbx-emb-child-"));
    try {
      const script = join(scratch, "child.ts");
      const localCluster = import.meta.resolve("../src/testing/local_cluster.ts");
      await writeFile(
        script,
        `import { findPgBinaries, startLocalCluster } from ${JSON.stringify(localCluster)};
const found = await findPgBinaries();
await using local = await startLocalCluster({ replicas: 1 });
console.log(JSON.stringify({ found, replicas: local.replicaUrls.length }));
`,
      );
      // In a private mount namespace: an empty /usr/lib/postgresql and a pg_config that
      // cannot run, as on a machine with Deno only.
      const hide = [
        "set -e",
        "if [ -d /usr/lib/postgresql ]; then mount -t tmpfs tmpfs /usr/lib/postgresql; fi",
        `p=$(command -v pg_config || true)`,
        `if [ -n "$p" ]; then mount --bind /dev/null "$p"; fi`,
        `exec "$@"`,
      ].join("\n");
      const env: Record<string, string> = {};
      for (const [key, value] of Object.entries(process.env)) {
        if (value !== undefined && key !== "DBX_PG_BIN") env[key] = value;
      }
      const output = await new Deno.Command("unshare", {
        args: [
          ...["--mount", "--propagation", "private", "--", "sh", "-c", hide, "sh"],
          ...[Deno.execPath(), "run", "--quiet"],
          // The permissions of `deno task test`: the npm path needs nothing more.
          ...["--allow-net", "--allow-env", "--allow-read", "--allow-write", "--allow-run"],
          ...["--config", new URL("../deno.json", import.meta.url).pathname, script],
        ],
        env,
        clearEnv: true,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(output.stderr);
      assert.equal(output.code, 0, stderr);
      const result = JSON.parse(new TextDecoder().decode(output.stdout).trim()) as {
        found?: { binDir: string; source: string };
        replicas: number;
      };
      assert.equal(result.found?.source, "embedded");
      assert.match(result.found.binDir, /\/dbx-embedded-pg-[\w.+-]+\/bin$/);
      assert.equal(result.replicas, 1);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  },
});

Deno.test({
  name: named("startLocalCluster({ binaries: 'embedded' }) runs a replicated cluster"),
  ignore: !supported,
  async fn(t) {
    const binDir = await embeddedPgBinDir();
    const password = `pw with 'quote', \\backslash and spaces`;
    // A DBX_PG_BIN that names no binaries stops the search; the option must not consult it.
    const empty = await mkdtemp(join(tmpdir(), "dbx-nobin-"));
    const local = await withEnv(
      "DBX_PG_BIN",
      empty,
      () => startLocalCluster({ replicas: 1, binaries: "embedded", password }),
    ).finally(() => rm(empty, { recursive: true, force: true }));
    try {
      const [primary, replica] = local.nodes;
      assert.ok(primary !== undefined && replica !== undefined);
      const primaryUrl = primary.url;
      const replicaUrl = replica.url;

      await t.step("runs the npm binaries, which lack pg_basebackup", async () => {
        assert.equal(await exists(join(binDir, "pg_basebackup")), false);
        for (const node of local.nodes) {
          // A subprocess: Deno reads /proc/<pid>/exe only with --allow-all.
          const pid = await postmasterPid(node.dataDir);
          const { stdout } = await execFileAsync("readlink", [`/proc/${pid}/exe`]);
          assert.equal(stdout.trim(), join(binDir, "postgres"), node.name);
        }
      });

      await t.step("streams to a replica cloned with pg_backup_start/stop", async () => {
        const senders = await query<{ application_name: string; state: string }>(
          primaryUrl,
          "select application_name, state from pg_stat_replication",
        );
        assert.deepEqual(senders, [{ application_name: "replica1", state: "streaming" }]);
        const [recovery] = await query<{ r: boolean }>(
          replicaUrl,
          "select pg_is_in_recovery() as r",
        );
        assert.equal(recovery?.r, true);
        // The clone's backup_label was consumed by recovery (renamed), and standby.signal kept.
        assert.ok(await exists(join(replica.dataDir, "backup_label.old")));
        assert.ok(await exists(join(replica.dataDir, "standby.signal")));
        assert.equal(await exists(join(replica.dataDir, "backup_label")), false);
      });

      await t.step("replicates a row written on the primary", async () => {
        await query(primaryUrl, "create table items (id int primary key)");
        await query(primaryUrl, "insert into items values (1)");
        await waitFor(
          "row 1 is on the replica",
          // Until the table itself has been replayed, the query fails.
          () => ids(replicaUrl).then((rows) => rows.includes(1), () => false),
        );
        await assert.rejects(query(replicaUrl, "insert into items values (2)"), {
          code: "25006", // read_only_sql_transaction
        });
      });

      await t.step("stop() and start() bring the replica back in sync", async () => {
        await local.stop("replica1");
        await assert.rejects(query(replicaUrl, "select 1"));
        await query(primaryUrl, "insert into items values (2)");
        await local.start("replica1");
        await waitFor("row 2 is on the replica", async () => (await ids(replicaUrl)).includes(2));
      });

      await t.step("kill() and promote() fail over to the replica", async () => {
        await local.kill("primary");
        await assert.rejects(query(primaryUrl, "select 1"));
        await local.promote("replica1");
        await query(replicaUrl, "insert into items values (3)");
        assert.deepEqual(await ids(replicaUrl), [1, 2, 3]);
      });

      await t.step("close() stops every server and removes the directory", async () => {
        const pid = await postmasterPid(replica.dataDir);
        await local.close();
        assert.equal(await exists(local.dir), false);
        await waitFor(`postmaster ${pid} has exited`, async () => !(await exists(`/proc/${pid}`)));
      });
    } finally {
      await local.close();
    }
  },
});
