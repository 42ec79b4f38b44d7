/**
 * dbx behind PgBouncer in transaction pooling mode, with pipelining on (the
 * default) and `statementCache: false`: each test starts its own pgbouncer
 * (the machine's binary, run as the `postgres` OS user when this process is
 * root) in front of the test database's primary and a replica, with fewer
 * server connections than dbx opens, so pgbouncer hands the same server
 * connection to different dbx connections from one transaction to the next.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { type Cluster, connect, DbxError } from "../mod.ts";
import { testDatabase, testDatabaseUrls } from "../src/testing/db_test.ts";
import { freePorts } from "../src/testing/pg_process.ts";
import { pgBinariesUnavailable } from "../src/testing/pg_binaries.ts";
import { noPostgres, until } from "./helpers.ts";

const execFileAsync = promisify(execFile);

/** Where Debian (and most distributions) put the binary; /usr/sbin is often off PATH. */
const CANDIDATES = [
  "/usr/sbin/pgbouncer",
  "/usr/bin/pgbouncer",
  "/usr/local/sbin/pgbouncer",
  "/usr/local/bin/pgbouncer",
];

function findPgBouncer(): string | undefined {
  for (const path of CANDIDATES) {
    try {
      const info = Deno.statSync(path);
      if (info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0) return path;
    } catch {
      // Not there.
    }
  }
  return undefined;
}

const PGBOUNCER = findPgBouncer();

/** Fewer server connections per node than dbx opens: pgbouncer must share them. */
const SERVER_CONNS = 4;

/** Why these tests cannot run here, or undefined. */
const unavailable = PGBOUNCER === undefined
  ? `no pgbouncer binary (looked for ${
    CANDIDATES.join(", ")
  }); install it, e.g. apt-get install pgbouncer`
  : testDatabaseUrls() === undefined && noPostgres
  ? `${pgBinariesUnavailable()}; install PostgreSQL or set DBX_PG_BIN`
  : undefined;

/** The URLs dbx connects to: pgbouncer's, one database entry per node. */
interface BouncerUrls {
  primary: string;
  replica: string | undefined;
}

/** A pgbouncer of this test: its URLs; disposing stops it and waits for it to exit. */
interface Bouncer extends BouncerUrls, AsyncDisposable {
  /** What pgbouncer printed so far (for failure messages). */
  output(): string;
}

/** One `[databases]` line pointing at the server of `url`. */
function databaseLine(alias: string, url: string): string {
  const u = new URL(url);
  const host = u.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1";
  const dbname = decodeURIComponent(u.pathname.slice(1)) || decodeURIComponent(u.username);
  return `${alias} = host=${host} port=${u.port || 5432} dbname=${dbname}`;
}

/** A quoted auth_file field (a double quote is written twice). */
const quoted = (s: string) => `"${s.replaceAll('"', '""')}"`;

/** pgbouncer's URL for one database entry: the test database's user and password. */
function bouncerUrl(serverUrl: string, port: number, alias: string): string {
  const u = new URL(serverUrl);
  const auth = u.password === "" ? u.username : `${u.username}:${u.password}`;
  return `postgres://${auth}@127.0.0.1:${port}/${alias}`;
}

/** The `runuser` prefix when this process is root: pgbouncer refuses to run as root. */
async function asPostgres(): Promise<
  { prefix: string[]; uid: number; gid: number } | undefined
> {
  if ((await execFileAsync("id", ["-u"])).stdout.trim() !== "0") return undefined;
  const uid = Number((await execFileAsync("id", ["-u", "postgres"])).stdout.trim());
  const gid = Number((await execFileAsync("id", ["-g", "postgres"])).stdout.trim());
  const runuser = ["/usr/sbin/runuser", "/sbin/runuser"].find((p) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  }) ?? "runuser";
  return { prefix: [runuser, "-u", "postgres", "--"], uid, gid };
}

/**
 * Starts pgbouncer in front of the test database (its primary and first
 * replica) on a free loopback port, trying another port when the one picked
 * was taken meanwhile.
 */
async function startPgBouncer(): Promise<Bouncer> {
  const db = await testDatabase();
  for (let attempt = 1;; attempt++) {
    const [port] = await freePorts(1);
    try {
      return await launch(db.master, db.replicas[0], port!);
    } catch (error) {
      if (attempt < 5 && /already in use/i.test(String(error))) continue;
      throw error;
    }
  }
}

