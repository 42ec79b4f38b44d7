import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import {
  ClusterClosedError,
  connect,
  DbxError,
  type MetricsHook,
  NoHealthyNodeError,
  NoRowsError,
  RetryExhaustedError,
  roundRobin,
} from "../mod.ts";
import { dbTest, testLogger } from "../src/testing/mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { until } from "./helpers.ts";

const urls = testDatabaseUrls();
/** Appended to the names of tests that need the database, when it is not configured. */
const why = urls === undefined ? " (ignored: DBX_TEST_MASTER_URL is not set)" : "";
const port = (url: string) => Number(new URL(url).port || 5432);
const masterPort = urls ? port(urls.master) : 0;
const replicaPorts = urls ? urls.replicas.map(port) : [];
/** A loopback port nothing listens on: connections are refused at once. */
const DEAD = "postgres://postgres@127.0.0.1:1/postgres";

/** Fast checks so tests that wait for a probe stay short. */
const fast = { healthCheck: { intervalMs: 200, timeoutMs: 500 } } as const;

dbTest("exec(), query() and queryRow() run on the primary", async (cluster) => {
  assert.deepEqual(await cluster.query("select inet_server_port() as p"), [{ p: masterPort }]);
  assert.deepEqual(await cluster.queryRow("select inet_server_port() as p"), { p: masterPort });
  const res = await cluster.exec("select inet_server_port()");
  assert.deepEqual(res, { command: "SELECT", rowCount: 1 });
  const [row] = await cluster.query<{ r: boolean }>("select pg_is_in_recovery() as r");
  assert.equal(row?.r, false);
});

dbTest("readQuery() alternates round-robin over both replicas", async (cluster) => {
  assert.ok(replicaPorts.length >= 2, "this test needs two replicas");
  const seen: number[] = [];
  for (let i = 0; i < 6; i++) {
    const row = await cluster.readQueryRow<{ p: number }>("select inet_server_port() as p");
    seen.push(row.p);
  }
  const [a, b] = replicaPorts;
  assert.ok(seen[0] === a || seen[0] === b);
  for (let i = 1; i < seen.length; i++) assert.notEqual(seen[i], seen[i - 1]);
  assert.deepEqual(new Set(seen), new Set(replicaPorts));
  assert.ok(!seen.includes(masterPort));
}, { config: { balancer: roundRobin() } });

dbTest("readQuery() runs on a server in recovery and exec() does not", async (cluster) => {
  const r = await cluster.readQueryRow<{ r: boolean }>("select pg_is_in_recovery() as r");
  assert.equal(r.r, true);
  // exec() returns no rows: the counters tell where it ran.
  const before = cluster.stats().nodes.map((n) => n.queries);
  await cluster.exec("select pg_is_in_recovery()");
  const ran = cluster.stats().nodes.map((n, i) => n.queries - before[i]!);
  assert.deepEqual(ran, [1, ...ran.slice(1).map(() => 0)], "only the primary ran it");
  assert.equal(cluster.stats().nodes[0]!.role, "primary");
});

dbTest("exec() returns the command tag and affected row count", async (cluster) => {
  await cluster.exec("drop table if exists exec_count");
  await cluster.exec("create table exec_count(id int)");
  try {
    assert.deepEqual(
      await cluster.exec("insert into exec_count select generate_series(1, $1::int)", [3]),
      { command: "INSERT", rowCount: 3 },
    );
    assert.deepEqual(await cluster.exec("delete from exec_count where id > 1"), {
      command: "DELETE",
      rowCount: 2,
    });
  } finally {
    await cluster.exec("drop table exec_count");
  }
});

dbTest("queryRow() and readQueryRow() throw NoRowsError on an empty result", async (cluster) => {
  await assert.rejects(cluster.queryRow("select 1 where false"), NoRowsError);
  await assert.rejects(cluster.readQueryRow("select 1 where false"), (err) => {
    assert.ok(err instanceof NoRowsError);
    assert.equal(err.kind, "not_found");
    return true;
  });
});

