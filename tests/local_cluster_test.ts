import assert from "node:assert/strict";
import { stat } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { findPgBinDir, startLocalCluster } from "../src/testing/local_cluster.ts";
import { query } from "./pg_query.ts";

const binDir = await findPgBinDir();
const ignore = binDir === undefined;
/** Test names carry the reason they are ignored, so the report says why. */
const named = (name: string): string =>
  ignore ? `${name} [ignored: no PostgreSQL binaries; install PostgreSQL or set DBX_PG_BIN]` : name;

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

async function listen(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen({ port: 0, host: "127.0.0.1" }, ok));
  const address = server.address();
  assert.ok(address !== null && typeof address === "object");
  return { server, port: address.port };
}

async function closeServer(server: Server): Promise<void> {
  await new Promise<void>((ok) => server.close(() => ok()));
}

/** Whether `port` can be bound on loopback right now. */
async function bindable(port: number): Promise<boolean> {
  const server = createServer();
  const bound = await new Promise<boolean>((ok) => {
    server.once("error", () => ok(false));
    server.listen({ port, host: "127.0.0.1" }, () => ok(true));
  });
  if (bound) await closeServer(server);
  return bound;
}

/**
 * Runs `start` with a given base port (`basePort`, where a taken port is an error, not a
 * reason to move). The ports come from below the ephemeral range (32768–60999), so no
 * client socket is handed one of them between the check and the server's bind; when
 * another process still takes one, `start` is tried again on other ports.
 */
async function onGivenPorts<T>(
  count: number,
  start: (basePort: number) => Promise<T>,
): Promise<{ basePort: number; cluster: T }> {
  const seen: string[] = [];
  for (let attempt = 0; attempt < 5; attempt++) {
    const basePort = 20_000 + Math.floor(Math.random() * 12_000);
    const ports = Array.from({ length: count }, (_, i) => basePort + i);
    if (!(await Promise.all(ports.map(bindable))).every(Boolean)) {
      seen.push(`${basePort}: not free`);
      continue;
    }
    try {
      return { basePort, cluster: await start(basePort) };
    } catch (error) {
      if ((error as { portTaken?: unknown }).portTaken !== true) throw error;
      seen.push(`${basePort}: taken before the server bound it`);
    }
  }
  throw new Error(`No ${count} consecutive free ports found: ${seen.join("; ")}`);
}

function scratchDir(label: string): string {
  // Directly under the temp dir: when run as root the postgres user must reach it.
  return join(tmpdir(), `dbx-${label}-${crypto.randomUUID().slice(0, 8)}`);
}

Deno.test("startLocalCluster() rejects invalid options naming the field and value", async () => {
  const cases: [Parameters<typeof startLocalCluster>[0], string, string][] = [
    [{ replicas: -1 }, "RangeError", "'replicas' must be an integer >= 0: current value is -1"],
    [{ replicas: 1.5 }, "RangeError", "'replicas' must be an integer >= 0: current value is 1.5"],
    [{ replicas: NaN }, "RangeError", "'replicas' must be an integer >= 0: current value is NaN"],
    [
      { replicas: "2" as unknown as number },
      "TypeError",
      `'replicas' must be an integer >= 0: current value is "2"`,
    ],
    [
      { basePort: 0 },
      "RangeError",
      "'basePort' must be an integer from 1 to 65533: current value is 0",
    ],
    [
      { basePort: 65535 },
      "RangeError",
      "'basePort' must be an integer from 1 to 65533: current value is 65535",
    ],
    [{ dir: "" }, "TypeError", `'dir' must be a non-empty string: current value is ""`],
    [{ binDir: "" }, "TypeError", `'binDir' must be a non-empty string: current value is ""`],
    [
      { password: "" },
      "TypeError",
      "'password' must be a non-empty single-line string: current value is hidden",
    ],
  ];
  for (const [options, name, message] of cases) {
    await assert.rejects(startLocalCluster(options), {
      name,
      message: `Cannot start local cluster as ${message}`,
    });
  }
});

