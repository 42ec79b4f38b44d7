import assert from "node:assert/strict";
import type { Cluster } from "../mod.ts";
import { DbxError, isSerializationFailure, type Tx } from "../mod.ts";
import { withExecutor } from "../mod.ts";
import { dbTest, runInTx, testLogger } from "../src/testing/mod.ts";

/** Every connection of the primary's pool is back and idle. */
function assertPoolIdle(cluster: Cluster): void {
  const primary = cluster.stats().nodes[0]!;
  assert.equal(primary.idleConns, primary.totalConns, "every connection went back idle");
  assert.equal(primary.inFlight, 0);
}

async function freshTable(cluster: Cluster, name: string): Promise<void> {
  await cluster.exec(`drop table if exists ${name}`);
  await cluster.exec(`create table ${name}(id int primary key, v int not null default 0)`);
}

dbTest("begin() applies the isolation level, read-only and deferrable", async (cluster) => {
  for (const isolation of ["read committed", "repeatable read", "serializable"] as const) {
    const tx = await cluster.begin({ isolation });
    const row = await tx.queryRow<{ iso: string }>(
      "select current_setting('transaction_isolation') as iso",
    );
    assert.equal(row.iso, isolation);
    await tx.rollback();
  }
  const tx = await cluster.begin({ isolation: "serializable", readOnly: true, deferrable: true });
  const row = await tx.queryRow<{ ro: string; d: string }>(
    "select current_setting('transaction_read_only') as ro, current_setting('transaction_deferrable') as d",
  );
  assert.deepEqual(row, { ro: "on", d: "on" });
  await tx.commit();
  assertPoolIdle(cluster);
});

dbTest("begin() rejects an unknown isolation level before touching the server", async (cluster) => {
  await assert.rejects(
    cluster.begin({ isolation: "snapshot" as "serializable" }),
    (err) =>
      err instanceof RangeError && /'options.isolation'.*"snapshot"/.test(err.message) &&
      err.message.includes('"serializable"'),
  );
  assert.equal(cluster.stats().nodes[0]!.queries, 0);
});

dbTest(
  "a write in a read-only transaction fails with 25006 and is not retried",
  async (cluster) => {
    await freshTable(cluster, "tx_ro");
    const before = cluster.stats().nodes[0]!.queries;
    await assert.rejects(
      cluster.runTx((tx) => tx.exec("insert into tx_ro(id) values (1)"), { readOnly: true }),
      (err) => err instanceof DbxError && err.code === "25006" && err.kind === "read_only",
    );
    // begin, insert, rollback: three statements, no retry.
    assert.equal(cluster.stats().nodes[0]!.queries - before, 3);
    assert.deepEqual(await cluster.query("select * from tx_ro"), []);
    assertPoolIdle(cluster);
  },
);

dbTest("runTx() commits on return and returns the callback's value", async (cluster) => {
  await freshTable(cluster, "tx_commit");
  const result = await cluster.runTx(async (tx) => {
    await tx.exec("insert into tx_commit(id) values (1), (2)");
    return (await tx.query<{ id: number }>("select id from tx_commit order by id")).map((r) =>
      r.id
    );
  });
  assert.deepEqual(result, [1, 2]);
  assert.equal((await cluster.query("select * from tx_commit")).length, 2);
  assertPoolIdle(cluster);
});

dbTest("runTx() rolls back on throw and re-throws the original error", async (cluster) => {
  await freshTable(cluster, "tx_throw");
  const original = new Error("boom");
  const thrown = await cluster.runTx(async (tx) => {
    await tx.exec("insert into tx_throw(id) values (1)");
    throw original;
  }).catch((e: unknown) => e);
  assert.equal(thrown, original, "the very same error object");
  assert.equal(original.cause, undefined, "a successful rollback attaches nothing");
  assert.deepEqual(await cluster.query("select * from tx_throw"), []);
  assertPoolIdle(cluster);
});

