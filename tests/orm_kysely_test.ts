/**
 * Kysely on a cluster, both ways: `PostgresDialect({ pool: cluster.pgPool() })`
 * and `dbxDialect(cluster)` from `@codelab/dbx/kysely`, against the local
 * cluster: CRUD, transactions, constraint errors, replica reads, streams,
 * cancellation, and a replica killed under a Kysely read loop.
 */

import assert from "node:assert/strict";
import { CompiledQuery, type Generated, Kysely, PostgresDialect, sql } from "kysely";
// @ts-types="@types/pg-cursor"
import Cursor from "pg-cursor";
import { type Cluster, roundRobin } from "../mod.ts";
import { dbxDialect } from "../src/compat/kysely.ts";
import { isPlainRead } from "../src/compat/kysely_route.ts";
import { dbTest } from "../src/testing/mod.ts";
import { named, noPostgres, until } from "./helpers.ts";
import { replicaKilledUnderReads } from "./orm_load.ts";

interface DB {
  orm_kysely_users: { id: Generated<number>; email: string; visits: Generated<number> };
}

async function fresh(cluster: Cluster): Promise<void> {
  await cluster.exec("drop table if exists orm_kysely_users");
  await cluster.exec(
    "create table orm_kysely_users(id serial primary key, email text not null unique, visits int not null default 0)",
  );
}

/** Both ways of putting Kysely on a cluster. */
const setUps = {
  "PostgresDialect on pgPool()": (cluster: Cluster) =>
    new Kysely<DB>({ dialect: new PostgresDialect({ pool: cluster.pgPool(), cursor: Cursor }) }),
  "dbxDialect": (cluster: Cluster) => new Kysely<DB>({ dialect: dbxDialect(cluster) }),
};

for (const [way, setUp] of Object.entries(setUps)) {
  dbTest(`Kysely (${way}): insert, select, update, delete`, async (cluster) => {
    await fresh(cluster);
    const db = setUp(cluster);
    const inserted = await db.insertInto("orm_kysely_users")
      .values([{ email: "a@x" }, { email: "b@x" }]).returning(["id", "email"]).execute();
    assert.deepEqual(inserted.map((r) => r.email), ["a@x", "b@x"]);
    const updated = await db.updateTable("orm_kysely_users")
      .set((eb) => ({ visits: eb("visits", "+", 1) })).where("email", "=", "a@x")
      .executeTakeFirstOrThrow();
    assert.equal(updated.numUpdatedRows, 1n);
    const rows = await db.selectFrom("orm_kysely_users").select(["email", "visits"])
      .orderBy("email").execute();
    assert.deepEqual(rows, [{ email: "a@x", visits: 1 }, { email: "b@x", visits: 0 }]);
    const deleted = await db.deleteFrom("orm_kysely_users").where("email", "=", "b@x")
      .executeTakeFirstOrThrow();
    assert.equal(deleted.numDeletedRows, 1n);
    await db.destroy();
    assert.deepEqual(await cluster.query("select email from orm_kysely_users"), [{ email: "a@x" }]);
  });

  dbTest(`Kysely (${way}): a transaction commits, one that throws rolls back`, async (cluster) => {
    await fresh(cluster);
    const db = setUp(cluster);
    await db.transaction().setIsolationLevel("serializable").execute(async (trx) => {
      await trx.insertInto("orm_kysely_users").values({ email: "kept@x" }).execute();
      const inside = await trx.selectFrom("orm_kysely_users").select("email").execute();
      assert.deepEqual(inside, [{ email: "kept@x" }]);
    });
    await assert.rejects(
      db.transaction().execute(async (trx) => {
        await trx.insertInto("orm_kysely_users").values({ email: "gone@x" }).execute();
        throw new Error("changed my mind");
      }),
      /changed my mind/,
    );
    const trx = await db.startTransaction().execute();
    await trx.insertInto("orm_kysely_users").values({ email: "savepoint@x" }).execute();
    const sp = await trx.savepoint("sp1").execute();
    await sp.insertInto("orm_kysely_users").values({ email: "undone@x" }).execute();
    await sp.rollbackToSavepoint("sp1").execute();
    await trx.commit().execute();
    const emails = await db.selectFrom("orm_kysely_users").select("email").orderBy("email")
      .execute();
    assert.deepEqual(emails.map((r) => r.email), ["kept@x", "savepoint@x"]);
    await db.destroy();
  });

  dbTest(`Kysely (${way}): a unique violation is pg's error 23505`, async (cluster) => {
    await fresh(cluster);
    const db = setUp(cluster);
    await db.insertInto("orm_kysely_users").values({ email: "dup@x" }).execute();
    const err = await db.insertInto("orm_kysely_users").values({ email: "dup@x" }).execute()
      .then(() => assert.fail("the duplicate was accepted"), (e: unknown) => e);
    const { code, constraint } = err as { code?: string; constraint?: string };
    assert.equal(code, "23505");
    assert.equal(constraint, "orm_kysely_users_email_key");
    await db.destroy();
  });

  dbTest(`Kysely (${way}): stream() reads every row in chunks`, async (cluster) => {
    await fresh(cluster);
    const db = setUp(cluster);
    await cluster.exec(
      "insert into orm_kysely_users(email) select 'u' || g || '@x' from generate_series(1, 25) g",
    );
    const ids: number[] = [];
    for await (
      const row of db.selectFrom("orm_kysely_users").select("id").orderBy("id").stream(4)
    ) {
      ids.push(row.id);
    }
    assert.equal(ids.length, 25);
    // Leaving a stream early hands its connection back; the next query runs.
    for await (const row of db.selectFrom("orm_kysely_users").select("id").stream(2)) {
      assert.ok(row.id > 0);
      break;
    }
    await db.transaction().execute(async (trx) => {
      let n = 0;
      for await (const _ of trx.selectFrom("orm_kysely_users").select("id").stream(10)) n++;
      assert.equal(n, 25);
    });
    assert.equal((await db.selectFrom("orm_kysely_users").select("id").execute()).length, 25);
    await db.destroy();
  });
}