Deno.test({
  name: "reads fall back to the primary when every replica is down" + why,
  ignore: urls === undefined,
  async fn() {
    const fallbacks: string[] = [];
    const metrics: MetricsHook = { onReplicaFallback: (e) => fallbacks.push(e.reason) };
    await using cluster = await connect({
      master: urls!.master,
      replicas: [DEAD, "postgres://postgres@127.0.0.1:2/postgres"],
      metrics,
      ...fast,
    });
    const stats = cluster.stats();
    assert.deepEqual(stats.nodes.map((n) => n.healthy), [true, false, false]);
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await cluster.readQuery("select inet_server_port() as p"), [{
        p: masterPort,
      }]);
    }
    assert.deepEqual(fallbacks, ["no_healthy_replica", "no_healthy_replica", "no_healthy_replica"]);
  },
});

Deno.test({
  name: "a replica refusing connections is skipped without failing a read" + why,
  ignore: urls === undefined || urls.replicas.length === 0,
  async fn() {
    await using cluster = await connect({
      master: urls!.master,
      replicas: [urls!.replicas[0]!, DEAD],
      ...fast,
    });
    // The dead replica is down after the first probe round: reads go to the live one.
    for (let i = 0; i < 4; i++) {
      const row = await cluster.readQueryRow<{ p: number }>("select inet_server_port() as p");
      assert.equal(row.p, replicaPorts[0]);
    }
    assert.equal(cluster.stats().nodes[2]!.queries, 0);
  },
});

Deno.test({
  name: "a read on a node that refuses connections is retried on the next node" + why,
  ignore: urls === undefined || urls.replicas.length === 0,
  async fn() {
    const retries: (string | undefined)[] = [];
    // failuresBeforeDown 3 keeps the dead replica in rotation after the first
    // probe, so a read really hits it and must move on.
    await using cluster = await connect({
      master: urls!.master,
      replicas: [DEAD, urls!.replicas[0]!],
      healthCheck: { intervalMs: 60_000, timeoutMs: 500, failuresBeforeDown: 3 },
      metrics: { onRetry: (e) => retries.push(e.node) },
    });
    assert.equal(cluster.stats().nodes[1]!.healthy, true);
    const row = await cluster.readQueryRow<{ p: number }>("select inet_server_port() as p");
    assert.equal(row.p, replicaPorts[0]);
    assert.deepEqual(retries, ["127.0.0.1:1"]);
    const dead = cluster.stats().nodes[1]!;
    assert.equal(dead.healthy, false, "the query path marks the node down at once");
    assert.equal(dead.errors, 1);
    assert.equal(dead.retries, 1);
  },
});

dbTest("a write whose connection is lost mid-statement is not re-sent", async (cluster) => {
  await cluster.exec("drop sequence if exists write_attempts");
  await cluster.exec("create sequence write_attempts");
  try {
    const before = cluster.stats().nodes[0]!;
    // The statement bumps a (non-transactional) sequence, then its backend is
    // killed: the client sees the connection die with the outcome unknown.
    const err = await cluster.exec(
      "select nextval('write_attempts'), pg_terminate_backend(pg_backend_pid())",
    ).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof DbxError, `expected a DbxError, got ${err}`);
    assert.equal(err.kind, "connection");
    assert.match(err.message, /may have been applied/);
    const after = cluster.stats().nodes[0]!;
    assert.equal(after.queries - before.queries, 1);
    assert.equal(after.retries, 0);
    const { last_value } = await cluster.queryRow<{ last_value: string }>(
      "select last_value from write_attempts",
    );
    assert.equal(last_value, "1", "the statement ran exactly once");
  } finally {
    await cluster.exec("drop sequence write_attempts");
  }
});