dbTest(
  "commit() of a transaction broken by a failed statement throws and keeps nothing",
  async (cluster) => {
    await freshTable(cluster, "tx_broken");
    const tx = await cluster.begin();
    await tx.exec("insert into tx_broken(id) values (1)");
    await assert.rejects(
      tx.exec("insert into tx_broken(id) values (1)"),
      (e) => e instanceof DbxError && e.code === "23505",
    );
    await assert.rejects(tx.commit(), /rolled back by the server/);
    assert.equal(tx.active, false);
    await assert.rejects(tx.exec("select 1"), /already rolled back/);
    assert.deepEqual(await cluster.query("select * from tx_broken"), []);
    assertPoolIdle(cluster);
  },
);

dbTest("await using rolls back a transaction that was not committed", async (cluster) => {
  await freshTable(cluster, "tx_dispose");
  {
    await using tx = await cluster.begin();
    await tx.exec("insert into tx_dispose(id) values (1)");
  }
  assert.deepEqual(await cluster.query("select * from tx_dispose"), []);
  {
    await using tx = await cluster.begin();
    await tx.exec("insert into tx_dispose(id) values (2)");
    await tx.commit();
  }
  assert.deepEqual(await cluster.query("select id from tx_dispose"), [{ id: 2 }]);
  assertPoolIdle(cluster);
});

dbTest("calls after commit or rollback throw a clear error", async (cluster) => {
  const tx = await cluster.begin();
  await tx.commit();
  await assert.rejects(
    tx.query("select 1"),
    /Cannot run query\(\) as the transaction is already committed/,
  );
  await assert.rejects(
    tx.commit(),
    /Cannot run commit\(\) as the transaction is already committed/,
  );
  await assert.rejects(tx.rollback(), /already committed/);
  await tx[Symbol.asyncDispose](); // no-op, no throw
  const tx2 = await cluster.begin();
  await tx2.rollback();
  await assert.rejects(tx2.exec("select 1"), /already rolled back/);
  assertPoolIdle(cluster);
});

dbTest("statements inside runTx run in order on one connection", async (cluster) => {
  const pids = await cluster.runTx(async (tx) => {
    // Fired without awaiting in between: still one backend, in order.
    const all = await Promise.all(
      Array.from(
        { length: 5 },
        (_, i) =>
          tx.queryRow<{ pid: number; i: number }>("select pg_backend_pid() as pid, $1::int as i", [
            i,
          ]),
      ),
    );
    return all;
  });
  assert.equal(new Set(pids.map((p) => p.pid)).size, 1);
  assert.deepEqual(pids.map((p) => p.i), [0, 1, 2, 3, 4]);
});

dbTest(
  "getExecutor() returns the runTx transaction inside the callback, across awaits",
  async (cluster) => {
    assert.equal(cluster.getExecutor(), cluster);
    await cluster.runTx(async (tx) => {
      assert.equal(cluster.getExecutor(), tx);
      await new Promise((r) => setTimeout(r, 5));
      assert.equal(cluster.getExecutor(), tx);
      const inner = await (async () => {
        await Promise.resolve();
        return cluster.getExecutor();
      })();
      assert.equal(inner, tx);
      const viaExecutor = await cluster.getExecutor().queryRow<{ id: number }>(
        "select txid_current()::int as id",
      );
      const viaTx = await tx.queryRow<{ id: number }>("select txid_current()::int as id");
      assert.equal(viaExecutor.id, viaTx.id, "service code joined the same transaction");
    });
    assert.equal(cluster.getExecutor(), cluster);
  },
);

dbTest("concurrent runTx calls each see only their own transaction", async (cluster) => {
  await freshTable(cluster, "tx_concurrent");
  // Every transaction inserts, waits until all four have inserted, reads,
  // and waits until all four have read before committing: each reads while
  // the other three rows exist but are uncommitted.
  const barrier = (n: number) => {
    let arrived = 0;
    let open!: () => void;
    const opened = new Promise<void>((resolve) => (open = resolve));
    return () => (++arrived === n && open(), opened);
  };
  const inserted = barrier(4);
  const read = barrier(4);
  const seen = await Promise.all([1, 2, 3, 4].map((id) =>
    cluster.runTx(async (tx) => {
      await tx.exec("insert into tx_concurrent(id) values ($1)", [id]);
      await inserted();
      assert.equal(cluster.getExecutor(), tx);
      const rows = await cluster.getExecutor().query<{ id: number }>(
        "select id from tx_concurrent order by id",
      );
      await read();
      return rows.map((r) => r.id);
    })
  ));
  // Each transaction sees its own uncommitted row, never another's.
  assert.deepEqual(seen, [[1], [2], [3], [4]]);
  assert.equal((await cluster.query("select * from tx_concurrent")).length, 4);
  assertPoolIdle(cluster);
});

