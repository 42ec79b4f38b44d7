/**
 * `cluster.subscribe()` on PostgreSQL 18: decoding, the server checks, exact
 * acknowledgement (adjacent commits), a handler that throws; plus the protocol
 * bytes and argument checks without a server.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { type Change, type ChangeReconnectInfo, Cluster, ReplicationSetupError } from "../mod.ts";
import { decodePgOutput, decodeReplication, encodeStatusUpdate } from "../src/listen/pgoutput.ts";
import { startLocalCluster } from "../src/testing/local_cluster.ts";
import { findPgBinaries } from "../src/testing/local_cluster.ts";
import { logicalCluster, named18, noPg18, Recorder, waitFor } from "./subscribe_harness.ts";

Deno.test("encodeStatusUpdate() acknowledges exactly the position given, never + 1", () => {
  const bytes = encodeStatusUpdate(0x1_0000_00ffn, 0x1_0000_0100n, Date.UTC(2000, 0, 1));
  const view = new DataView(bytes.buffer);
  assert.equal(bytes.length, 34);
  assert.equal(String.fromCharCode(bytes[0]!), "r");
  assert.equal(view.getBigUint64(1), 0x1_0000_0100n, "written: what was received");
  assert.equal(view.getBigUint64(9), 0x1_0000_00ffn, "flushed: the acknowledged position");
  assert.equal(view.getBigUint64(17), 0x1_0000_00ffn, "applied: the acknowledged position");
  assert.equal(view.getBigInt64(25), 0n, "the clock counts from 2000-01-01");
  assert.equal(bytes[33], 0, "no reply requested");
});

Deno.test("decodeReplication() and decodePgOutput() read keepalives, begin and commit", () => {
  const keepalive = new Uint8Array(18);
  const k = new DataView(keepalive.buffer);
  k.setUint8(0, "k".charCodeAt(0));
  k.setBigUint64(1, 0x2_0000_0010n);
  k.setUint8(17, 1);
  assert.deepEqual(decodeReplication(keepalive), {
    tag: "keepalive",
    walEnd: 0x2_0000_0010n,
    replyRequested: true,
  });
  const commit = new Uint8Array(26);
  const c = new DataView(commit.buffer);
  c.setUint8(0, "C".charCodeAt(0));
  c.setBigUint64(2, 100n);
  c.setBigUint64(10, 140n);
  assert.deepEqual(decodePgOutput(commit), {
    tag: "commit",
    commitLsn: 100n,
    endLsn: 140n,
    commitTime: new Date(Date.UTC(2000, 0, 1)),
  });
  assert.deepEqual(
    decodePgOutput(new Uint8Array([..."Y".split("").map((ch) => ch.charCodeAt(0))])),
    {
      tag: "other",
      code: "Y",
    },
  );
  assert.throws(() => decodePgOutput(new Uint8Array(["B".charCodeAt(0), 0, 0])), RangeError);
});

Deno.test("subscribe() rejects bad arguments naming the field and value", async () => {
  await using cluster = new Cluster("postgres://app@127.0.0.1:1/app");
  const handler = () => {};
  const cases: [unknown[], string, string][] = [
    [["", handler, { slot: "s" }], "TypeError", "'publication' must be a non-empty string"],
    [["p", "nope", { slot: "s" }], "TypeError", "'handler' must be a function"],
    [["p", handler, undefined], "TypeError", "'options' must be an object with 'slot'"],
    [["p", handler, { slot: "Bad-Name" }], "TypeError", "'options.slot' must be 1 to 63"],
    [
      ["p", handler, { slot: "s", create: "yes" }],
      "TypeError",
      "'options.create' must be a boolean",
    ],
    [
      ["p", handler, { slot: "s", from: "nowhere" }],
      "TypeError",
      "'options.from' must be a WAL position",
    ],
    [
      ["p", handler, { slot: "s", timeoutMs: -1 }],
      "RangeError",
      "'options.timeoutMs' must be a positive",
    ],
  ];
  for (const [args, name, message] of cases) {
    await assert.rejects(
      (cluster.subscribe as (...a: unknown[]) => Promise<unknown>)(...args),
      (error: Error) => error.name === name && error.message.includes(message),
      `${JSON.stringify(args[2])} should fail with ${message}`,
    );
  }
});

Deno.test({
  name: named18(
    "subscribe() decodes inserts, updates, deletes and truncate with the cluster's parsers",
  ),
  ignore: noPg18,
  async fn() {
    await using db = await logicalCluster();
    const { cluster } = db;
    await cluster.exec(`create table kinds (id int primary key, name text, at timestamptz,
      flag bool, doc jsonb, big bigint, amount numeric, tags text[])`);
    await cluster.exec("create table full_rows (id int primary key, name text)");
    await cluster.exec("alter table full_rows replica identity full");
    await cluster.exec("create publication kinds_pub for table kinds, full_rows");
    const recorder = new Recorder();
    await using sub = await cluster.subscribe("kinds_pub", recorder.handler, {
      slot: "kinds_slot",
      create: true,
    });
    assert.match(sub.position, /^[0-9A-F]+\/[0-9A-F]+$/);
    const at = new Date("2026-12-03T10:00:00.123Z");
    await cluster.exec(
      "insert into kinds values (1, 'a', $1, true, $2, 9007199254740993, 12.50, $3)",
      [at, JSON.stringify({ k: [1, "x"] }), ["x", "y z"]],
    );
    await cluster.exec("insert into kinds (id, name) values (2, null)");
    await cluster.exec("update kinds set name = 'b', flag = false where id = 1");
    await cluster.exec("update kinds set id = 3 where id = 2");
    await cluster.exec("delete from kinds where id = 1");
    await cluster.exec("insert into full_rows values (1, 'old')");
    await cluster.exec("update full_rows set name = 'new' where id = 1");
    await cluster.exec("delete from full_rows where id = 1");
    await cluster.exec("truncate kinds, full_rows");
    await waitFor(
      "10 changes were delivered",
      () => recorder.changes.length >= 10 || undefined,
      () => recorder.summary(),
    );
    const got = recorder.changes.map(({ op, schema, table, new: row, old, key }) => ({
      op,
      schema,
      table,
      ...(row === undefined ? {} : { new: row }),
      ...(old === undefined ? {} : { old }),
      ...(key === undefined ? {} : { key }),
    }));
    const kinds = { schema: "public", table: "kinds" };
    const full = { schema: "public", table: "full_rows" };
    const row1 = {
      id: 1,
      name: "a",
      at,
      flag: true,
      doc: { k: [1, "x"] },
      big: "9007199254740993",
      amount: "12.50",
      tags: ["x", "y z"],
    };
    const empty = { at: null, flag: null, doc: null, big: null, amount: null, tags: null };
    assert.deepEqual(got, [
      { op: "insert", ...kinds, new: row1, key: { id: 1 } },
      { op: "insert", ...kinds, new: { id: 2, name: null, ...empty }, key: { id: 2 } },
      { op: "update", ...kinds, new: { ...row1, name: "b", flag: false }, key: { id: 1 } },
      { op: "update", ...kinds, new: { id: 3, name: null, ...empty }, key: { id: 2 } },
      { op: "delete", ...kinds, key: { id: 1 } },
      // With REPLICA IDENTITY FULL the whole row is the key.
      { op: "insert", ...full, new: { id: 1, name: "old" }, key: { id: 1, name: "old" } },
      {
        op: "update",
        ...full,
        new: { id: 1, name: "new" },
        old: { id: 1, name: "old" },
        key: { id: 1, name: "old" },
      },
      { op: "delete", ...full, old: { id: 1, name: "new" }, key: { id: 1, name: "new" } },
      { op: "truncate", ...kinds },
      { op: "truncate", ...full },
    ]);
    assert.equal(recorder.changes.length, 10, recorder.summary());
    // One transaction per statement: each change carries its own commit; a truncate of two
    // tables is one transaction.
    const commits = new Set(recorder.changes.map((c) => c.commitLsn));
    assert.equal(commits.size, 9);
    assert.equal(recorder.changes[8]!.xid, recorder.changes[9]!.xid);
    for (const c of recorder.changes) assert.ok(c.commitTime instanceof Date);
    await waitFor("the slot is acknowledged past the truncate", async () => {
      const [row] = await cluster.query<{ ok: boolean }>(
        "select confirmed_flush_lsn > $1::pg_lsn as ok from pg_replication_slots where slot_name = 'kinds_slot'",
        [recorder.changes[9]!.commitLsn],
      );
      return row?.ok === true ? true : undefined;
    }, () => `position ${sub.position}`);
  },
});

Deno.test({
  name: named18("subscribe() names every missing server setting"),
  ignore: noPg18,
  async fn(t) {
    await using db = await logicalCluster();
    const { cluster, local } = db;
    const setupError = async (publication: string, slot: string, create = false) => {
      const error = await cluster.subscribe(publication, () => {}, { slot, create }).then(
        () => assert.fail("subscribe() should have failed"),
        (e: unknown) => e,
      );
      assert.ok(error instanceof ReplicationSetupError, String(error));
      return error;
    };
    await t.step("a missing slot and publication", async () => {
      const error = await setupError("nope_pub", "no_slot");
      assert.equal(error.problems.length, 2, error.message);
      assert.match(error.problems[0]!, /publication "nope_pub" does not exist/);
      assert.match(error.problems[1]!, /slot "no_slot" does not exist; pass create: true/);
    });
    await t.step("a slot without failover", async () => {
      await cluster.exec(
        "select pg_create_logical_replication_slot('plain_slot', 'pgoutput', false, false, false)",
      );
      const error = await setupError("items_pub", "plain_slot");
      assert.match(error.message, /"plain_slot" has failover = false/);
      await cluster.exec("select pg_drop_replication_slot('plain_slot')");
    });
    await t.step(
      "synchronized_standby_slots empty, or naming a slot that does not exist",
      async () => {
        await cluster.exec("alter system set synchronized_standby_slots = ''");
        await cluster.exec("select pg_reload_conf()");
        await waitFor(
          "the reload took effect",
          async () =>
            (await cluster.queryRow<{ v: string }>(
                "select current_setting('synchronized_standby_slots') as v",
              )).v ===
              "" ||
            undefined,
          () => "still set",
        );
        let error = await setupError("items_pub", "s1", true);
        assert.ok(error.problems.some((p) => p.startsWith("synchronized_standby_slots is empty")));
        await cluster.exec("alter system set synchronized_standby_slots = 'ghost'");
        await cluster.exec("select pg_reload_conf()");
        await waitFor(
          "the reload took effect",
          async () =>
            (await cluster.queryRow<{ v: string }>(
                "select current_setting('synchronized_standby_slots') as v",
              )).v ===
              "ghost" || undefined,
          () => "not yet",
        );
        error = await setupError("items_pub", "s1", true);
        assert.ok(
          error.problems.some((p) => p.includes(`names "ghost", which is not a physical slot`)),
          error.message,
        );
        assert.equal(error.problems.length, 1, error.message);
        // replica1 is no failover target then: a warning, not an error.
        assert.ok(
          db.logger.entries.some((e) =>
            e.level === "warn" && /not in synchronized_standby_slots/.test(e.msg)
          ),
        );
        await cluster.exec("alter system reset synchronized_standby_slots");
        await cluster.exec("select pg_reload_conf()");
        await waitFor("the reset took effect", async () =>
          (await cluster.queryRow<{ v: string }>(
              "select current_setting('synchronized_standby_slots') as v",
            )).v === "replica1" || undefined, () => "not yet");
      },
    );
    await t.step("a replica that does not sync slots", async () => {
      const replica = new pg.Client({ connectionString: local.replicaUrls[0] });
      await replica.connect();
      try {
        await replica.query("alter system set sync_replication_slots = off");
        await replica.query("select pg_reload_conf()");
        await waitFor(
          "the replica's reload took effect",
          async () =>
            (await replica.query("show sync_replication_slots")).rows[0]?.sync_replication_slots ===
              "off" || undefined,
          () => "still on",
        );
        const error = await setupError("items_pub", "s1", true);
        assert.ok(
          error.problems.some((p) => p.startsWith("sync_replication_slots is off on replica")),
          error.message,
        );
      } finally {
        await replica.query("alter system reset sync_replication_slots");
        await replica.query("select pg_reload_conf()");
        await replica.end();
      }
    });
  },
});

const pg15 = await findPgBinaries({ pgVersion: 15 });
Deno.test({
  name: pg15 === undefined
    ? "subscribe() refuses PostgreSQL before 17 [ignored: no PostgreSQL 15 binaries]"
    : "subscribe() refuses PostgreSQL before 17, saying why",
  ignore: pg15 === undefined,
  async fn() {
    await using local = await startLocalCluster({ replicas: 0, pgVersion: 15 });
    await using cluster = new Cluster({ master: local.masterUrl });
    await cluster.start();
    await assert.rejects(
      cluster.subscribe("p", () => {}, { slot: "s", create: true }),
      (error: Error) =>
        error instanceof ReplicationSetupError &&
        /runs PostgreSQL 15\.\d+.*: change streams need PostgreSQL 17 or later/.test(error.message),
    );
  },
});

/** Commits two transactions whose commit records are adjacent in the WAL. */
async function adjacentCommits(url: string, first: number, second: number): Promise<void> {
  const a = new pg.Client({ connectionString: url });
  const b = new pg.Client({ connectionString: url });
  await a.connect();
  await b.connect();
  try {
    await a.query("begin");
    await b.query("begin");
    await a.query("insert into items values ($1, $1, 'a')", [first]);
    await b.query("insert into items values ($1, $1, 'b')", [second]);
    // Both inserts are in the WAL; only the two commit records follow, back to back.
    await a.query("commit");
    await b.query("commit");
  } finally {
    await a.end();
    await b.end();
  }
}