Deno.test("startLocalCluster() rejects a binDir without PostgreSQL binaries", async () => {
  const empty = await Deno.makeTempDir({ prefix: "dbx-nobin-" });
  try {
    await assert.rejects(
      startLocalCluster({ binDir: empty, replicas: 0 }),
      (error: Error) =>
        error.message.includes(`'binDir' ${empty}`) &&
        error.message.includes("initdb, pg_ctl, postgres"),
    );
  } finally {
    await Deno.remove(empty, { recursive: true });
  }
});

Deno.test("findPgBinDir() and startLocalCluster() stop at a wrong DBX_PG_BIN", async () => {
  const saved = process.env.DBX_PG_BIN;
  process.env.DBX_PG_BIN = "/nonexistent/dbx-test/bin";
  try {
    assert.equal(await findPgBinDir(), undefined);
    await assert.rejects(startLocalCluster({ replicas: 0 }), {
      message: "DBX_PG_BIN=/nonexistent/dbx-test/bin does not contain initdb, pg_ctl, postgres",
    });
  } finally {
    if (saved === undefined) delete process.env.DBX_PG_BIN;
    else process.env.DBX_PG_BIN = saved;
  }
});

Deno.test({
  name: named("startLocalCluster() runs a primary with a streaming replica"),
  ignore,
  async fn(t) {
    const cluster = await startLocalCluster({ replicas: 1 });
    const [primary, replica] = cluster.nodes;
    assert.ok(primary !== undefined && replica !== undefined);
    try {
      await t.step("describes its nodes and URLs", () => {
        assert.deepEqual(cluster.nodes.map((node) => node.name), ["primary", "replica1"]);
        assert.equal(cluster.masterUrl, `postgres://postgres@127.0.0.1:${primary.port}/postgres`);
        assert.deepEqual(cluster.replicaUrls, [replica.url]);
        assert.notEqual(primary.port, replica.port);
        assert.equal(primary.dataDir, join(cluster.dir, "primary"));
        assert.ok(cluster.dir.startsWith(join(tmpdir(), "dbx-cluster-")), cluster.dir);
      });

      await t.step("replicates a row inserted on the primary", async () => {
        await query(cluster.masterUrl, "create table items (id int primary key)");
        await query(cluster.masterUrl, "insert into items values (1)");
        await waitFor("row 1 is on the replica", async () => {
          return await query(replica.url, "select 1 from pg_class where relname = 'items'")
            .then(async (rows) => rows.length === 1 && (await ids(replica.url)).includes(1));
        });
      });

      await t.step("keeps the replica in recovery and read-only", async () => {
        const [row] = await query<{ r: boolean }>(replica.url, "select pg_is_in_recovery() as r");
        assert.equal(row?.r, true);
        await assert.rejects(query(replica.url, "insert into items values (99)"), {
          code: "25006", // read_only_sql_transaction
        });
      });

      await t.step("pauseReplay() holds back rows the replica received", async () => {
        await cluster.pauseReplay("replica1");
        await query(cluster.masterUrl, "insert into items values (2)");
        const [head] = await query<{ lsn: string }>(
          cluster.masterUrl,
          "select pg_current_wal_lsn()::text as lsn",
        );
        // Wait until the WAL holding row 2 is on the replica, so only the pause hides it.
        await waitFor("the replica received row 2", async () => {
          const [row] = await query<{ ok: boolean }>(
            replica.url,
            "select pg_last_wal_receive_lsn() >= $1::pg_lsn as ok",
            [head?.lsn],
          );
          return row?.ok === true;
        });
        assert.deepEqual(await ids(replica.url), [1]);

        await cluster.resumeReplay("replica1");
        await waitFor("row 2 is on the replica", async () => (await ids(replica.url)).includes(2));
      });

      await t.step("kill() stops a replica and start() brings it back in sync", async () => {
        await cluster.kill("replica1");
        await assert.rejects(query(replica.url, "select 1"), { code: "ECONNREFUSED" });
        await query(cluster.masterUrl, "insert into items values (3)");
        await cluster.start("replica1");
        await waitFor("row 3 is on the replica", async () => (await ids(replica.url)).includes(3));
      });

      await t.step("stop() and start() restart the primary cleanly", async () => {
        await cluster.stop("primary");
        await assert.rejects(query(cluster.masterUrl, "select 1"), { code: "ECONNREFUSED" });
        await cluster.start("primary");
        assert.deepEqual(await ids(cluster.masterUrl), [1, 2, 3]);
      });

      await t.step("rejects unknown node names, listing the valid ones", async () => {
        for (
          const call of [
            () => cluster.stop("replica9"),
            () => cluster.start("replica9"),
            () => cluster.kill("replica9"),
            () => cluster.promote("replica9"),
            () => cluster.pauseReplay("replica9"),
            () => cluster.resumeReplay("replica9"),
          ]
        ) {
          await assert.rejects(call(), {
            message: `Unknown node "replica9": expected one of "primary", "replica1"`,
          });
        }
      });

      await t.step("pauseReplay() on the primary names the node", async () => {
        await assert.rejects(cluster.pauseReplay("primary"), {
          message: `pg_wal_replay_pause() failed on node "primary": recovery is not in progress`,
        });
      });

      await t.step("promote() makes the replica writable", async () => {
        await cluster.kill("primary");
        await cluster.promote("replica1");
        const [row] = await query<{ r: boolean }>(replica.url, "select pg_is_in_recovery() as r");
        assert.equal(row?.r, false);
        await query(replica.url, "insert into items values (4)");
        assert.deepEqual(await ids(replica.url), [1, 2, 3, 4]);
      });

      await t.step("close() is idempotent and removes the directory", async () => {
        const first = cluster.close();
        assert.equal(cluster.close(), first);
        assert.equal(cluster[Symbol.asyncDispose](), first);
        await first;
        assert.equal(await exists(cluster.dir), false);
        await assert.rejects(query(replica.url, "select 1"), { code: "ECONNREFUSED" });
        await assert.rejects(cluster.start("primary"), /is closed/);
      });
    } finally {
      await cluster.close();
    }
  },
});