dbTest(
  "nested runTx uses a savepoint: the inner rollback keeps the outer work",
  async (cluster) => {
    await freshTable(cluster, "tx_nested");
    await cluster.runTx(async (outer) => {
      await outer.exec("insert into tx_nested(id) values (1)");
      await assert.rejects(
        cluster.runTx(async (inner) => {
          assert.notEqual(inner, outer);
          await inner.exec("insert into tx_nested(id) values (2)");
          throw new Error("inner fails");
        }),
        /inner fails/,
      );
      const value = await cluster.runTx(async (inner) => {
        await inner.exec("insert into tx_nested(id) values (3)");
        return "kept";
      });
      assert.equal(value, "kept");
    });
    const ids = await cluster.query<{ id: number }>("select id from tx_nested order by id");
    assert.deepEqual(ids.map((r) => r.id), [1, 3]);
    assertPoolIdle(cluster);
  },
);

dbTest("runTx({ retries }) re-runs the callback after a serialization failure", async (cluster) => {
  await freshTable(cluster, "tx_serial");
  await cluster.exec("insert into tx_serial(id, v) values (1, 0), (2, 0)");
  // Two serializable transactions each read both rows and write one: the
  // second to commit must fail with 40001, and its retry then succeeds.
  let runs = 0;
  let release!: () => void;
  const bothRead = new Promise<void>((r) => (release = r));
  let reads = 0;
  const work = (id: number) =>
    cluster.runTx(async (tx) => {
      runs++;
      const [{ s }] = await tx.query<{ s: number }>("select sum(v)::int as s from tx_serial") as [
        { s: number },
      ];
      if (++reads === 2) release();
      await bothRead;
      await tx.exec("update tx_serial set v = $1 where id = $2", [s + 1, id]);
      return s;
    }, { isolation: "serializable", retries: 3 });
  const results = await Promise.all([work(1), work(2)]);
  assert.equal(runs, 3, "one of the two ran twice");
  assert.deepEqual([...results].sort(), [0, 1], "the retried one saw the other's commit");
  assertPoolIdle(cluster);

  // Without retries the failure surfaces as a serialization failure.
  reads = 0;
  let release2!: () => void;
  const bothRead2 = new Promise<void>((r) => (release2 = r));
  const once = (id: number) =>
    cluster.runTx(async (tx) => {
      const [{ s }] = await tx.query<{ s: number }>("select sum(v)::int as s from tx_serial") as [
        { s: number },
      ];
      if (++reads === 2) release2();
      await bothRead2;
      await tx.exec("update tx_serial set v = $1 where id = $2", [s + 1, id]);
    }, { isolation: "serializable" });
  const settled = await Promise.allSettled([once(1), once(2)]);
  const failures = settled.filter((r) => r.status === "rejected");
  assert.equal(failures.length, 1);
  assert.ok(isSerializationFailure((failures[0] as PromiseRejectedResult).reason));
  assert.equal(
    ((failures[0] as PromiseRejectedResult).reason as DbxError).kind,
    "serialization_failure",
  );
});

dbTest(
  "runTx() rejects bad options and arguments without opening a transaction",
  async (cluster) => {
    const sent = () => cluster.stats().nodes[0]!.queries;
    const before = sent();
    await assert.rejects(cluster.runTx(async () => {}, { retries: -1 }), /'options.retries'.*-1/);
    await assert.rejects(
      cluster.runTx(42 as unknown as (tx: Tx) => Promise<void>),
      (e) => e instanceof TypeError && /'fn' must be a function/.test(e.message),
    );
    await assert.rejects(
      cluster.runTx(async () => {}, { isolation: "snapshot" as "serializable" }),
      RangeError,
    );
    assert.equal(sent(), before, "no BEGIN was sent for any of them");
    await assert.rejects(
      cluster.runTx(async (tx) => {
        await tx.query(7 as unknown as string);
      }),
      (e) => e instanceof TypeError && /'sql' must be a string/.test(e.message),
    );
    assert.equal(cluster.stats().nodes[0]!.totalConns, cluster.stats().nodes[0]!.idleConns);
  },
);

