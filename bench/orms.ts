/**
 * The "ORMs" part of `deno task bench`: the same ORM query, a point select by
 * primary key of a ~120-byte row (int, text ×2, float8, timestamptz), on dbx
 * and on a raw `pg.Pool` of the same size, at 10 and 64 callers, in
 * alternating rounds:
 *
 * - Drizzle (`drizzle-orm/node-postgres`): `drizzle({ client: cluster.pgPool() })`
 *   vs `drizzle({ client: rawPool })`;
 * - Kysely `PostgresDialect`: `{ pool: cluster.pgPool() }` vs `{ pool: rawPool }`;
 * - Kysely `dbxDialect(cluster)` vs Kysely `PostgresDialect({ pool: rawPool })`.
 *
 * Target: every dbx path ≥ 1.5× its raw peer at 10 and 64 callers.
 *
 * Alone: `deno run -A bench/orms.ts` (starts its own local cluster).
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import { eq } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import { doublePrecision, integer, pgTable, text, timestamp } from "drizzle-orm/pg-core";
import { Kysely, PostgresDialect } from "kysely";
import { type Cluster, connect } from "../mod.ts";
import { dbxDialect } from "../src/compat/kysely.ts";
import { startLocalCluster } from "../src/testing/mod.ts";

/** The ORM paths compared, each against the same ORM on a raw pg.Pool. */
export type OrmPath = "drizzle" | "kyselyPgPool" | "kyselyDbxDialect";

/** What {@linkcode ormBench} measured. */
export interface OrmBench {
  /** Median q/s per caller count and path: dbx and the raw peer, and the median of the rounds' dbx ÷ raw. */
  readonly qps: Record<string, Record<OrmPath, { dbx: number; raw: number; ratio: number }>>;
  /** Whether every dbx path reached {@linkcode ORM_TARGET}× its raw peer. */
  readonly targetMet: boolean;
}

/** The target: dbx ÷ raw for the same ORM query. */
export const ORM_TARGET = 1.5;

const CALLERS = [10, 64] as const;
const ROUNDS = 6;
const ROUND_MS = 500;
const ROWS = 1_000;

const items = pgTable("bench_orm", {
  id: integer("id").primaryKey(),
  name: text("name").notNull(),
  email: text("email").notNull(),
  score: doublePrecision("score").notNull(),
  created: timestamp("created", { withTimezone: true }).notNull(),
});

