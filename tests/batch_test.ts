import assert from "node:assert/strict";
import { connect as tcpConnect, createServer, type Server, type Socket } from "node:net";
import { BatchError, type Cluster, connect, DbxError } from "../mod.ts";
import { checkBatch } from "../src/tx/batch_check.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { dbTest as dbTestAny } from "../src/testing/mod.ts";

/**
 * Batches run on a pooled connection; these tests compare backend pids of
 * that connection with later statements, so the statements run pooled too.
 */
const dbTest = (
  name: string,
  fn: Parameters<typeof dbTestAny>[1],
  options: Parameters<typeof dbTestAny>[2] = {},
) => dbTestAny(name, fn, { config: { pipeline: false, ...options.config } });

/** Every primary connection is back in the pool, idle, and nothing is running. */
function assertPoolIdle(cluster: Cluster): void {
  const primary = cluster.stats().nodes[0]!;
  assert.equal(primary.idleConns, primary.totalConns);
  assert.equal(primary.inFlight, 0);
}

async function freshTable(cluster: Cluster): Promise<void> {
  await cluster.exec("drop table if exists batch_t");
  await cluster.exec("create table batch_t(id int primary key, s text)");
}

async function ids(cluster: Cluster): Promise<number[]> {
  const rows = await cluster.query<{ id: number }>("select id from batch_t order by id");
  return rows.map((r) => r.id);
}

async function backendPid(cluster: Cluster): Promise<number> {
  return (await cluster.queryRow<{ pid: number }>("select pg_backend_pid() as pid")).pid;
}

/** Pool of one connection: a batch that left it idle hands the same backend back. */
const ONE_CONNECTION = { config: { pool: { max: 1 } } };

Deno.test("checkBatch() accepts [] and names the first bad entry", () => {
  checkBatch([]);
  checkBatch([{ sql: "select 1" }, { sql: "select $1", args: [1] }]);
  const cases: [unknown, ErrorConstructor, RegExp][] = [
    ["select 1", TypeError, /'queries' must be an array: current value is "select 1"/],
    [null, TypeError, /'queries' must be an array: current value is null/],
    [[{ sql: "select 1" }, 5], TypeError, /'queries\[1\]' must be an object/],
    // deno-lint-ignore no-sparse-arrays
    [[{ sql: "select 1" }, , { sql: "x" }], TypeError, /'queries\[1\]' must be an object/],
    [[{ sql: "a" }, { sql: "b" }, { sql: "c" }, { sql: 4 }], TypeError, /'queries\[3\]\.sql'/],
    [[{ text: "select 1" }], TypeError, /'queries\[0\]\.sql' must be a string: .* undefined/],
    [[{ sql: "  " }], RangeError, /'queries\[0\]\.sql' must not be empty/],
    [[{ sql: "select $1", args: 1 }], TypeError, /'queries\[0\]\.args' must be an array/],
  ];
  for (const [queries, type, message] of cases) {
    assert.throws(
      () => checkBatch(queries),
      (err: unknown) =>
        err instanceof type && err.constructor === type && message.test(err.message) &&
        err.message.startsWith("Cannot run sendBatch() as "),
      String(message),
    );
  }
});

dbTest("sendBatch() returns every statement's result in order", async (cluster) => {
  await freshTable(cluster);
  const pid = await backendPid(cluster);
  const results = await cluster.sendBatch([
    { sql: "insert into batch_t values ($1, $2), ($3, $4)", args: [1, "a", 2, "b"] },
    { sql: "update batch_t set s = upper(s) where id = $1", args: [2] },
    { sql: "select id, s from batch_t order by id" },
    { sql: "delete from batch_t where id = 1 returning s" },
    { sql: "create temporary table batch_tmp(x int)" },
    { sql: "select pg_backend_pid() as pid" },
  ]);
  assert.deepEqual(results, [
    { command: "INSERT", rowCount: 2, rows: [] },
    { command: "UPDATE", rowCount: 1, rows: [] },
    { command: "SELECT", rowCount: 2, rows: [{ id: 1, s: "a" }, { id: 2, s: "B" }] },
    { command: "DELETE", rowCount: 1, rows: [{ s: "a" }] },
    { command: "CREATE", rowCount: 0, rows: [] },
    { command: "SELECT", rowCount: 1, rows: [{ pid }] },
  ]);
  assert.deepEqual(await ids(cluster), [2]);
  assertPoolIdle(cluster);
  assert.equal(await backendPid(cluster), pid, "the batch's connection is idle and reused");
  await cluster.exec("drop table batch_t");
}, ONE_CONNECTION);