async function launch(
  master: string,
  replica: string | undefined,
  port: number,
): Promise<Bouncer> {
  const user = decodeURIComponent(new URL(master).username) || "postgres";
  const password = decodeURIComponent(new URL(master).password);
  const dir = await Deno.makeTempDir({ prefix: "dbx-pgbouncer-" });
  const ini = `${dir}/pgbouncer.ini`;
  const users = `${dir}/users.txt`;
  await Deno.writeTextFile(
    ini,
    [
      "[databases]",
      databaseLine("primary", master),
      ...(replica === undefined ? [] : [databaseLine("replica", replica)]),
      "",
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      // With a password, clients log in with SCRAM and pgbouncer logs in to
      // the server with the same password; without one, the server trusts.
      `auth_type = ${password === "" ? "trust" : "scram-sha-256"}`,
      `auth_file = ${users}`,
      "pool_mode = transaction",
      "max_client_conn = 200",
      `default_pool_size = ${SERVER_CONNS}`,
      "ignore_startup_parameters = extra_float_digits",
      "log_connections = 0",
      "log_disconnections = 0",
      "",
    ].join("\n"),
  );
  await Deno.writeTextFile(users, `${quoted(user)} ${quoted(password)}\n`);
  const runAs = await asPostgres();
  if (runAs !== undefined) {
    for (const path of [dir, ini, users]) await Deno.chown(path, runAs.uid, runAs.gid);
  }
  const [program, ...args] = [...(runAs?.prefix ?? []), PGBOUNCER!, ini];
  const child = new Deno.Command(program!, {
    args,
    // Its cwd must be readable by the postgres user.
    cwd: dir,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();

  // Read everything pgbouncer prints until it exits (a full pipe would block it).
  let output = "";
  let onOutput = () => {};
  const drained = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) {
      output += decoder.decode(chunk, { stream: true });
      onOutput();
    }
  })();
  const exited = child.status.then(async (status) => {
    await drained;
    return status;
  });
  const stop = async () => {
    try {
      // runuser passes SIGTERM on (pgbouncer's immediate shutdown) and exits with it.
      child.kill("SIGTERM");
    } catch {
      // Already exited.
    }
    await exited;
    await Deno.remove(dir, { recursive: true });
  };

  // Ready once it says so; a failed start (port taken, bad config) exits instead.
  const timeout = AbortSignal.timeout(30_000);
  let onAbort = () => {};
  try {
    await new Promise<void>((resolve, reject) => {
      onOutput = () => {
        if (output.includes("process up")) resolve();
      };
      onAbort = () => reject(new Error("pgbouncer did not start within 30 s"));
      timeout.addEventListener("abort", onAbort, { once: true });
      exited.then((status) =>
        reject(new Error(`pgbouncer exited with code ${status.code} before accepting connections`))
      );
      onOutput();
    });
  } catch (error) {
    await stop();
    throw new Error(`${(error as Error).message}:\n${output}`, { cause: error });
  } finally {
    timeout.removeEventListener("abort", onAbort);
    onOutput = () => {};
  }
  return {
    primary: bouncerUrl(master, port, "primary"),
    replica: replica === undefined ? undefined : bouncerUrl(replica, port, "replica"),
    output: () => output,
    [Symbol.asyncDispose]: stop,
  };
}

/** dbx through pgbouncer: pipelining on (the default), no named statements. */
function connectThrough(bouncer: BouncerUrls): Promise<Cluster> {
  return connect({
    // One host:port for both: the default names (host:port) would clash.
    master: { name: "primary", url: bouncer.primary },
    replicas: bouncer.replica === undefined ? [] : [{ name: "replica", url: bouncer.replica }],
    statementCache: false,
  });
}

/** A Deno.test with a pgbouncer of its own in front of the test database. */
function bouncerTest(name: string, fn: (bouncer: Bouncer) => Promise<void>): void {
  Deno.test({
    name: unavailable === undefined ? name : `${name} [ignored: ${unavailable}]`,
    ignore: unavailable !== undefined,
    async fn() {
      await using bouncer = await startPgBouncer();
      try {
        await fn(bouncer);
      } catch (error) {
        console.error(`--- pgbouncer output ---\n${bouncer.output()}`);
        throw error;
      }
    },
  });
}