dbTest("server errors are classified: 23505, 25006, 57014, 40001", async (cluster) => {
  await cluster.exec("drop table if exists uniq");
  await cluster.exec("create table uniq(id int primary key)");
  try {
    await cluster.exec("insert into uniq values (1)");
    await assert.rejects(cluster.exec("insert into uniq values (1)"), (err) => {
      assert.ok(err instanceof DbxError);
      assert.equal(err.code, "23505");
      assert.equal(err.kind, "unique_violation");
      assert.equal(err.node, `127.0.0.1:${masterPort}`);
      return true;
    });
    // A write sent through a read method lands on a replica, which refuses it;
    // it must not be retried onto the primary. (A statement that needs no
    // replicated table, so replication lag cannot turn 25006 into 42P01.)
    await cluster.exec("drop table if exists ro_probe");
    await assert.rejects(cluster.readQuery("create table ro_probe(id int)"), (err) => {
      assert.ok(err instanceof DbxError);
      assert.equal(err.code, "25006");
      assert.equal(err.kind, "read_only");
      return true;
    });
    assert.deepEqual(
      await cluster.query("select to_regclass('ro_probe') is null as absent"),
      [{ absent: true }],
      "the refused write did not drift to the primary",
    );
    await assert.rejects(cluster.query("select pg_sleep(5)", [], { timeoutMs: 100 }), (err) => {
      assert.ok(err instanceof DbxError);
      assert.equal(err.code, "57014");
      assert.equal(err.kind, "timeout");
      return true;
    });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await assert.rejects(cluster.query("select pg_sleep(5)", [], { signal: ac.signal }), (err) => {
      assert.ok(err instanceof DbxError);
      assert.equal(err.code, "57014");
      assert.equal(err.kind, "canceled");
      return true;
    });
    await assert.rejects(
      cluster.exec("do $$ begin raise exception 'conflict' using errcode = '40001'; end $$"),
      (err) => {
        assert.ok(err instanceof DbxError);
        assert.equal(err.code, "40001");
        assert.equal(err.kind, "serialization_failure");
        return true;
      },
    );
    const active = await cluster.queryRow<{ n: number }>(
      "select count(*)::int as n from pg_stat_activity where query like 'select pg_sleep(5)%' and state = 'active'",
    );
    assert.equal(active.n, 0, "cancelled statements are not left running");
  } finally {
    await cluster.exec("drop table uniq");
  }
});

dbTest("the connection stays usable after a cancelled statement", async (cluster) => {
  await assert.rejects(cluster.query("select pg_sleep(5)", [], { timeoutMs: 50 }));
  assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
  const primary = cluster.stats().nodes[0]!;
  assert.equal(primary.idleConns, primary.totalConns);
}, { config: { pool: { max: 1 }, pipeline: false } });

dbTest(
  "a statement that leaves a transaction open does not return its connection to the pool",
  async (cluster) => {
    await cluster.exec("begin");
    const primary = cluster.stats().nodes[0]!;
    assert.equal(primary.totalConns, 0, "the connection in a transaction was destroyed");
    const [row] = await cluster.query<{ n: number }>(
      "select count(*)::int as n from pg_stat_activity where application_name = 'dbx' and state like 'idle in transaction%'",
    );
    assert.equal(row?.n, 0);
  },
  { config: { pipeline: false } },
);

dbTest(
  "on a pipelined connection, a statement that opens a transaction is refused and the pipe cut",
  async (cluster) => {
    const err = await cluster.exec("begin").catch((e: unknown) => e);
    assert.ok(err instanceof DbxError && /use begin\(\) or runTx\(\)/.test(err.message), `${err}`);
    // Nothing stays inside a transaction, and the next statements run as usual.
    await until("no dbx backend is left idle in transaction", async () => {
      const [row] = await cluster.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where application_name = 'dbx' and state like 'idle in transaction%'",
      );
      return row?.n === 0;
    });
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
    assert.ok(cluster.stats().nodes[0]!.healthy, "a refused statement takes no node down");
  },
);

dbTest(
  "bad arguments are rejected with a clear error and leave the cluster usable",
  async (cluster) => {
    await assert.rejects(
      cluster.query(42 as unknown as string),
      (err) =>
        err instanceof TypeError &&
        /'sql' must be a string: current value is 42/.test(err.message),
    );
    await assert.rejects(
      cluster.exec("select $1", "x" as unknown as unknown[]),
      (err) => err instanceof TypeError && /'args' must be an array/.test(err.message),
    );
    await assert.rejects(
      cluster.query("select 1", [], { timeoutMs: -5 }),
      (err) => err instanceof RangeError && /'options.timeoutMs'.*-5/.test(err.message),
    );
    await assert.rejects(
      cluster.readQuery("select 1", [], { consistentWith: "nope" }),
      (err) => err instanceof RangeError && /consistentWith.*"nope"/.test(err.message),
    );
    assert.deepEqual(await cluster.query("select 2 as two"), [{ two: 2 }]);
  },
);