Deno.test({
  name: named18(
    "subscribe() acknowledges a commit's end exactly: of two adjacent commits, the second is redelivered after a restart",
  ),
  ignore: noPg18,
  async fn() {
    await using db = await logicalCluster();
    const { cluster, local } = db;
    const seen: Change[] = [];
    const positions: string[] = [];
    let failOn: number | undefined;
    const reconnects: ChangeReconnectInfo[] = [];
    await using sub = await cluster.subscribe("items_pub", (change) => {
      seen.push(change);
      positions.push(sub.position);
      // The second transaction fails once: the stream restarts from the first one's end.
      if (change.new?.id === failOn) {
        failOn = undefined;
        throw new Error("not now");
      }
    }, { slot: "adjacent", create: true, onReconnect: (info) => reconnects.push(info) });
    // Other WAL (a checkpoint, autovacuum) may land between the two commits: then try again.
    const tried: string[] = [];
    for (let pair = 0; pair < 5; pair++) {
      const [a, b] = [1000 + pair, 2000 + pair];
      const before = seen.length;
      failOn = b;
      await adjacentCommits(local.masterUrl, a, b);
      await waitFor(
        `the second transaction (${b}) is delivered again`,
        () => seen.filter((c) => c.new?.id === b).length >= 2 || undefined,
        () => JSON.stringify(seen.map((c) => [c.new?.id, c.commitLsn, c.lsn])),
      );
      const first = seen.find((c) => c.new?.id === a)!;
      const second = seen.find((c) => c.new?.id === b)!;
      // When the second change was handled, the first transaction was acknowledged at its
      // end; adjacent, that is exactly where the second commit record starts.
      const ackBeforeSecond = positions[seen.indexOf(second)]!;
      if (ackBeforeSecond !== second.commitLsn) {
        tried.push(`${first.commitLsn} then ${second.commitLsn}, acknowledged ${ackBeforeSecond}`);
        continue;
      }
      assert.deepEqual(seen.slice(before).map((c) => c.new?.id), [a, b, b]);
      assert.equal(reconnects.at(-1)!.reason, "handler_failed");
      assert.equal(reconnects.at(-1)!.position, second.commitLsn);
      break;
    }
    assert.ok(tried.length < 5, `no two commits were adjacent: ${tried.join("; ")}`);
    assert.ok(db.logger.entries.some((e) => e.level === "error" && /handler threw/.test(e.msg)));
  },
});