dbTest("a statement timeout inside a transaction cancels it on the server", async (cluster) => {
  const err = await cluster.runTx(async (tx) => {
    await tx.query("select pg_sleep(5)", [], { timeoutMs: 100 });
  }).catch((e: unknown) => e);
  assert.ok(err instanceof DbxError);
  assert.equal(err.kind, "timeout");
  assert.equal(err.code, "57014");
  const active = await cluster.queryRow<{ n: number }>(
    "select count(*)::int as n from pg_stat_activity where query = 'select pg_sleep(5)' and state = 'active'",
  );
  assert.equal(active.n, 0);
  assertPoolIdle(cluster);
});

dbTest("runInTx() always rolls back and binds the transaction", async (cluster) => {
  await freshTable(cluster, "tx_helper");
  const n = await runInTx(cluster, async (tx) => {
    assert.equal(cluster.getExecutor(), tx);
    await tx.exec("insert into tx_helper(id) values (1)");
    return (await tx.query("select * from tx_helper")).length;
  });
  assert.equal(n, 1);
  assert.deepEqual(await cluster.query("select * from tx_helper"), []);
  assertPoolIdle(cluster);
});

dbTest(
  "inside runTx, the cluster's own methods join the transaction: no self-deadlock",
  async (cluster) => {
    await freshTable(cluster, "tx_ambient");
    await cluster.exec("insert into tx_ambient(id, v) values (1, 0)");
    const seen = await cluster.runTx(async (tx) => {
      await tx.exec("update tx_ambient set v = 1 where id = 1");
      // Outside the transaction this would wait on the row lock until a timeout.
      await cluster.exec("update tx_ambient set v = 2 where id = 1", [], { timeoutMs: 10_000 });
      const [row] = await cluster.readQuery<{ v: number }>("select v from tx_ambient where id = 1");
      return row!.v;
    });
    assert.equal(seen, 2, "the read saw the transaction's own write");
    assert.deepEqual(await cluster.query("select v from tx_ambient"), [{ v: 2 }]);
    assertPoolIdle(cluster);
  },
);

dbTest(
  "runInTx() rolls back everything the cluster did inside it: exec, copyFrom and sendBatch",
  async (cluster) => {
    await freshTable(cluster, "tx_isolated");
    await runInTx(cluster, async () => {
      await cluster.exec("insert into tx_isolated(id) values (1)");
      assert.equal(await cluster.copyFrom("tx_isolated", ["id"], [[2], [3]]), 2);
      await cluster.sendBatch([{ sql: "insert into tx_isolated(id) values (4)" }]);
      const ids = await cluster.readQuery<{ id: number }>("select id from tx_isolated order by id");
      assert.deepEqual(ids.map((r) => r.id), [1, 2, 3, 4]);
    });
    assert.deepEqual(await cluster.query("select * from tx_isolated"), [], "nothing survived");
    assertPoolIdle(cluster);
  },
);

dbTest("withExecutor(cluster, fn) runs outside the enclosing transaction on purpose", async (
  cluster,
) => {
  await freshTable(cluster, "tx_audit");
  await runInTx(cluster, async () => {
    await cluster.exec("insert into tx_audit(id) values (1)");
    await withExecutor(cluster, () => cluster.exec("insert into tx_audit(id) values (2)"));
  });
  assert.deepEqual(await cluster.query("select id from tx_audit"), [{ id: 2 }]);
});