dbTest("stats() counts queries, errors and connections per node", async (cluster) => {
  const before = cluster.stats();
  await Promise.all(Array.from({ length: 5 }, () => cluster.query("select pg_sleep(0.05)")));
  await assert.rejects(cluster.query("select * from no_such_table"));
  for (let i = 0; i < 4; i++) await cluster.readQuery("select 1");
  const s = cluster.stats();
  const primary = s.nodes[0]!;
  assert.equal(primary.role, "primary");
  assert.equal(primary.queries - before.nodes[0]!.queries, 6);
  assert.equal(primary.errors, 1);
  assert.equal(primary.totalConns, 5, "five concurrent statements opened five connections");
  assert.equal(primary.idleConns, 5);
  assert.equal(primary.inFlight, 0);
  assert.equal(primary.maxConns, 10);
  const replicaQueries = s.nodes.slice(1).map((n) => n.queries);
  assert.deepEqual(replicaQueries, replicaQueries.map(() => 4 / replicaQueries.length));
  assert.equal(s.totals.queries, s.nodes.reduce((a, n) => a + n.queries, 0));
  assert.equal(s.totals.maxConns, 10 * s.nodes.length);
}, { config: { pipeline: false, balancer: roundRobin() } });

dbTest("ping() answers on every node", async (cluster) => {
  const before = cluster.stats().nodes.map((n) => n.queries);
  assert.equal(await cluster.ping(), undefined);
  const after = cluster.stats().nodes.map((n) => n.queries);
  assert.deepEqual(after.map((q, i) => q - before[i]!), before.map(() => 1), "one select 1 each");
});

