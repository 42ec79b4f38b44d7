import assert from "node:assert/strict";
import { chmod, chown, copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
// @ts-types="@types/pg"
import pg from "pg";
import { connect, DbxError, isRetryable, NoHealthyNodeError, resolveConfig } from "../mod.ts";
import { startLocalCluster, testLogger } from "../src/testing/mod.ts";
import { configError, named, noPostgres, until } from "./helpers.ts";

const MASTER = "postgres://app@db1:5432/app";
const REPLICA = "postgres://app@db2:5432/app";
const PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
const KEY = "-----BEGIN PRIVATE KEY-----\nTOP-SECRET-KEY-MATERIAL\n-----END PRIVATE KEY-----\n";

Deno.test("resolveConfig() keeps a node's ssl settings and hides the key from printing", () => {
  const { nodes } = resolveConfig({
    master: { url: MASTER, ssl: { ca: PEM, cert: PEM, key: KEY, servername: "db.internal" } },
    replicas: [{ url: REPLICA, ssl: true }, "postgres://app@db3:5432/app"],
  });
  const ssl = nodes[0]!.ssl as Record<string, unknown>;
  assert.equal(ssl.ca, PEM);
  assert.equal(ssl.key, KEY, "pg still gets the key");
  assert.equal(ssl.servername, "db.internal");
  assert.ok(!JSON.stringify(nodes).includes("TOP-SECRET"), "JSON shows no key");
  assert.ok(!Deno.inspect(nodes, { depth: 10 }).includes("TOP-SECRET"), "inspect shows no key");
  assert.equal(nodes[1]!.ssl, true);
  assert.equal(nodes[2]!.ssl, undefined);
});

Deno.test("resolveConfig() removes sslmode from the URL given to pg when ssl is set", () => {
  const { nodes } = resolveConfig({
    master: { url: `${MASTER}?sslmode=verify-full&application_name=x`, ssl: { ca: PEM } },
    replicas: [`${REPLICA}?sslmode=require`],
  });
  assert.equal(nodes[0]!.url, `${MASTER}?application_name=x`);
  assert.equal(nodes[1]!.url, `${REPLICA}?sslmode=require`, "without ssl, pg reads sslmode");
});

const bad: { what: string; config: unknown; field: string; message: RegExp }[] = [
  {
    what: "a ca that is a number",
    config: { master: MASTER, replicas: [{ url: REPLICA, ssl: { ca: 42 } }] },
    field: "replicas[0].ssl.ca",
    message: /must be PEM text or bytes.*current value is a number/,
  },
  {
    what: "a key that is an object",
    config: { master: { url: MASTER, ssl: { cert: PEM, key: { pem: KEY } } } },
    field: "master.ssl.key",
    message: /must be PEM text or bytes.*current value is a object/,
  },
  {
    what: "a ca list with a bad entry",
    config: { master: { url: MASTER, ssl: { ca: [PEM, 7] } } },
    field: "master.ssl.ca[1]",
    message: /must be PEM text or bytes/,
  },
  {
    what: "an ssl that is a string (a pasted key)",
    config: { master: { url: MASTER, ssl: KEY } },
    field: "master.ssl",
    message: /must be a boolean or an object.*current value is a string of \d+ characters/,
  },
  {
    what: "a key pasted into another setting",
    config: { master: MASTER, tracer: KEY },
    field: "tracer",
    message: /current value is PEM text \(\d+ characters\)/,
  },
  {
    what: "a misspelt setting",
    config: { master: { url: MASTER, ssl: { rejectUnauthorised: false } } },
    field: "master.ssl.rejectUnauthorised",
    message:
      /is not a known setting \(known settings: ca, cert, key, rejectUnauthorized, servername\)/,
  },
  {
    what: "a rejectUnauthorized that is a string",
    config: { master: { url: MASTER, ssl: { rejectUnauthorized: "yes" } } },
    field: "master.ssl.rejectUnauthorized",
    message: /must be a boolean/,
  },
  {
    what: "an empty servername",
    config: { master: { url: MASTER, ssl: { servername: "" } } },
    field: "master.ssl.servername",
    message: /must be a non-empty string/,
  },
  {
    what: "a cert without its key",
    config: { master: { url: MASTER, ssl: { cert: PEM } } },
    field: "master.ssl.key",
    message: /must be given with 'master.ssl.cert'/,
  },
  {
    what: "certificate files in the URL next to ssl",
    config: { master: { url: `${MASTER}?sslrootcert=/etc/ca.pem`, ssl: { ca: PEM } } },
    field: "master.url",
    message: /must not set parameter 'sslrootcert' when 'master.ssl' is given/,
  },
  {
    what: "sslmode=disable next to an ssl object",
    config: { nodes: [{ url: `${MASTER}?sslmode=disable`, ssl: { ca: PEM } }] },
    field: "nodes[0].url",
    message: /'sslmode=disable' contradicts 'nodes\[0\].ssl' \(TLS on\)/,
  },
  {
    what: "sslmode=require next to ssl: false",
    config: { master: { url: `${MASTER}?sslmode=require`, ssl: false } },
    field: "master.url",
    message: /'sslmode=require' contradicts 'master.ssl' \(false\)/,
  },
  {
    what: "sslmode=no-verify next to a verifying ssl",
    config: { master: { url: `${MASTER}?sslmode=no-verify`, ssl: { ca: PEM } } },
    field: "master.url",
    message: /'sslmode=no-verify' needs 'master.ssl.rejectUnauthorized: false'/,
  },
  {
    what: "libpq's sslmode=allow, which pg does not support",
    config: { master: `${MASTER}?sslmode=allow` },
    field: "master",
    message:
      /parameter 'sslmode' must be one of disable, prefer, require, verify-ca, verify-full, no-verify/,
  },
];

for (const { what, config, field, message } of bad) {
  Deno.test(`resolveConfig() rejects ${what}, naming '${field}' and never the PEM`, () => {
    const err = configError(config);
    assert.equal(err.field, field);
    assert.match(err.message, message);
    assert.ok(!err.message.includes("BEGIN"), err.message);
    assert.ok(!err.message.includes("TOP-SECRET"), err.message);
  });
}

// ---------------------------------------------------------------------------
// Against a real server with TLS on.

const noOpenssl = await new Deno.Command("openssl", { args: ["version"], stdout: "null" })
  .output().then((o) => !o.success, () => true);
const tlsName = (name: string) =>
  noOpenssl ? `${name} [ignored: openssl is not installed (Debian package openssl)]` : named(name);

async function openssl(cwd: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd, stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
}

/** A CA, a server certificate it signed (for 127.0.0.1 and localhost), and an unrelated CA. */
async function certificates(dir: string): Promise<{ ca: string; otherCa: string }> {
  const req = ["req", "-newkey", "rsa:2048", "-nodes", "-days", "2"];
  await openssl(
    dir,
    ...req,
    "-x509",
    "-subj",
    "/CN=dbx test CA",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
  );
  await openssl(dir, ...req, "-x509", "-subj", "/CN=other CA", "-keyout", "o.key", "-out", "o.pem");
  await openssl(dir, ...req, "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "s.csr");
  await Deno.writeTextFile(join(dir, "ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await openssl(
    dir,
    "x509",
    "-req",
    "-in",
    "s.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    "ext.cnf",
    "-out",
    "server.pem",
  );
  return {
    ca: await Deno.readTextFile(join(dir, "ca.pem")),
    otherCa: await Deno.readTextFile(join(dir, "o.pem")),
  };
}

/** The uid and gid the servers run as: `postgres` when this process is root. */
async function serverOwner(): Promise<{ uid: number; gid: number } | undefined> {
  const id = async (...args: string[]) =>
    Number(
      new TextDecoder().decode(
        (await new Deno.Command("id", { args, stdout: "piped" }).output()).stdout,
      ).trim(),
    );
  if (await id("-u") !== 0) return undefined;
  return { uid: await id("-u", "postgres"), gid: await id("-g", "postgres") };
}

/** Turns TLS on in a running server: certificate files in its data directory, then a reload. */
async function enableTls(dataDir: string, certDir: string, url: string): Promise<void> {
  const owner = await serverOwner();
  for (const file of ["server.pem", "server.key"]) {
    const target = join(dataDir, file);
    await copyFile(join(certDir, file), target);
    if (owner !== undefined) await chown(target, owner.uid, owner.gid);
    await chmod(target, 0o600); // the server refuses a key others can read
  }
  await Deno.writeTextFile(
    join(dataDir, "postgresql.conf"),
    "\nssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n",
    { append: true },
  );
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    await admin.query("select pg_reload_conf()");
  } finally {
    await admin.end();
  }
  await until("the server has TLS on", async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      return (await c.query("show ssl")).rows[0]?.ssl === "on";
    } finally {
      await c.end();
    }
  }, 30_000);
}

