/**
 * The README's "ORMs and query builders" set-ups, type-checked by
 * `deno task check`: Drizzle (with `withReplicas`), Kysely (both ways) and
 * Prisma's `PrismaPg` adapter on one dbx cluster.
 *
 * Run against a database: `DATABASE_URL=postgres://... deno run -A examples/orms.ts`
 * (optionally `REPLICA_URLS` comma-separated).
 *
 * @module
 */

import { PrismaPg } from "@prisma/adapter-pg";
import { drizzle } from "drizzle-orm/node-postgres";
import { pgTable, serial, text, withReplicas } from "drizzle-orm/pg-core";
import { Kysely, PostgresDialect, sql } from "kysely";
import { type Cluster, connect } from "@codelab/dbx";
import { dbxDialect } from "@codelab/dbx/kysely";

const users = pgTable("users", { id: serial("id").primaryKey(), email: text("email").notNull() });

interface DB {
  users: { id: number; email: string };
}

/** Drizzle: writes on the primary, `select`s on replicas. */
export function drizzleOn(cluster: Cluster) {
  const db = withReplicas(drizzle({ client: cluster.pgPool() }), [
    drizzle({ client: cluster.pgPool({ route: "replica" }) }),
  ]);
  return db;
}

/** Kysely through dbx's dialect: plain selects on replicas, retried statements. */
export function kyselyOn(cluster: Cluster): Kysely<DB> {
  return new Kysely<DB>({ dialect: dbxDialect(cluster, { reads: "replica" }) });
}

/** Kysely's own Postgres dialect on the pool facade. */
export function kyselyOnPool(cluster: Cluster): Kysely<DB> {
  return new Kysely<DB>({ dialect: new PostgresDialect({ pool: cluster.pgPool() }) });
}

/** Prisma's driver adapter; pass it to `new PrismaClient({ adapter })`. */
export function prismaAdapterOn(cluster: Cluster): PrismaPg {
  return new PrismaPg(cluster.pgPool());
}

if (import.meta.main) {
  const master = Deno.env.get("DATABASE_URL");
  if (master === undefined) throw new Error("set DATABASE_URL to run this example");
  const replicas = Deno.env.get("REPLICA_URLS")?.split(",").filter((u) => u !== "") ?? [];
  await using cluster = await connect({ master, replicas });
  await cluster.exec(
    "create table if not exists users(id serial primary key, email text not null)",
  );

  const db = drizzleOn(cluster);
  await db.insert(users).values({ email: "ada@example.com" });
  console.log("drizzle:", await db.select().from(users).limit(3));

  const k = kyselyOn(cluster);
  console.log("kysely:", await k.selectFrom("users").select("email").limit(3).execute());
  const kp = kyselyOnPool(cluster);
  console.log("kysely on pgPool:", (await sql<{ one: number }>`select 1 as one`.execute(kp)).rows);

  const adapter = await prismaAdapterOn(cluster).connect();
  const { rows } = await adapter.queryRaw({
    sql: "select count(*)::int from users",
    args: [],
    argTypes: [],
  });
  console.log("prisma adapter:", rows);
}