Deno.test({
  name: "ping() names every node that failed" + why,
  ignore: urls === undefined,
  async fn() {
    await using cluster = await connect({ master: urls!.master, replicas: [DEAD], ...fast });
    await assert.rejects(cluster.ping(), (err) => {
      assert.ok(err instanceof AggregateError);
      assert.equal(err.errors.length, 1);
      assert.match(err.message, /1 of 2 nodes: 127\.0\.0\.1:1 \(/);
      return true;
    });
  },
});

Deno.test({
  name: "close() is idempotent and later calls throw ClusterClosedError" + why,
  ignore: urls === undefined,
  async fn() {
    const cluster = await connect({ master: urls!.master, replicas: urls!.replicas });
    await cluster.query("select 1");
    const first = cluster.close();
    assert.equal(cluster.close(), first, "every call returns the same promise");
    await first;
    await cluster.close();
    await cluster[Symbol.asyncDispose]();
    await assert.rejects(cluster.query("select 1"), ClusterClosedError);
    await assert.rejects(cluster.readQuery("select 1"), ClusterClosedError);
    await assert.rejects(cluster.ping(), ClusterClosedError);
    assert.equal(cluster.stats().totals.totalConns, 0);
  },
});

Deno.test({
  name: "a write waiting for a primary when close() is called fails as closed" + why,
  ignore: urls === undefined,
  async fn() {
    const waiting = Promise.withResolvers<void>();
    // A replica as the only node: no primary, so writes wait for one.
    const cluster = await connect({
      master: urls!.replicas[0]!,
      requirePrimary: false,
      retry: { waitForPrimaryMs: 120_000 },
      logger: {
        debug: (msg) => msg.includes("waiting for a primary") && waiting.resolve(),
        info() {},
        warn() {},
        error() {},
      },
    });
    const write = cluster.exec("select 1").then(() => "ran", (e: unknown) => e);
    await waiting.promise;
    await cluster.close();
    const ended = await write;
    assert.ok(ended instanceof ClusterClosedError, `ended with ${ended}`);
  },
});

Deno.test({
  name: "close() waits for statements in flight" + why,
  ignore: urls === undefined,
  async fn() {
    // Pipelined (a pipe still connecting when close() is called) and pooled.
    for (const pipeline of [true, false]) {
      const cluster = await connect({ master: urls!.master, pipeline });
      const running = cluster.query<{ ok: boolean }>("select true as ok from pg_sleep(0.2)")
        .then((rows) => rows, (e: unknown) => e);
      await cluster.close();
      assert.deepEqual(await running, [{ ok: true }], `pipeline: ${pipeline}`);
    }
  },
});

Deno.test({
  name: "passwords never appear in names, stats, health, errors or logs" + why,
  ignore: urls === undefined,
  async fn() {
    const secret = "hunter2-secret";
    const withPassword = (url: string) => {
      const u = new URL(url);
      u.password = secret;
      return u.href;
    };
    const logger = testLogger();
    await using cluster = await connect({
      master: withPassword(urls!.master),
      replicas: [withPassword("postgres://postgres@127.0.0.1:1/postgres")],
      logger,
      slowQueryThresholdMs: 0,
      ...fast,
    });
    await cluster.query("select 1");
    const err = await cluster.query("select * from missing_table").catch((e: unknown) => e);
    const pingErr = await cluster.ping().catch((e: unknown) => e);
    const seen = JSON.stringify({
      stats: cluster.stats(),
      health: await cluster.health(),
      logs: logger.entries,
      err: String(err),
      errCause: String((err as Error).cause),
      ping: String(pingErr),
      pingErrors: (pingErr as AggregateError).errors.map(String),
    });
    assert.ok(seen.includes("127.0.0.1:1"), "the failing node is reported");
    assert.ok(!seen.includes(secret), "no password anywhere");
  },
});

Deno.test({
  name: "connect() fails with NoHealthyNodeError when the master is unreachable",
  async fn() {
    const start = performance.now();
    await assert.rejects(
      connect({
        master: DEAD,
        retry: { maxAttempts: 2, baseDelayMs: 10 },
        healthCheck: { timeoutMs: 500 },
      }),
      (err) => {
        assert.ok(err instanceof NoHealthyNodeError);
        assert.match(err.message, /127\.0\.0\.1:1 is down/);
        return true;
      },
    );
    assert.ok(performance.now() - start < 5_000);
  },
});

dbTest("node(name) runs statements on that node only, whatever its role", async (cluster) => {
  for (const url of [urls!.master, ...urls!.replicas]) {
    const name = `127.0.0.1:${port(url)}`;
    const row = await cluster.node(name).queryRow<{ p: number }>("select inet_server_port() as p");
    assert.equal(row.p, port(url));
  }
  const replica = cluster.node(`127.0.0.1:${replicaPorts[0]}`);
  await assert.rejects(replica.exec("create table node_handle_x(id int)"), (err) => {
    assert.ok(err instanceof DbxError);
    assert.equal(err.code, "25006", "a write on a replica handle is not rerouted");
    return true;
  });
  assert.deepEqual(await replica.query("select 1 as one"), [{ one: 1 }]);
  assert.throws(
    () => cluster.node("nope:1"),
    (err) => err instanceof RangeError && /'name' must be one of .*"nope:1"/.test(err.message),
  );
});

dbTest(
  "a call waiting on an exhausted pool gives up after connectTimeoutMs, as not sent",
  async (cluster) => {
    // The only connection is held until the test lets it go: no timing involved.
    const hold = new AbortController();
    const busy = cluster.query("select pg_sleep(600)", [], { signal: hold.signal })
      .then(() => "finished", (e: unknown) => e);
    await until("the only connection is busy", () => {
      const n = cluster.stats().nodes[0]!;
      return n.inFlight === 1 && n.totalConns === 1 && n.idleConns === 0;
    });
    const err = await cluster.exec("select 1").then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof RetryExhaustedError, `expected RetryExhaustedError, got ${err}`);
    assert.equal(err.errors.length, 2, "the write was retried: nothing had been sent");
    for (const e of err.errors) {
      assert.match(String((e as Error).message), /timeout exceeded when trying to connect/);
    }
    assert.equal(cluster.stats().nodes[0]!.healthy, true, "a busy pool is not a node down");
    hold.abort();
    const ended = await busy;
    assert.ok(ended instanceof DbxError && ended.kind === "canceled", `busy ended with ${ended}`);
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
  },
  {
    config: {
      pool: { max: 1, connectTimeoutMs: 300 },
      retry: { maxAttempts: 2, baseDelayMs: 1 },
      pipeline: false,
    },
  },
);

dbTest(
  "the types option parses values everywhere: pipelined, pooled, in a transaction, on replicas",
  async (cluster) => {
    const sql = "select 9007199254740993::int8 as n";
    assert.deepEqual(await cluster.query(sql), [{ n: 9007199254740993n }]);
    assert.deepEqual(await cluster.query(sql, [], { timeoutMs: 10_000 }), [
      { n: 9007199254740993n },
    ]);
    assert.deepEqual(await cluster.readQuery(sql), [{ n: 9007199254740993n }]);
    assert.deepEqual(await cluster.runTx((tx) => tx.query(sql)), [{ n: 9007199254740993n }]);
  },
  {
    config: {
      types: {
        getTypeParser: (oid, format) =>
          oid === 20 ? BigInt : pg.types.getTypeParser(oid, format) as (v: string) => unknown,
      },
    },
  },
);
