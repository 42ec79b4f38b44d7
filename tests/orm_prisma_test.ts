/**
 * Prisma's driver adapter (`@prisma/adapter-pg`, `new PrismaPg(pool)`) on
 * `cluster.pgPool()`, through the adapter interface the Prisma client
 * drives: `queryRaw`, `executeRaw`, `startTransaction`, commit / rollback.
 */

import assert from "node:assert/strict";
import { PrismaPg } from "@prisma/adapter-pg";
import type { ArgType, SqlDriverAdapter, SqlQuery } from "@prisma/driver-adapter-utils";
import { type Cluster, roundRobin } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";
import { named, noPostgres, until } from "./helpers.ts";
import { replicaKilledUnderReads } from "./orm_load.ts";

/** A query as Prisma's engine hands it to the adapter. */
function q(sql: string, args: (string | number)[] = []): SqlQuery {
  const argTypes: ArgType[] = args.map((a) => ({
    scalarType: typeof a === "number" ? "int" : "string",
    arity: "scalar",
  }));
  return { sql, args, argTypes };
}

async function fresh(cluster: Cluster): Promise<void> {
  await cluster.exec("drop table if exists orm_prisma_users");
  await cluster.exec(
    "create table orm_prisma_users(id serial primary key, email text not null unique, visits int not null default 0)",
  );
}

async function adapterOn(cluster: Cluster, route?: "replica"): Promise<SqlDriverAdapter> {
  return await new PrismaPg(cluster.pgPool(route === undefined ? {} : { route })).connect();
}

/** Every email, in order. */
async function emails(adapter: SqlDriverAdapter): Promise<unknown[]> {
  const { rows } = await adapter.queryRaw(q("select email from orm_prisma_users order by email"));
  return rows.map((r) => r[0]);
}

dbTest(
  "Prisma adapter on pgPool(): queryRaw and executeRaw create, read, update, delete",
  async (cluster) => {
    await fresh(cluster);
    const adapter = await adapterOn(cluster);
    assert.equal(
      await adapter.executeRaw(
        q("insert into orm_prisma_users(email) values ($1), ($2)", ["a@x", "b@x"]),
      ),
      2,
    );
    const updated = await adapter.executeRaw(
      q("update orm_prisma_users set visits = visits + $1 where email = $2", [3, "a@x"]),
    );
    assert.equal(updated, 1);
    const read = await adapter.queryRaw(
      q("select email, visits from orm_prisma_users order by email"),
    );
    assert.deepEqual(read.columnNames, ["email", "visits"]);
    assert.deepEqual(read.rows, [["a@x", 3], ["b@x", 0]]);
    assert.equal(
      await adapter.executeRaw(q("delete from orm_prisma_users where email = $1", ["b@x"])),
      1,
    );
    assert.deepEqual(await emails(adapter), ["a@x"]);
    await adapter.dispose();
  },
);

dbTest(
  "Prisma adapter transactions: COMMIT keeps, ROLLBACK and an abandoned one discard",
  async (cluster) => {
    await fresh(cluster);
    const adapter = await adapterOn(cluster);
    const kept = await adapter.startTransaction("SERIALIZABLE");
    await kept.executeRaw(q("insert into orm_prisma_users(email) values ($1)", ["kept@x"]));
    await kept.executeRaw(q("COMMIT"));
    await kept.commit();

    const undone = await adapter.startTransaction();
    await undone.executeRaw(q("insert into orm_prisma_users(email) values ($1)", ["undone@x"]));
    await undone.executeRaw(q("ROLLBACK"));
    await undone.rollback();

    // Released while still inside BEGIN: the connection is destroyed, nothing is committed.
    const abandoned = await adapter.startTransaction();
    await abandoned.executeRaw(
      q("insert into orm_prisma_users(email) values ($1)", ["abandoned@x"]),
    );
    await abandoned.rollback();

    assert.deepEqual(await emails(adapter), ["kept@x"]);
    assert.equal(cluster.stats().nodes[0]!.healthy, true);
  },
);

dbTest("Prisma adapter maps a unique violation to UniqueConstraintViolation", async (cluster) => {
  await fresh(cluster);
  const adapter = await adapterOn(cluster);
  const insert = q("insert into orm_prisma_users(email) values ($1)", ["dup@x"]);
  await adapter.executeRaw(insert);
  const err = await adapter.executeRaw(insert).then(
    () => assert.fail("the duplicate was accepted"),
    (e: unknown) => e as { name?: string; cause?: Record<string, unknown> },
  );
  assert.equal(err.name, "DriverAdapterError");
  assert.equal(err.cause?.kind, "UniqueConstraintViolation");
  assert.deepEqual(err.cause?.constraint, { index: "orm_prisma_users_email_key" });
  // The same inside a transaction.
  const tx = await adapter.startTransaction();
  const inTx = await tx.executeRaw(insert).then(
    () => undefined,
    (e: { cause?: { kind?: string } }) => e.cause?.kind,
  );
  assert.equal(inTx, "UniqueConstraintViolation");
  await tx.executeRaw(q("ROLLBACK"));
  await tx.rollback();
});

dbTest("Prisma adapter on pgPool({ route: 'replica' }) reads from replicas", async (cluster) => {
  await fresh(cluster);
  const writer = await adapterOn(cluster);
  const reader = await adapterOn(cluster, "replica");
  await writer.executeRaw(q("insert into orm_prisma_users(email) values ($1)", ["r@x"]));
  // The table itself may not have reached a replica yet either (42P01 there).
  const replicated = (err: unknown) => {
    if ((err as { cause?: { originalCode?: string } }).cause?.originalCode === "42P01") return [];
    throw err;
  };
  await until(
    "the row reached the replicas",
    async () => (await emails(reader).catch(replicated)).length === 1,
  );
  const ports = new Set<number>();
  for (let i = 0; i < 6; i++) {
    const { rows } = await reader.queryRaw(
      q("select pg_is_in_recovery(), inet_server_port() from orm_prisma_users"),
    );
    assert.equal(rows[0]?.[0], true, "a replica answered");
    ports.add(rows[0]?.[1] as number);
  }
  assert.equal(ports.size, 2, `both replicas answered: ${[...ports]}`);
  const { rows } = await writer.queryRaw(q("select pg_is_in_recovery()"));
  assert.deepEqual(rows, [[false]]);
  // A transaction of the replica adapter is pinned on a replica too.
  const tx = await reader.startTransaction();
  const inTx = await tx.queryRaw(q("select pg_is_in_recovery()"));
  assert.deepEqual(inTx.rows, [[true]]);
  await tx.executeRaw(q("COMMIT"));
  await tx.commit();
  // Turns over the replicas, so six reads reach both whatever their latencies.
}, { config: { balancer: roundRobin() } });

dbTest("pgPool().end() ends the facade only, once", async (cluster) => {
  const pool = cluster.pgPool();
  await pool.end();
  await assert.rejects(pool.end(), /Called end on pool more than once/);
  await assert.rejects(pool.query("select 1"), /Cannot use a pool after calling end/);
  assert.deepEqual(await cluster.query("select 1 as one"), [{ one: 1 }]);
});

Deno.test({
  name: named("Prisma adapter: a replica killed under a read loop fails no read"),
  ignore: noPostgres,
  async fn() {
    await replicaKilledUnderReads(async (cluster) => {
      await fresh(cluster);
      const reader = await adapterOn(cluster, "replica");
      return () => reader.queryRaw(q("select count(*)::int from orm_prisma_users"));
    });
  },
});