dbTest(
  "an atomic batch that fails rolls everything back and names the statement",
  async (cluster) => {
    await freshTable(cluster);
    await cluster.exec("insert into batch_t values (9, 'existing')");
    const pid = await backendPid(cluster);
    const err = await cluster.sendBatch([
      { sql: "insert into batch_t values (1, 'x')" },
      { sql: "insert into batch_t values ($1, $2)", args: [2, "y"] },
      { sql: "insert into batch_t values (9, 'duplicate')" },
      { sql: "insert into batch_t values (3, 'z')" },
    ]).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof BatchError, String(err));
    assert.ok(err instanceof DbxError);
    assert.equal(err.name, "BatchError");
    assert.equal(err.batchIndex, 2);
    assert.equal(err.code, "23505");
    assert.equal(err.kind, "unique_violation");
    assert.equal(err.node, cluster.stats().nodes[0]!.name);
    assert.equal((err.cause as { code?: string }).code, "23505", "cause is the driver's error");
    assert.match(err.message, /^batch statement 2 failed: duplicate key value/);
    assert.deepEqual(await ids(cluster), [9], "nothing from the batch was kept");
    assertPoolIdle(cluster);
    assert.equal(await backendPid(cluster), pid, "the connection was rolled back and kept");
    await cluster.exec("drop table batch_t");
  },
  ONE_CONNECTION,
);

dbTest("an atomic batch whose COMMIT fails reports batchIndex = length", async (cluster) => {
  await cluster.exec("drop table if exists batch_deferred");
  await cluster.exec(
    "create table batch_deferred(id int, constraint u unique (id) deferrable initially deferred)",
  );
  const err = await cluster.sendBatch([
    { sql: "insert into batch_deferred values (1)" },
    { sql: "insert into batch_deferred values (1)" },
  ]).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof BatchError, String(err));
  assert.equal(err.batchIndex, 2);
  assert.equal(err.code, "23505");
  assert.deepEqual(await cluster.query("select * from batch_deferred"), []);
  assertPoolIdle(cluster);
  await cluster.exec("drop table batch_deferred");
});

dbTest(
  "an atomic batch with a value pg cannot send rolls back instead of committing",
  async (cluster) => {
    await freshTable(cluster);
    const err = await cluster.sendBatch([
      { sql: "insert into batch_t values (1, 'kept?')" },
      { sql: "insert into batch_t values ($1, $2)", args: [2, { big: 1n }] },
      { sql: "insert into batch_t values (3, 'kept?')" },
    ]).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof BatchError, String(err));
    assert.equal(err.batchIndex, 1);
    assert.ok(err.cause instanceof TypeError, "the serialisation error");
    assert.deepEqual(await ids(cluster), [], "statements 0 and 2 ran, and were rolled back");
    assertPoolIdle(cluster);
    await cluster.exec("drop table batch_t");
  },
);

dbTest("a non-atomic batch settles each statement on its own", async (cluster) => {
  await freshTable(cluster);
  const pid = await backendPid(cluster);
  const settled = await cluster.sendBatch([
    { sql: "insert into batch_t values (1, 'x')" },
    { sql: "insert into batch_t values (1, 'again')" },
    { sql: "select count(*)::int as n from batch_t" },
    { sql: "insert into batch_t values ($1, $2)", args: [2, { big: 1n }] },
    { sql: "insert into batch_t values (3, 'z')" },
    { sql: "select 1; select 2" },
    { sql: "select * from no_such_batch_table" },
  ], { atomic: false });
  assert.deepEqual(settled.map((r) => r.status), [
    "fulfilled",
    "rejected",
    "fulfilled",
    "rejected",
    "fulfilled",
    "rejected",
    "rejected",
  ]);
  const reasons = settled.map((r) => r.status === "rejected" ? r.reason as BatchError : undefined);
  for (const [i, reason] of reasons.entries()) {
    if (reason === undefined) continue;
    assert.ok(reason instanceof BatchError);
    assert.equal(reason.batchIndex, i);
  }
  assert.equal(reasons[1]!.code, "23505");
  assert.ok(reasons[3]!.cause instanceof TypeError);
  assert.equal(reasons[5]!.code, "42601", "one statement per entry");
  assert.equal(reasons[6]!.code, "42P01");
  assert.deepEqual(settled[2], {
    status: "fulfilled",
    value: { command: "SELECT", rowCount: 1, rows: [{ n: 1 }] },
  });
  assert.deepEqual(await ids(cluster), [1, 3], "the good statements were kept");
  assertPoolIdle(cluster);
  assert.equal(await backendPid(cluster), pid, "a failing last statement leaves it idle");
  await cluster.exec("drop table batch_t");
}, ONE_CONNECTION);