dbTest("Tx has readQuery, readQueryRow, copyFrom and sendBatch on its own connection", async (
  cluster,
) => {
  await freshTable(cluster, "tx_methods");
  await cluster.runTx(async (tx) => {
    assert.equal(await tx.copyFrom("tx_methods", ["id"], [[1], [2]]), 2);
    const [ins, count] = await tx.sendBatch([
      { sql: "insert into tx_methods(id) values ($1)", args: [3] },
      { sql: "select count(*)::int as n from tx_methods" },
    ]);
    assert.equal(ins!.rowCount, 1);
    assert.deepEqual(count!.rows, [{ n: 3 }]);
    assert.deepEqual(await tx.readQueryRow("select count(*)::int as n from tx_methods"), { n: 3 });
    assert.equal((await tx.readQuery("select id from tx_methods")).length, 3);
  });
  assert.deepEqual(await cluster.query("select count(*)::int as n from tx_methods"), [{ n: 3 }]);
  // An atomic batch that fails inside the transaction leaves nothing behind.
  const err = await cluster.runTx((tx) =>
    tx.sendBatch([
      { sql: "insert into tx_methods(id) values (10)" },
      { sql: "insert into tx_methods(id) values (1)" },
    ])
  ).catch((e: unknown) => e);
  assert.ok(err instanceof DbxError && (err as { batchIndex?: number }).batchIndex === 1, `${err}`);
  assert.deepEqual(await cluster.query("select count(*)::int as n from tx_methods"), [{ n: 3 }]);
  assertPoolIdle(cluster);
});

dbTest(
  "a nested runTx with isolation or readOnly throws a TypeError instead of ignoring them",
  async (cluster) => {
    await cluster.runTx(async () => {
      for (const options of [{ isolation: "serializable" as const }, { readOnly: true }]) {
        await assert.rejects(
          cluster.runTx(async () => {}, options),
          (e) => e instanceof TypeError && /cannot apply to a nested transaction/.test(e.message),
        );
      }
    });
    assertPoolIdle(cluster);
  },
);

const txRetries: { attempt: number; node: string | undefined }[] = [];
const txLog = testLogger();

dbTest(
  "runTx({ retries }) re-runs are reported: onRetry, stats().retries and a debug log",
  async (cluster) => {
    await freshTable(cluster, "tx_retry_report");
    await cluster.exec("insert into tx_retry_report(id, v) values (1, 0), (2, 0)");
    const before = cluster.stats().totals.retries;
    let runs = 0;
    // Two serializable transactions that each read what the other writes:
    // one of them fails with 40001 and is re-run.
    let bothRead!: () => void;
    let reads = 0;
    const gate = new Promise<void>((resolve) => (bothRead = resolve));
    const work = (read: number, write: number) =>
      cluster.runTx(async (tx) => {
        runs++;
        await tx.query("select v from tx_retry_report where id = $1", [read]);
        if (++reads === 2) bothRead();
        await gate;
        await tx.exec("update tx_retry_report set v = v + 1 where id = $1", [write]);
      }, { isolation: "serializable", retries: 3 });
    await Promise.all([work(1, 2), work(2, 1)]);
    assert.ok(runs >= 3, `a callback was re-run (${runs} runs)`);
    assert.equal(txRetries.length, runs - 2);
    assert.equal(cluster.stats().totals.retries - before, runs - 2);
    assert.ok(txLog.entries.some((e) => e.level === "debug" && /retrying/.test(e.msg)));
  },
  {
    config: {
      logger: txLog,
      metrics: { onRetry: (e) => void txRetries.push({ attempt: e.attempt, node: e.node }) },
    },
  },
);

dbTest(
  "begin, runTx, copyFrom, sendBatch, ping, health and writeToken honour an aborted signal",
  async (
    cluster,
  ) => {
    const signal = AbortSignal.abort();
    const canceled = (e: unknown) => e instanceof DbxError && e.kind === "canceled";
    await assert.rejects(cluster.begin({ signal }), canceled);
    await assert.rejects(cluster.runTx(async () => {}, { signal }), canceled);
    await assert.rejects(cluster.copyFrom("nowhere", ["a"], [[1]], { signal }), canceled);
    await assert.rejects(cluster.sendBatch([{ sql: "select 1" }], { signal }), canceled);
    await assert.rejects(cluster.writeToken({ signal }), canceled);
    await assert.rejects(cluster.ping({ signal }), canceled);
    await assert.rejects(cluster.health({ signal }), canceled);
    // A deadline inside runTx cancels the running statement on the server.
    const err = await cluster.runTx((tx) => tx.query("select pg_sleep(30)"), { timeoutMs: 200 })
      .catch((e: unknown) => e);
    assert.ok(err instanceof DbxError && err.kind === "timeout", `${err}`);
    assert.equal(err.code, "57014");
    assertPoolIdle(cluster);
  },
);