Deno.test({
  name: named("startLocalCluster() protects the postgres user with a password"),
  ignore,
  async fn() {
    const dir = scratchDir("password");
    const password = `s3cret 'quoted' \\ p@ss`;
    const { basePort, cluster } = await onGivenPorts(
      2,
      (basePort) => startLocalCluster({ replicas: 1, dir, basePort, password }),
    );
    try {
      assert.equal(cluster.dir, dir);
      assert.deepEqual(cluster.nodes.map((node) => node.port), [basePort, basePort + 1]);
      assert.equal(
        cluster.masterUrl,
        `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${basePort}/postgres`,
      );
      // Streaming started, so the replica's primary_conninfo carries the password.
      for (const url of [cluster.masterUrl, ...cluster.replicaUrls]) {
        const [row] = await query<{ user: string }>(url, "select current_user as user");
        assert.equal(row?.user, "postgres");
      }
      const wrong = `postgres://postgres:wrong@127.0.0.1:${basePort}/postgres`;
      await assert.rejects(query(wrong, "select 1"), { code: "28P01" }); // invalid_password
    } finally {
      await cluster.close();
    }
    assert.equal(await exists(dir), false);
  },
});

Deno.test({
  name: named("startLocalCluster() cleans up and shows the log when a server cannot start"),
  ignore,
  async fn() {
    const dir = scratchDir("busy-port");
    const { server, port } = await listen();
    try {
      await assert.rejects(
        startLocalCluster({ replicas: 0, dir, basePort: port }),
        (error: Error) =>
          error.message.startsWith(`Node "primary" failed to start`) &&
          error.message.includes("primary.log"),
      );
    } finally {
      await closeServer(server);
    }
    assert.equal(await exists(dir), false);
  },
});