dbTest(
  "a non-atomic batch that leaves a transaction open does not pool its connection",
  async (cluster) => {
    await freshTable(cluster);
    const pid = await backendPid(cluster);
    const settled = await cluster.sendBatch([
      { sql: "begin" },
      { sql: "insert into batch_t values (1, 'never committed')" },
    ], { atomic: false });
    assert.deepEqual(settled.map((r) => r.status), ["fulfilled", "fulfilled"]);
    assertPoolIdle(cluster);
    const next = await backendPid(cluster);
    assert.notEqual(next, pid, "the connection in a transaction was closed");
    assert.deepEqual(await ids(cluster), []);
    // The same for a transaction left failed.
    const failed = await cluster.sendBatch([
      { sql: "begin" },
      { sql: "select 1/0" },
    ], { atomic: false });
    assert.deepEqual(failed.map((r) => r.status), ["fulfilled", "rejected"]);
    assertPoolIdle(cluster);
    assert.notEqual(
      await backendPid(cluster),
      next,
      "the failed transaction's connection was closed",
    );
    await cluster.exec("drop table batch_t");
  },
  ONE_CONNECTION,
);

dbTest("an empty batch resolves to [] without touching the server", async (cluster) => {
  const before = cluster.stats().nodes[0]!;
  assert.deepEqual(await cluster.sendBatch([]), []);
  assert.deepEqual(await cluster.sendBatch([], { atomic: false }), []);
  const after = cluster.stats().nodes[0]!;
  assert.equal(after.queries, before.queries);
  assert.equal(after.totalConns, before.totalConns);
});

dbTest(
  "sendBatch() rejects bad input naming the entry, before anything is sent",
  async (cluster) => {
    const before = cluster.stats().nodes[0]!.queries;
    await assert.rejects(
      cluster.sendBatch([{ sql: "select 1" }, { sql: 5 as unknown as string }]),
      (e) => e instanceof TypeError && /'queries\[1\]\.sql' must be a string/.test(e.message),
    );
    await assert.rejects(
      cluster.sendBatch([{ sql: "select 1", args: "x" as unknown as unknown[] }]),
      /'queries\[0\]\.args' must be an array/,
    );
    await assert.rejects(
      cluster.sendBatch("select 1" as unknown as []),
      /'queries' must be an array/,
    );
    await assert.rejects(
      cluster.sendBatch([{ sql: "select 1" }], { atomic: "yes" as unknown as true }),
      /'options.atomic' must be a boolean/,
    );
    assert.equal(cluster.stats().nodes[0]!.queries, before);
    assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
  },
);

/**
 * A TCP proxy that can hold back the server's answers while still passing the
 * client's bytes on: with answers held, only a client that pipelines gets
 * more than its first statement to the server.
 */
async function answerGate(target: string): Promise<{
  url: string;
  hold(): void;
  release(): void;
  close(): Promise<void>;
}> {
  const { hostname, port } = new URL(target);
  const sockets = new Set<Socket>();
  let held: (() => void)[] | undefined;
  const track = (socket: Socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.once("close", () => sockets.delete(socket));
  };
  const server: Server = createServer((client) => {
    const upstream = tcpConnect({ host: hostname, port: Number(port) });
    track(client);
    track(upstream);
    client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => {
      if (held === undefined) client.write(chunk);
      else held.push(() => client.write(chunk));
    });
    client.once("close", () => upstream.destroy());
    upstream.once("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = new URL(target);
  url.hostname = "127.0.0.1";
  url.port = String((server.address() as { port: number }).port);
  return {
    url: url.href,
    hold: () => {
      held = [];
    },
    release: () => {
      const pending = held ?? [];
      held = undefined;
      for (const write of pending) write();
    },
    close: async () => {
      const closed = new Promise((resolve) => server.close(resolve));
      const gone = [...sockets].map((s) => new Promise((r) => s.once("close", r)));
      for (const s of sockets) s.destroy();
      await Promise.all([closed, ...gone]);
    },
  };
}

dbTest(
  "a batch is one round trip: every statement reaches the server before any answer returns",
  async (direct) => {
    await freshTable(direct);
    const gate = await answerGate(testDatabaseUrls()!.master);
    try {
      await using cluster = await connect({
        master: gate.url,
        pool: { max: 1 },
        pipeline: false,
        // No probe may wait on held answers during the test.
        healthCheck: { intervalMs: 600_000 },
      });
      await cluster.query("select 1");
      gate.hold();
      let settled = false;
      const batch = cluster.sendBatch([
        { sql: "insert into batch_t values (1, 'a')" },
        { sql: "insert into batch_t values ($1, $2)", args: [2, "b"] },
        { sql: "insert into batch_t values (3, 'c')" },
      ]).finally(() => settled = true);
      // With answers held, a client that waits for each answer would have
      // sent only BEGIN: the committed rows prove the whole batch (COMMIT
      // included) went out at once.
      const deadline = Date.now() + 10_000;
      while ((await ids(direct)).length < 3) {
        assert.ok(Date.now() < deadline, "the batch did not reach the server as a whole");
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.equal(settled, false, "no answer reached the client yet");
      gate.release();
      assert.deepEqual((await batch).map((r) => r.command), ["INSERT", "INSERT", "INSERT"]);
      assertPoolIdle(cluster);
    } finally {
      gate.release();
      await gate.close();
    }
    assert.deepEqual(await ids(direct), [1, 2, 3]);
    await direct.exec("drop table batch_t");
  },
);