bouncerTest(
  "behind pgbouncer, 200 concurrent statements of every kind each get their own answer",
  async (bouncer) => {
    assert.ok(bouncer.replica !== undefined, "the test database has a replica");
    await using cluster = await connectThrough(bouncer);
    // The nodes really are pgbouncer's entries: the primary writes, the replica is in recovery.
    assert.equal(
      (await cluster.queryRow<{ r: boolean }>("select pg_is_in_recovery() as r")).r,
      false,
    );
    assert.equal(
      (await cluster.readQueryRow<{ r: boolean }>("select pg_is_in_recovery() as r")).r,
      true,
    );
    const kinds = ["exec", "query", "queryRow", "readQuery", "readQueryRow"] as const;
    // A statement with a signal runs alone on a pooled connection: every
    // fourth one has one, so dbx opens more connections than pgbouncer has
    // server connections, next to the pipelined ones.
    const never = new AbortController().signal;
    const results = await Promise.allSettled(
      Array.from({ length: 200 }, async (_, i) => {
        const kind = kinds[i % kinds.length]!;
        const text = `caller ${i}`;
        const options = i % 4 === 0 ? { signal: never } : {};
        switch (kind) {
          case "exec": {
            // No rows come back: the row count carries the argument.
            const res = await cluster.exec("select generate_series(1, $1::int)", [i + 1], options);
            assert.deepEqual(res, { command: "SELECT", rowCount: i + 1 }, kind);
            break;
          }
          case "query":
          case "readQuery": {
            const rows = await cluster[kind]<{ i: number; t: string }>(
              "select $1::int as i, $2::text as t",
              [i, text],
              options,
            );
            assert.deepEqual(rows, [{ i, t: text }], kind);
            break;
          }
          case "queryRow":
          case "readQueryRow": {
            const row = await cluster[kind]<{ i: number; t: string }>(
              "select $1::int * 2 as i, upper($2::text) as t",
              [i, text],
              options,
            );
            assert.deepEqual(row, { i: i * 2, t: text.toUpperCase() }, kind);
            break;
          }
        }
      }),
    );
    const failed = results.flatMap((r, i) =>
      r.status === "rejected" ? [`#${i}: ${String(r.reason)}`] : []
    );
    assert.deepEqual(failed, [], "every statement got its own answer");
    const primary = cluster.stats().nodes[0]!;
    assert.ok(
      primary.totalConns > SERVER_CONNS,
      `dbx had more connections (${primary.totalConns}) than pgbouncer server connections`,
    );
  },
);

bouncerTest(
  "behind pgbouncer, cancelling a statement cancels it and no other caller's, and pgbouncer stays up",
  async (bouncer) => {
    await using cluster = await connectThrough(bouncer);
    // Several rounds: PgBouncer 1.18 exits on a cancel connection its client
    // closes first, which dbx did not wait to avoid before.
    for (let round = 0; round < 3; round++) {
      const sleep = `select pg_sleep(30) as round_${round}`;
      const stop = new AbortController();
      const slow = cluster.query(sleep, [], { signal: stop.signal })
        .then(() => "finished", (e: unknown) => e);
      // A cancel reaches the server only while pgbouncer has the statement on
      // a server connection (one still queued there is dropped): wait for it.
      await until("the slow statement runs on the server", async () => {
        const [row] = await cluster.query<{ n: number }>(
          "select count(*)::int as n from pg_stat_activity where query = $1 and state = 'active'",
          [sleep],
        );
        return row!.n === 1;
      }, 30_000);
      const fast = Promise.allSettled(
        Array.from({ length: 50 }, (_, i) => cluster.query("select $1::int as i", [i])),
      );
      stop.abort();
      const settled = await fast;
      const ended = await slow;
      assert.ok(ended instanceof DbxError && ended.code === "57014", `the slow one: ${ended}`);
      assert.deepEqual(settled.filter((r) => r.status === "rejected"), [], "no other cancelled");
      assert.deepEqual(
        settled.map((r) => (r as PromiseFulfilledResult<{ i: number }[]>).value[0]!.i),
        Array.from({ length: 50 }, (_, i) => i),
      );
    }
    assert.doesNotMatch(bouncer.output(), /FATAL/);
  },
);

bouncerTest("behind pgbouncer, runTx commits and rolls back", async (bouncer) => {
  await using cluster = await connectThrough(bouncer);
  await cluster.exec("drop table if exists bouncer_tx");
  await cluster.exec("create table bouncer_tx(id int primary key, note text not null)");
  try {
    const committed = await cluster.runTx(async (tx) => {
      await tx.exec("insert into bouncer_tx values ($1, $2)", [1, "kept"]);
      await tx.exec("insert into bouncer_tx values ($1, $2)", [2, "kept too"]);
      return (await tx.queryRow<{ n: number }>("select count(*)::int as n from bouncer_tx")).n;
    });
    assert.equal(committed, 2, "the transaction sees its own writes");
    const boom = new Error("roll back");
    await assert.rejects(
      cluster.runTx(async (tx) => {
        await tx.exec("insert into bouncer_tx values ($1, $2)", [3, "rolled back"]);
        await tx.exec("update bouncer_tx set note = $1 where id = $2", ["changed", 1]);
        throw boom;
      }),
      (error) => error === boom,
    );
    assert.deepEqual(await cluster.query("select id, note from bouncer_tx order by id"), [
      { id: 1, note: "kept" },
      { id: 2, note: "kept too" },
    ]);
  } finally {
    await cluster.exec("drop table bouncer_tx");
  }
});

