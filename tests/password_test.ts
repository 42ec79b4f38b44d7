/**
 * `password` on a cluster and on a node: a string or a function asked for
 * every new connection (pool, pipes, probes, LISTEN), which wins over the
 * URL's password, is never printed, and whose failure fails that connection
 * naming the node. Validation is pure; the rest runs against a SCRAM cluster.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { Cluster, type ClusterConfig, connect, DbxError, resolveConfig } from "../mod.ts";
import { startLocalCluster, testLogger } from "../src/testing/mod.ts";
import { configError, named, noPostgres, readLoop, until } from "./helpers.ts";

const MASTER = "postgres://app@db1:5432/app";
const REPLICA = "postgres://app@db2:5432/app";
const SECRET = "Tr0ub4dor-S3cret";

/** Asserts that neither the message nor the stack of `err` holds `secret`. */
function assertHides(err: Error, secret: string): void {
  assert.ok(!err.message.includes(secret), `${secret} in: ${err.message}`);
  assert.ok(!String(err.stack).includes(secret), `${secret} in the stack`);
}

/** A URL with `password` as its password. */
function withPassword(url: string, password: string): string {
  const u = new URL(url);
  u.password = password;
  return u.href;
}

/** A URL without its password. */
function withoutPassword(url: string): string {
  return withPassword(url, "");
}

// --- validation (pure) --------------------------------------------------------------

const bad: { what: string; config: unknown; field: string; shown: RegExp }[] = [
  {
    what: "a cluster password that is a number",
    config: { master: MASTER, password: 31415926 },
    field: "password",
    shown: /current value is a number/,
  },
  {
    what: "a node password that is an object",
    config: { master: MASTER, replicas: [{ url: REPLICA, password: { value: SECRET } }] },
    field: "replicas[0].password",
    shown: /current value is an object/,
  },
  {
    what: "a node password that is null",
    config: { nodes: [MASTER, { url: REPLICA, password: null }] },
    field: "nodes[1].password",
    shown: /current value is null/,
  },
  {
    what: "a master password that is an array holding the secret",
    config: { master: { url: MASTER, password: [SECRET] } },
    field: "master.password",
    shown: /current value is an array/,
  },
];

for (const { what, config, field, shown } of bad) {
  Deno.test(`connect() refuses ${what}, naming '${field}' and not showing the value`, () => {
    const err = configError(config);
    assert.equal(err.field, field);
    assert.match(
      err.message,
      new RegExp(`'${field.replace(/[[\]]/g, "\\$&")}' must be a string or a function`),
    );
    assert.match(err.message, shown);
    assertHides(err, SECRET);
    assertHides(err, "31415926");
  });
}

Deno.test("connect() suggests 'password' for a misspelt password setting, without showing its value", () => {
  for (
    const [config, field] of [
      [{ master: MASTER, pasword: SECRET }, "password"],
      [{ master: MASTER, replicas: [{ url: REPLICA, passwrd: SECRET }] }, "replicas[0].password"],
    ] as const
  ) {
    const err = configError(config);
    assert.match(err.message, new RegExp(`did you mean '${field.replace(/[[\]]/g, "\\$&")}'\\?`));
    assertHides(err, SECRET);
  }
});

Deno.test("resolveConfig() gives each node its own password, else the cluster's, and never asks for it", () => {
  let asked = 0;
  const fromVault = () => {
    asked++;
    return `${SECRET}-from-vault`;
  };
  const { nodes } = resolveConfig({
    master: { url: MASTER, password: SECRET },
    replicas: [REPLICA, { url: "postgres://app:in-url@db3:5432/app", password: undefined }],
    password: fromVault,
  });
  assert.equal(nodes[0]!.password, SECRET, "the node's own password wins");
  assert.equal(nodes[1]!.password, fromVault, "else the cluster's");
  assert.equal(nodes[2]!.password, fromVault, "the config's password wins over the URL's");
  assert.equal(asked, 0, "resolving the config asks for no password");
  assert.equal(resolveConfig({ master: MASTER }).nodes[0]!.password, undefined);
});

Deno.test("a password never shows when a resolved config or a cluster is printed", () => {
  const config: ClusterConfig = {
    master: { url: MASTER, password: SECRET },
    replicas: [REPLICA],
    password: () => `${SECRET}-from-vault`,
  };
  const resolved = resolveConfig(config);
  for (const shown of [JSON.stringify(resolved), Deno.inspect(resolved, { depth: 20 })]) {
    assert.ok(!shown.includes(SECRET), shown);
  }
  const cluster = new Cluster(config);
  const inspected = Deno.inspect(cluster, { depth: 20 });
  assert.ok(!inspected.includes(SECRET), inspected);
  assert.ok(!JSON.stringify(cluster.stats()).includes(SECRET));
});

