/**
 * Drizzle (`drizzle-orm/node-postgres`) on `cluster.pgPool()`, against the
 * local cluster: CRUD, transactions, constraint errors, replica reads
 * through `withReplicas`, and a replica killed under a Drizzle read loop.
 */

import assert from "node:assert/strict";
import { eq, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import { integer, pgTable, serial, text, withReplicas } from "drizzle-orm/pg-core";
// @ts-types="@types/pg"
import pg from "pg";
import { type Cluster, roundRobin } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";
import { named, noPostgres, until } from "./helpers.ts";
import { replicaKilledUnderReads } from "./orm_load.ts";

const users = pgTable("orm_drizzle_users", {
  id: serial("id").primaryKey(),
  email: text("email").notNull().unique(),
  visits: integer("visits").notNull().default(0),
});

async function fresh(cluster: Cluster): Promise<void> {
  await cluster.exec("drop table if exists orm_drizzle_users");
  await cluster.exec(
    "create table orm_drizzle_users(id serial primary key, email text not null unique, visits int not null default 0)",
  );
}

function setUp(cluster: Cluster) {
  return withReplicas(drizzle({ client: cluster.pgPool() }), [
    drizzle({ client: cluster.pgPool({ route: "replica" }) }),
  ]);
}

dbTest("pgPool() is a pg.Pool that Drizzle takes as a pool", (cluster) => {
  const pool = cluster.pgPool();
  assert.ok(pool instanceof pg.Pool);
  assert.ok(cluster.pgPool({ route: "replica" }) instanceof pg.Pool);
  assert.throws(
    () => cluster.pgPool({ route: "standby" as "replica" }),
    /'route' must be "primary" or "replica": current value is "standby"/,
  );
});

dbTest("Drizzle on pgPool(): insert, select, update, delete", async (cluster) => {
  await fresh(cluster);
  const db = drizzle({ client: cluster.pgPool() });
  const inserted = await db.insert(users).values([{ email: "a@x" }, { email: "b@x" }]).returning();
  assert.deepEqual(inserted.map((u) => u.email), ["a@x", "b@x"]);
  const updated = await db.update(users).set({ visits: sql`${users.visits} + 1` })
    .where(eq(users.email, "a@x")).returning({ visits: users.visits });
  assert.deepEqual(updated, [{ visits: 1 }]);
  const rows = await db.select({ email: users.email, visits: users.visits }).from(users)
    .orderBy(users.email);
  assert.deepEqual(rows, [{ email: "a@x", visits: 1 }, { email: "b@x", visits: 0 }]);
  const deleted = await db.delete(users).where(eq(users.email, "b@x")).returning({ id: users.id });
  assert.equal(deleted.length, 1);
  assert.equal(await db.$count(users), 1);
  const byPrepared = await db.select().from(users).where(eq(users.email, sql.placeholder("e")))
    .prepare("orm_drizzle_by_email").execute({ e: "a@x" });
  assert.equal(byPrepared[0]?.email, "a@x");
});

dbTest("Drizzle transaction commits, and one that throws rolls back", async (cluster) => {
  await fresh(cluster);
  const db = drizzle({ client: cluster.pgPool() });
  await db.transaction(async (tx) => {
    await tx.insert(users).values({ email: "kept@x" });
    await tx.transaction(async (nested) => {
      await nested.insert(users).values({ email: "nested@x" });
    });
  });
  await assert.rejects(
    db.transaction(async (tx) => {
      await tx.insert(users).values({ email: "gone@x" });
      throw new Error("changed my mind");
    }),
    /changed my mind/,
  );
  const emails = (await db.select({ email: users.email }).from(users).orderBy(users.email))
    .map((r) => r.email);
  assert.deepEqual(emails, ["kept@x", "nested@x"]);
});

dbTest(
  "Drizzle reports a unique violation with pg's code, constraint and detail",
  async (cluster) => {
    await fresh(cluster);
    const db = drizzle({ client: cluster.pgPool() });
    await db.insert(users).values({ email: "dup@x" });
    const err = await db.insert(users).values({ email: "dup@x" }).then(
      () => assert.fail("the duplicate was accepted"),
      (e: unknown) => e as Error & { cause?: unknown },
    );
    const cause = (err.cause ?? err) as { code?: string; constraint?: string; detail?: string };
    assert.ok(cause instanceof pg.DatabaseError, `pg's own error, got ${cause}`);
    assert.equal(cause.code, "23505");
    assert.equal(cause.constraint, "orm_drizzle_users_email_key");
    assert.match(cause.detail ?? "", /\(email\)=\(dup@x\) already exists/);
    // In a transaction too: the transaction rolls back and the error is pg's.
    const inTx = await db.transaction(async (tx) => {
      await tx.insert(users).values({ email: "dup@x" });
    }).then(() => undefined, (e: { cause?: { code?: string } }) => e.cause?.code);
    assert.equal(inTx, "23505");
  },
);

dbTest("Drizzle withReplicas: selects run on replicas, writes on the primary", async (cluster) => {
  await fresh(cluster);
  const db = setUp(cluster);
  await db.insert(users).values({ email: "r@x" });
  const port = sql<number>`inet_server_port()`;
  const recovery = sql<boolean>`pg_is_in_recovery()`;
  let rows: { port: number; recovery: boolean }[] = [];
  await until("the row reached the replicas", async () => {
    rows = await db.select({ port, recovery }).from(users).limit(1);
    return rows.length === 1;
  });
  const seen = new Set<number>();
  for (let i = 0; i < 6; i++) {
    const [row] = await db.select({ port, recovery }).from(users).limit(1);
    assert.equal(row?.recovery, true, `a replica served the select: ${JSON.stringify(row)}`);
    seen.add(row.port);
  }
  assert.equal(seen.size, 2, `both replicas served selects: ${[...seen]}`);
  const [written] = await db.insert(users).values({ email: "w@x" }).returning({ recovery });
  assert.equal(written?.recovery, false, "the insert ran on the primary");
  const [primaryRead] = await db.$primary.select({ recovery }).from(users).limit(1);
  assert.equal(primaryRead?.recovery, false);
  // Turns over the replicas, so six selects reach both whatever their latencies.
}, { config: { balancer: roundRobin() } });

dbTest("Drizzle on pgPool() joins the ambient cluster.runTx", async (cluster) => {
  await fresh(cluster);
  const db = drizzle({ client: cluster.pgPool() });
  await assert.rejects(
    cluster.runTx(async () => {
      await db.insert(users).values({ email: "ambient@x" });
      // Drizzle's own transaction nests as a savepoint of the ambient one.
      await db.transaction(async (tx) => {
        await tx.insert(users).values({ email: "nested-ambient@x" });
      });
      const [{ n }] = (await cluster.query<{ n: number }>(
        "select count(*)::int as n from orm_drizzle_users",
      )) as [{ n: number }];
      assert.equal(n, 2, "the runTx sees Drizzle's rows");
      throw new Error("roll it all back");
    }),
    /roll it all back/,
  );
  assert.equal(await db.$count(users), 0);
  await cluster.runTx(async () => {
    await db.insert(users).values({ email: "committed@x" });
  });
  assert.equal(await db.$count(users), 1);
});

Deno.test({
  name: named("Drizzle withReplicas: a replica killed under a read loop fails no read"),
  ignore: noPostgres,
  async fn() {
    await replicaKilledUnderReads(async (cluster) => {
      await fresh(cluster);
      const db = setUp(cluster);
      await db.insert(users).values({ email: "load@x" });
      return () => db.select().from(users).limit(1);
    });
  },
});