interface DB {
  bench_orm: { id: number; name: string; email: string; score: number; created: Date };
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

type Call = (i: number) => Promise<unknown>;

async function run(fn: Call, callers: number, ms: number, signal: AbortSignal): Promise<number> {
  let done = 0;
  const start = performance.now();
  const end = start + ms;
  await Promise.all(Array.from({ length: callers }, async () => {
    while (performance.now() < end && !signal.aborted) await fn(done++);
  }));
  signal.throwIfAborted();
  return done / ((performance.now() - start) / 1000);
}

/**
 * Runs the comparison on `cluster`'s primary (`url`).
 *
 * @param cluster A cluster on the primary at `url`, pool size `poolSize`.
 * @param url The primary's connection string, for the raw pool.
 * @param poolSize Connections of the raw pool (dbx's pool size too).
 * @param signal Stops the run.
 * @returns The figures.
 */
export async function ormBench(
  cluster: Cluster,
  url: string,
  poolSize: number,
  signal: AbortSignal,
): Promise<OrmBench> {
  await cluster.exec("drop table if exists bench_orm");
  await cluster.exec(
    "create table bench_orm(id int primary key, name text not null, email text not null, " +
      "score float8 not null, created timestamptz not null)",
  );
  await cluster.exec(
    "insert into bench_orm select g, 'name ' || lpad(g::text, 30, '0'), " +
      "'user' || g || '@example.com' || repeat('x', 30), g * 1.5, now() from generate_series(1, $1::int) g",
    [ROWS],
  );
  const raw = new pg.Pool({ connectionString: url, max: poolSize });
  raw.on("error", () => {});
  const facade = cluster.pgPool();
  const kyselyRaw = new Kysely<DB>({ dialect: new PostgresDialect({ pool: raw }) });
  const kyselyFacade = new Kysely<DB>({ dialect: new PostgresDialect({ pool: facade }) });
  const kyselyDbx = new Kysely<DB>({ dialect: dbxDialect(cluster) });
  const drizzleRaw = drizzle({ client: raw });
  const drizzleFacade = drizzle({ client: facade });
  const id = (i: number) => (i % ROWS) + 1;
  const drizzleCall = (db: typeof drizzleRaw): Call => (i) =>
    db.select().from(items).where(eq(items.id, id(i)));
  const kyselyCall = (db: Kysely<DB>): Call => (i) =>
    db.selectFrom("bench_orm").selectAll().where("id", "=", id(i)).executeTakeFirst();
  const paths: Record<OrmPath, { dbx: Call; raw: Call }> = {
    drizzle: { dbx: drizzleCall(drizzleFacade), raw: drizzleCall(drizzleRaw) },
    kyselyPgPool: { dbx: kyselyCall(kyselyFacade), raw: kyselyCall(kyselyRaw) },
    kyselyDbxDialect: { dbx: kyselyCall(kyselyDbx), raw: kyselyCall(kyselyRaw) },
  };
  try {
    const qps: OrmBench["qps"] = {};
    let targetMet = true;
    for (const callers of CALLERS) {
      const row = {} as Record<OrmPath, { dbx: number; raw: number; ratio: number }>;
      for (const [path, calls] of Object.entries(paths) as [OrmPath, { dbx: Call; raw: Call }][]) {
        await run(calls.raw, callers, 200, signal);
        await run(calls.dbx, callers, 200, signal);
        const rounds = { dbx: [] as number[], raw: [] as number[] };
        for (let r = 0; r < ROUNDS; r++) {
          const order = r % 2 === 0 ? (["raw", "dbx"] as const) : (["dbx", "raw"] as const);
          for (const k of order) rounds[k].push(await run(calls[k], callers, ROUND_MS, signal));
        }
        const dbx = Math.round(median(rounds.dbx));
        const rawQps = Math.round(median(rounds.raw));
        // Each round's two runs are back to back: their ratio cancels the machine's load drift.
        const paired = median(rounds.dbx.map((d, i) => d / rounds.raw[i]!));
        const ratio = Math.round(paired * 1000) / 1000;
        row[path] = { dbx, raw: rawQps, ratio };
        if (ratio < ORM_TARGET) targetMet = false;
      }
      qps[String(callers)] = row;
    }
    return { qps, targetMet };
  } finally {
    await kyselyDbx.destroy();
    await kyselyFacade.destroy();
    await raw.end();
  }
}

/** Prints the ORMs table. */
export function printOrmBench(result: OrmBench): void {
  console.log("\nORMs (point select by primary key, queries/s; median of alternating rounds):");
  const head = ["callers", "path", "dbx", "raw pg.Pool", "dbx ÷ raw (paired)"];
  const lines = [head];
  for (const [callers, row] of Object.entries(result.qps)) {
    for (const [path, v] of Object.entries(row)) {
      lines.push([callers, path, String(v.dbx), String(v.raw), v.ratio.toFixed(3)]);
    }
  }
  const widths = head.map((_, c) => Math.max(...lines.map((l) => l[c]!.length)));
  for (const l of lines) console.log(`  ${l.map((v, c) => v.padEnd(widths[c]!)).join("  ")}`);
  console.log(
    `  target: every path ≥ ${ORM_TARGET}× raw at 10 and 64 callers: ${
      result.targetMet ? "met" : "NOT met"
    }`,
  );
}

if (import.meta.main) {
  const POOL_SIZE = 10;
  await using local = await startLocalCluster({ replicas: 0 });
  await using cluster = await connect({ master: local.masterUrl, pool: { max: POOL_SIZE } });
  const result = await ormBench(cluster, local.masterUrl, POOL_SIZE, new AbortController().signal);
  printOrmBench(result);
  console.log(JSON.stringify(result));
}