Deno.test({
  name: named18(
    "subscribe() stops acknowledging at a transaction whose handler throws and redelivers it whole",
  ),
  ignore: noPg18,
  async fn() {
    await using db = await logicalCluster();
    const { cluster } = db;
    const changes: Change[] = [];
    const seen: number[] = [];
    let failures = 0;
    const blocked = Promise.withResolvers<void>();
    await using sub = await cluster.subscribe("items_pub", (change) => {
      const id = change.new?.id as number;
      changes.push(change);
      seen.push(id);
      // Transaction 2 (ids 20, 21, 22) fails at its second row, three times.
      if (id === 21 && failures < 3) {
        failures++;
        if (failures === 3) blocked.resolve();
        throw new Error(`failure ${failures}`);
      }
    }, { slot: "throws", create: true });
    await cluster.exec("insert into items values (10, 1), (11, 1), (12, 1)");
    await cluster.exec("insert into items values (20, 2), (21, 2), (22, 2)");
    await cluster.exec("insert into items values (30, 3), (31, 3), (32, 3)");
    await blocked.promise;
    // Nothing of transaction 2 or later was acknowledged, here or on the server.
    const second = changes.find((c) => c.new?.id === 20)!.commitLsn;
    const [row] = await cluster.query<{ mine: boolean; server: boolean }>(
      `select $1::pg_lsn <= $2::pg_lsn as mine, confirmed_flush_lsn <= $2::pg_lsn as server
         from pg_replication_slots where slot_name = 'throws'`,
      [sub.position, second],
    );
    assert.deepEqual(row, { mine: true, server: true }, `position ${sub.position}, tx 2 ${second}`);
    await waitFor(
      "transaction 3 is delivered",
      () => seen.includes(32) || undefined,
      () => `seen ${seen}`,
    );
    // Each failure redelivers transaction 2 from its first row; transaction 3 only follows it.
    assert.deepEqual(seen, [10, 11, 12, 20, 21, 20, 21, 20, 21, 20, 21, 22, 30, 31, 32]);
    await waitFor("transaction 3 is acknowledged", async () => {
      const [at] = await cluster.query<{ ok: boolean }>(
        "select confirmed_flush_lsn > $1::pg_lsn as ok from pg_replication_slots where slot_name = 'throws'",
        [changes.at(-1)!.commitLsn],
      );
      return at?.ok === true ? true : undefined;
    }, () => `position ${sub.position}`);
  },
});