// --- against a SCRAM cluster ----------------------------------------------------------

/** Waits until the node named "replica" replayed everything the primary wrote so far. */
async function replayed(cluster: Cluster): Promise<void> {
  const { lsn } = await cluster.queryRow<{ lsn: string }>(
    "select pg_current_wal_lsn()::text as lsn",
  );
  await until(
    "the replica replayed the primary's writes",
    async () =>
      (await cluster.node("replica").queryRow<{ ok: boolean }>(
        "select pg_last_wal_replay_lsn() >= $1::pg_lsn as ok",
        [lsn],
      )).ok,
  );
}

Deno.test({
  name: named(
    "a password function logs dbx in, a rotated password is picked up without a failed read",
  ),
  ignore: noPostgres,
  async fn(t) {
    await using local = await startLocalCluster({ replicas: 1, password: SECRET });
    const [primary, replica] = local.nodes;
    let current = SECRET;
    let asked = 0;
    const logger = testLogger();
    await using cluster = await connect({
      master: { name: "primary", url: withoutPassword(primary!.url) },
      replicas: [{ name: "replica", url: withoutPassword(replica!.url) }],
      password: () => {
        asked++;
        return current;
      },
      logger,
    });

    await t.step("reads and writes work with a password only the function knows", async () => {
      assert.ok(!cluster.stats().nodes.some((n) => JSON.stringify(n).includes(SECRET)));
      await cluster.exec("create table if not exists password_rotation (id int)");
      await cluster.exec("insert into password_rotation values (1)");
      const tx = await cluster.begin();
      try {
        await tx.exec("insert into password_rotation values (2)");
        assert.ok(!Deno.inspect(tx, { depth: 20 }).includes(SECRET));
      } finally {
        await tx.commit();
      }
      await replayed(cluster);
      const { n } = await cluster.node("replica").queryRow<{ n: number }>(
        "select count(*)::int as n from password_rotation",
      );
      assert.equal(n, 2);
      assert.ok(asked > 0, "the function was asked");
      assert.deepEqual(
        await cluster.withConnection((c) => c.query("select 1 as one")),
        [{ one: 1 }],
      );
      // A LISTEN connection is a new one of its own: it asks too.
      const beforeListen = asked;
      const got: string[] = [];
      {
        await using _sub = await cluster.listen("password_test", (p) => void got.push(p));
        assert.ok(asked > beforeListen, "the LISTEN connection asked for the password");
        await cluster.notify("password_test", "hello");
        await until(() => `the notification arrived (got ${got})`, () => got.length === 1);
      }
      const health = await cluster.health();
      assert.ok(health.nodes.every((n) => n.healthy), Deno.inspect(health));
      for (
        const shown of [
          Deno.inspect(cluster, { depth: 20 }),
          JSON.stringify(cluster.stats()),
          Deno.inspect(health, { depth: 20 }),
          JSON.stringify(logger.entries),
        ]
      ) {
        assert.ok(!shown.includes(SECRET), shown);
      }
    });

    await t.step("a rotated password is used by every new connection, no read fails", async () => {
      const next = `${SECRET}-rotated`;
      await cluster.exec(`alter role postgres password '${next}'`);
      current = next;
      const before = asked;
      // The replica checks logins against its own copy of pg_authid: wait
      // (outside dbx) until it accepts the new password.
      await until("the replica accepts the new password", async () => {
        const client = new pg.Client({ connectionString: withPassword(replica!.url, next) });
        try {
          await client.connect();
          return true;
        } catch {
          return false;
        } finally {
          await client.end().catch(() => {});
        }
      });
      const terminate = "select pg_terminate_backend(pid) from pg_stat_activity " +
        "where pid <> pg_backend_pid() and usename = current_user and backend_type = 'client backend'";
      // Reads run across the termination: a read whose connection is cut is retried,
      // and the node stays up because its probe (with the new password) answers.
      const loop = readLoop(() => cluster.readQuery("select 1"));
      try {
        await until(() => `reads running (reads ${loop.reads})`, () => loop.reads >= 50);
        await cluster.node("primary").query(terminate);
        await cluster.node("replica").query(terminate);
        const at = loop.reads;
        await until(
          () =>
            `300 reads and new connections after the rotation (reads ${loop.reads - at}, asked ${
              asked - before
            } times, failures ${loop.failures.length})`,
          () => loop.reads - at >= 300 && asked - before >= 2,
          30_000,
        );
      } finally {
        await loop.stop();
      }
      assert.deepEqual(loop.failures.map(String), [], "no read failed");
      // A terminated backend is not a server that went away: its probe answers.
      const downs = logger.entries.filter((e) => e.msg === "dbx: node is down");
      assert.deepEqual(downs, [], "no node was taken out of rotation");
      assert.ok(asked > before, `asked again after the rotation (${asked - before} times)`);
      const { n } = await cluster.queryRow<{ n: number }>(
        "select count(*)::int as n from password_rotation",
      );
      assert.equal(n, 2, "writes still work");
      const health = await cluster.health();
      assert.ok(health.nodes.every((n) => n.healthy), Deno.inspect(health));
    });

    await t.step(
      "a password function that throws fails connect() naming the node and the cause, never the password",
      async () => {
        for (
          const failing of [
            () => {
              throw new Error("vault unreachable");
            },
            () => Promise.reject(new Error("vault unreachable")),
          ]
        ) {
          await assert.rejects(
            connect({
              master: { name: "vaulted", url: withoutPassword(primary!.url), password: failing },
              replicas: [{ name: "replica", url: withoutPassword(replica!.url) }],
              password: () => current,
              retry: { maxAttempts: 2, baseDelayMs: 10 },
              logger: testLogger(),
            }),
            (err: unknown) => {
              assert.ok(err instanceof Error, String(err));
              assert.match(err.message, /vaulted/);
              assert.match(err.message, /vault unreachable/);
              assertHides(err, current);
              assertHides(err, SECRET);
              return true;
            },
          );
        }
        await assert.rejects(
          connect({
            master: {
              name: "vaulted",
              url: withoutPassword(primary!.url),
              password: () => ({ token: current }) as unknown as string,
            },
            retry: { maxAttempts: 1 },
            logger: testLogger(),
          }),
          (err: unknown) => {
            assert.ok(err instanceof Error, String(err));
            assert.match(
              err.message,
              /vaulted.*the password function returned an object, not a string/,
            );
            assertHides(err, current);
            return true;
          },
        );
      },
    );

    await t.step(
      "a node whose password function fails is marked down, reads go elsewhere, and it serves again once the function recovers",
      async () => {
        let vaultUp = true;
        const logs = testLogger();
        await using failing = await connect({
          master: { name: "primary", url: withoutPassword(primary!.url) },
          replicas: [{
            name: "replica",
            url: withoutPassword(replica!.url),
            password: async () => {
              if (!vaultUp) throw new Error("vault unreachable");
              return await Promise.resolve(current);
            },
          }],
          password: () => current,
          healthCheck: { intervalMs: 100 },
          logger: logs,
        });
        await failing.readQuery("select 1");
        vaultUp = false;
        // Every dbx connection to the replica ends (from outside dbx): the next needs the password.
        const admin = new pg.Client({ connectionString: withPassword(replica!.url, current) });
        await admin.connect();
        try {
          await admin.query(
            "select pg_terminate_backend(pid) from pg_stat_activity where pid <> pg_backend_pid() " +
              "and usename = current_user and backend_type = 'client backend'",
          );
        } finally {
          await admin.end();
        }
        await until(
          "dbx dropped its connections to the replica",
          () => failing.stats().nodes.find((n) => n.name === "replica")!.totalConns === 0,
        );
        await assert.rejects(failing.node("replica").query("select 1"), (err: unknown) => {
          assert.ok(err instanceof DbxError, String(err));
          assert.equal(err.kind, "connection");
          assert.equal(err.node, "replica");
          assert.match(err.message, /Cannot connect to node replica.*vault unreachable/);
          assertHides(err, current);
          return true;
        });
        // Reads keep working (on the primary) while the replica cannot be reached.
        const failed = () =>
          logs.entries.filter((e) =>
            e.attrs.node === "replica" && /vault unreachable/.test(String(e.attrs.error))
          );
        await until("a connection to the replica failed for its password function", async () => {
          await failing.readQuery("select 1");
          return failed().length > 0;
        }).catch((err) => assert.fail(`${err.message}; logged: ${Deno.inspect(logs.entries)}`));
        assert.match(String(failed()[0]!.attrs.error), /Cannot connect to node replica/);
        const down = (await failing.health()).nodes.find((n) => n.name === "replica")!;
        assert.equal(down.healthy, false, Deno.inspect(down));
        for (let i = 0; i < 20; i++) await failing.readQuery("select 1");
        // A connection whose password could not be given is closed, not reused: once the
        // function works again, so does the node.
        vaultUp = true;
        await until(
          "the replica is healthy again",
          async () => (await failing.health()).nodes.every((n) => n.healthy),
        );
        for (let i = 0; i < 20; i++) {
          assert.deepEqual(await failing.node("replica").query("select 1 as one"), [{ one: 1 }]);
        }
        assert.ok(!JSON.stringify(logs.entries).includes(current));
        assert.ok(!Deno.inspect(logs.entries, { depth: 20 }).includes(current));
      },
    );
  },
});