/** A loopback TCP relay to `port` that counts the connections it accepted. */
function countingRelay(port: number): { port: number; accepted(): number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const links: Promise<unknown>[] = [];
  let accepted = 0;
  const loop = (async () => {
    for await (const client of listener) {
      accepted++;
      conns.add(client);
      const link = Deno.connect({ hostname: "127.0.0.1", port }).then((server) => {
        conns.add(server);
        return Promise.allSettled([
          client.readable.pipeTo(server.writable),
          server.readable.pipeTo(client.writable),
        ]);
      });
      links.push(link.catch(() => client.close()));
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    accepted: () => accepted,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // Already closed by the other side's end.
        }
      }
      await loop;
      await Promise.allSettled(links);
    },
  };
}

Deno.test({
  name: tlsName(
    "TLS per node: the right CA connects every connection over TLS; a wrong CA fails at once, naming the node",
  ),
  ignore: noPostgres || noOpenssl,
  async fn(t) {
    const certDir = await mkdtemp(join(tmpdir(), "dbx-tls-"));
    try {
      const { ca, otherCa } = await certificates(certDir);
      await using local = await startLocalCluster({ replicas: 0 });
      const node = local.nodes[0]!;
      await enableTls(node.dataDir, certDir, local.masterUrl);
      const onTls = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

      await t.step(
        "the right CA with rejectUnauthorized: TLS on pipes, pool and probes",
        async () => {
          await using cluster = await connect({
            // sslmode in the URL agrees with ssl and does not replace its CA.
            master: {
              url: `${local.masterUrl}?sslmode=verify-full`,
              ssl: { ca, rejectUnauthorized: true },
            },
            healthCheck: { intervalMs: 200 },
          });
          const piped = await cluster.queryRow<{ ssl: boolean }>(onTls);
          assert.equal(piped.ssl, true, "a pipelined statement ran over TLS");
          const pooled = await cluster.runTx((tx) => tx.queryRow<{ ssl: boolean }>(onTls));
          assert.equal(pooled.ssl, true, "a pooled (transaction) connection is TLS");
          const plainOnes = await cluster.queryRow<{ n: number }>(
            `select count(*)::int as n from pg_stat_activity a join pg_stat_ssl s using (pid)
           where a.application_name like 'dbx%' and not s.ssl`,
          );
          assert.equal(plainOnes.n, 0, "no dbx connection (probe included) without TLS");
          const probes = await cluster.queryRow<{ n: number }>(
            `select count(*)::int as n from pg_stat_activity a join pg_stat_ssl s using (pid)
           where a.application_name = 'dbx-health' and s.ssl`,
          );
          assert.equal(probes.n, 1, "the health probe connection is TLS");
          // The cancel request (plain TCP) still reaches a TLS server: the statement stops.
          const cancelled = await cluster.queryRow("select pg_sleep(30)", [], { timeoutMs: 200 })
            .catch((e) => e);
          assert.ok(cancelled instanceof DbxError, `${cancelled}`);
          assert.equal(cancelled.code, "57014", "canceled on the server");
        },
      );

      await t.step("ssl: false connects without TLS to the same server", async () => {
        await using cluster = await connect({ master: { url: local.masterUrl, ssl: false } });
        assert.equal((await cluster.queryRow<{ ssl: boolean }>(onTls)).ssl, false);
      });

      await t.step(
        "a wrong CA: connect() rejects at once, not retryable, without a retry storm",
        async () => {
          const relay = countingRelay(node.port);
          try {
            const logger = testLogger();
            const url = `postgres://postgres@127.0.0.1:${relay.port}/postgres`;
            const err = await connect({
              master: { url, ssl: { ca: otherCa, rejectUnauthorized: true } },
              logger,
            }).catch((e) => e);
            assert.ok(err instanceof DbxError, `${err}`);
            assert.ok(
              !(err instanceof NoHealthyNodeError),
              "not a 'no node' error: retrying cannot help",
            );
            assert.equal(isRetryable(err), false);
            assert.equal(err.node, `127.0.0.1:${relay.port}`);
            assert.match(
              err.message,
              new RegExp(
                `^Cannot connect: .*certificate.* \\(node 127\\.0\\.0\\.1:${relay.port}\\)$`,
              ),
            );
            assert.ok(
              relay.accepted() === 1,
              `one probe connection and no retry (default maxAttempts 3): saw ${relay.accepted()}`,
            );
            const logged = JSON.stringify(logger.entries) + err.message;
            assert.ok(!logged.includes("TOP-SECRET") && !logged.includes("BEGIN"), "no PEM logged");
          } finally {
            await relay.close();
          }
        },
      );
    } finally {
      await rm(certDir, { recursive: true, force: true });
    }
  },
});