Deno.test({
  name: named18("subscribe() resumes where close() left off, and close() is idempotent"),
  ignore: noPg18,
  async fn() {
    await using db = await logicalCluster();
    const { cluster } = db;
    const first = new Recorder();
    const sub = await cluster.subscribe("items_pub", first.handler, {
      slot: "resume",
      create: true,
    });
    await cluster.exec("insert into items values (1, 1), (2, 1)");
    await waitFor(
      "the first rows are delivered",
      () => first.changes.length >= 2 || undefined,
      () => first.summary(),
    );
    const closing = sub.close();
    assert.equal(sub.close(), closing);
    await closing;
    assert.equal(sub.node, undefined);
    await cluster.exec("insert into items values (3, 2)");
    const second = new Recorder();
    await using again = await cluster.subscribe("items_pub", second.handler, { slot: "resume" });
    await waitFor(
      "the row written while closed is delivered",
      () => second.changes.length >= 1 || undefined,
      () => second.summary(),
    );
    assert.deepEqual(second.changes.map((c) => c.new?.id), [3]);
    assert.ok(again.node !== undefined);
    // The signal ends a subscription like close(); what it handled stays acknowledged.
    await again.close();
    const abort = new AbortController();
    const third = new Recorder();
    const viaSignal = await cluster.subscribe("items_pub", third.handler, {
      slot: "resume",
      signal: abort.signal,
    });
    await cluster.exec("insert into items values (4, 3)");
    await waitFor(
      "row 4 is delivered",
      () => third.changes.length >= 1 || undefined,
      () => third.summary(),
    );
    abort.abort();
    await viaSignal.close();
    assert.equal(viaSignal.node, undefined);
    assert.deepEqual(third.changes.map((c) => c.new?.id), [4]);
    // Its JSON shows what it streams, nothing of its connection.
    assert.equal(JSON.stringify(viaSignal), `{"publication":"items_pub","slot":"resume"}`);
  },
});