dbTest(
  "dbxDialect({ reads: 'replica' }) sends plain selects to replicas, the rest to the primary",
  async (cluster) => {
    await fresh(cluster);
    const db = new Kysely<DB>({ dialect: dbxDialect(cluster, { reads: "replica" }) });
    const recovery = sql<boolean>`pg_is_in_recovery()`.as("r");
    const port = sql<number>`inet_server_port()`.as("p");
    const [written] = await db.insertInto("orm_kysely_users").values({ email: "r@x" })
      .returning(recovery).execute();
    assert.equal(written?.r, false, "the insert ran on the primary");
    await until(
      "the row reached the replicas",
      async () => (await db.selectFrom("orm_kysely_users").select("id").execute()).length === 1,
    );
    const ports = new Set<number>();
    for (let i = 0; i < 6; i++) {
      const row = await db.selectFrom("orm_kysely_users").select([recovery, port])
        .executeTakeFirstOrThrow();
      assert.equal(row.r, true, "a replica served the select");
      ports.add(row.p);
    }
    assert.equal(ports.size, 2, `both replicas served selects: ${[...ports]}`);
    const locked = await db.selectFrom("orm_kysely_users").select(recovery).forUpdate()
      .executeTakeFirstOrThrow();
    assert.equal(locked.r, false, "SELECT ... FOR UPDATE ran on the primary");
    const raw = await sql<{ r: boolean }>`select pg_is_in_recovery() as r`.execute(db);
    assert.equal(raw.rows[0]?.r, false, "raw SQL ran on the primary");
    const cte = await db.with(
      "added",
      (qb) => qb.insertInto("orm_kysely_users").values({ email: "cte@x" }).returning("id"),
    ).selectFrom("added").select(recovery).executeTakeFirstOrThrow();
    assert.equal(cte.r, false, "a data-modifying CTE ran on the primary");
    const inTx = await db.transaction().execute((trx) =>
      trx.selectFrom("orm_kysely_users").select(recovery).executeTakeFirstOrThrow()
    );
    assert.equal(inTx.r, false, "a transaction's select ran on the primary");
    await db.destroy();
  },
  // Turns over the replicas, so six selects reach both whatever their latencies.
  { config: { balancer: roundRobin() } },
);

Deno.test("isPlainRead() tells plain selects from locking ones and data-modifying CTEs", () => {
  // Compiling only: Kysely with no cluster underneath.
  const db = new Kysely<DB>({ dialect: dbxDialect({} as Cluster) });
  const t = db.selectFrom("orm_kysely_users");
  assert.equal(isPlainRead(t.selectAll().compile()), true);
  assert.equal(isPlainRead(t.selectAll().forShare().compile()), false);
  assert.equal(isPlainRead(t.selectAll().forNoKeyUpdate().skipLocked().compile()), false);
  assert.equal(
    isPlainRead(db.insertInto("orm_kysely_users").values({ email: "x" }).compile()),
    false,
  );
  assert.equal(isPlainRead(CompiledQuery.raw("select 1")), false);
  assert.equal(
    isPlainRead(
      db.with("s", (qb) => qb.selectFrom("orm_kysely_users").select("id"))
        .selectFrom("s").selectAll().compile(),
    ),
    true,
  );
  assert.equal(
    isPlainRead(
      db.with("d", (qb) => qb.deleteFrom("orm_kysely_users").returning("id"))
        .selectFrom("d").selectAll().compile(),
    ),
    false,
  );
});

dbTest("PostgresDialect on pgPool({ route: 'replica' }) reads from a replica", async (cluster) => {
  const db = new Kysely<DB>({
    dialect: new PostgresDialect({ pool: cluster.pgPool({ route: "replica" }) }),
  });
  const row = await db.selectNoFrom(sql<boolean>`pg_is_in_recovery()`.as("r"))
    .executeTakeFirstOrThrow();
  assert.equal(row.r, true);
  await db.destroy();
});

dbTest("dbxDialect: 'cancel query' cancels an aborted query on the server", async (cluster) => {
  const db = new Kysely<DB>({ dialect: dbxDialect(cluster) });
  const abort = new AbortController();
  const running = db.selectNoFrom(sql<string>`pg_sleep(60)::text`.as("s"))
    .execute({ signal: abort.signal, inflightQueryAbortStrategy: "cancel query" });
  const sleeping = () =>
    cluster.query<{ n: number }>(
      "select count(*)::int as n from pg_stat_activity where state = 'active' and query like '%pg_sleep(60)%' and pid <> pg_backend_pid()",
    ).then(([r]) => r!.n);
  await until("the query runs on the server", async () => (await sleeping()) === 1);
  abort.abort();
  await assert.rejects(running);
  await until("the server stopped it", async () => (await sleeping()) === 0);
  await db.destroy();
});

Deno.test({
  name: named(
    "Kysely dbxDialect({ reads: 'replica' }): a replica killed under a read loop fails no read",
  ),
  ignore: noPostgres,
  async fn() {
    await replicaKilledUnderReads(async (cluster) => {
      await fresh(cluster);
      const db = new Kysely<DB>({ dialect: dbxDialect(cluster, { reads: "replica" }) });
      return () => db.selectFrom("orm_kysely_users").selectAll().execute();
    });
  },
});