bouncerTest(
  "behind pgbouncer, concurrent batches get their own rows, atomic or not",
  async (bouncer) => {
    await using cluster = await connectThrough(bouncer);
    const batch = (k: number) =>
      Array.from({ length: 5 }, (_, i) => ({ sql: "select $1::int as i", args: [k * 10 + i] }));
    const rowsOf = (k: number) => Array.from({ length: 5 }, (_, i) => [{ i: k * 10 + i }]);
    const atomic = await Promise.all(
      Array.from({ length: 20 }, (_, k) => cluster.sendBatch(batch(k))),
    );
    assert.deepEqual(
      atomic.map((r) => r.map((s) => s.rows)),
      Array.from({ length: 20 }, (_, k) => rowsOf(k)),
    );
    const separate = await Promise.all(
      Array.from({ length: 20 }, (_, k) => cluster.sendBatch(batch(k), { atomic: false })),
    );
    assert.deepEqual(
      separate.map((r) => r.map((s) => s.status === "fulfilled" ? s.value.rows : String(s.reason))),
      Array.from({ length: 20 }, (_, k) => rowsOf(k)),
    );
  },
);

bouncerTest(
  "behind pgbouncer, 4 writers and 4 readers: every acknowledged row is there exactly once",
  async (bouncer) => {
    await using cluster = await connectThrough(bouncer);
    await cluster.exec("drop table if exists bouncer_ledger");
    await cluster.exec(
      "create table bouncer_ledger(writer int not null, seq int not null, note text not null)",
    );
    try {
      // Readers go to the replica: wait until it has the table.
      await until(
        "the replica has the table",
        async () =>
          (await cluster.readQueryRow<{ t: string | null }>(
            "select to_regclass('bouncer_ledger')::text as t",
          )).t !== null,
        30_000,
      );
      const WRITERS = 4;
      const INSERTS = 200;
      const acknowledged: string[] = [];
      const failures: string[] = [];
      let writing = WRITERS;
      const writers = Array.from({ length: WRITERS }, async (_, w) => {
        for (let s = 0; s < INSERTS; s++) {
          try {
            await cluster.exec("insert into bouncer_ledger values ($1, $2, $3)", [
              w,
              s,
              `writer ${w} row ${s}`,
            ]);
            acknowledged.push(`${w}/${s}`);
          } catch (error) {
            failures.push(`insert ${w}/${s}: ${error}`);
          }
        }
        writing--;
      });
      let reads = 0;
      const readers = Array.from({ length: 4 }, async (_, r) => {
        while (writing > 0) {
          try {
            const rows = await cluster.readQuery<{ writer: number; n: number }>(
              "select writer, count(*)::int as n from bouncer_ledger where writer <> $1 group by writer",
              [-1 - r],
            );
            assert.ok(rows.every((row) => row.writer >= 0 && row.writer < WRITERS && row.n > 0));
            const { n } = await cluster.queryRow<{ n: number }>(
              "select count(*)::int as n from bouncer_ledger where writer = $1",
              [r],
            );
            assert.ok(n >= 0 && n <= INSERTS, `writer ${r} has ${n} rows`);
            reads++;
          } catch (error) {
            failures.push(`reader ${r}: ${error}`);
          }
        }
      });
      await Promise.all([...writers, ...readers]);
      assert.deepEqual(failures, [], "no statement failed");
      assert.equal(acknowledged.length, WRITERS * INSERTS);
      assert.ok(reads > 0, "the readers ran");
      const rows = await cluster.query<{ writer: number; seq: number; note: string }>(
        "select writer, seq, note from bouncer_ledger",
      );
      const seen = rows.map((r) => `${r.writer}/${r.seq}`);
      assert.equal(new Set(seen).size, seen.length, "no row twice");
      assert.deepEqual(seen.sort(), [...acknowledged].sort(), "every acknowledged row is there");
      for (const r of rows) assert.equal(r.note, `writer ${r.writer} row ${r.seq}`);
    } finally {
      await cluster.exec("drop table bouncer_ledger");
    }
  },
);
