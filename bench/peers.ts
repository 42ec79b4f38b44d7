/**
 * dbx against the clients a user would pick instead, on the runtime running this file:
 * `deno task bench:peers` (Deno) and `bun bench/peers.ts` (Bun, after `npm install`).
 *
 * - contenders, each with a pool of {@linkcode POOL_SIZE}: raw `pg.Pool`, postgres.js
 *   (`prepare: true`), `Bun.SQL` (on Bun) and dbx (`cluster.query`, primary only);
 * - four statement shapes: `select $1::int`, a point select by primary key of a ~120-byte
 *   row (int, text ×2, float8, timestamptz), a one-row insert, a 100-row select;
 * - at 1, 10, 64 and 256 callers, in alternating rounds: a shape's cells (every caller
 *   count, every contender) take turns round by round, both orders rotating, so load
 *   drift on a shared host falls on all of them; median q/s and p50/p99 latency over
 *   all rounds per cell, and dbx ÷ the best peer; each round's own p99 too (the lowest
 *   and the highest per cell), to tell a difference of tails from the host's drift;
 * - `pgbench` in pipeline mode (`\startpipeline`, 50 prepared `select :x::int`, `-M
 *   prepared`) on the same server as the ceiling, and dbx's fraction of it.
 *
 * Uses `DBX_BENCH_URL` when set, else starts a local primary (no replicas: every
 * contender talks to one server). Prints a table, writes
 * `bench/results/peers-<runtime>.json`, and prints the summary as JSON on the last line.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import postgres from "postgres";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { promisify } from "node:util";
import { connect } from "../mod.ts";
import { findPgBinDir, startLocalCluster } from "../src/testing/mod.ts";

const POOL_SIZE = 10;
const CALLERS = [1, 10, 64, 256] as const;
const ROUNDS = envCount("DBX_BENCH_ROUNDS", 3);
const ROUND_MS = envCount("DBX_BENCH_ROUND_MS", 400);
const ROWS = 10_000;

/** One statement of a shape, the i-th of its run. */
export type Call = (i: number) => Promise<unknown>;
/**
 * The positive integers, comma-separated, in the environment variable `name`, or
 * `fallback` when it is unset or empty.
 *
 * @param what What the value must be, for the error.
 * @throws {RangeError} naming the variable and its value, for an item that is not one.
 */
function envCounts(
  name: string,
  fallback: readonly number[],
  what = "positive integers, comma-separated",
): readonly number[] {
  const text = process.env[name];
  if (text === undefined || text.trim() === "") return fallback;
  return text.split(",").map((item) => {
    const n = Number(item.trim());
    if (!Number.isSafeInteger(n) || n < 1) {
      throw new RangeError(`${name} must be ${what}: current value is ${JSON.stringify(text)}`);
    }
    return n;
  });
}

/** One positive integer, as {@linkcode envCounts} reads them. */
export function envCount(name: string, fallback: number): number {
  const what = "a positive integer";
  const counts = envCounts(name, [fallback], what);
  if (counts.length !== 1) {
    const text = JSON.stringify(process.env[name]);
    throw new RangeError(`${name} must be ${what}: current value is ${text}`);
  }
  return counts[0]!;
}

/**
 * The comma-separated items of the environment variable `name`, each one of `known`;
 * undefined when it is unset or empty.
 *
 * @throws {RangeError} naming the variable, the item and what it may be, for an unknown item.
 */
function envChoice(name: string, known: readonly string[]): string[] | undefined {
  const items = process.env[name]?.split(",").map((x) => x.trim()).filter((x) => x !== "");
  if (items === undefined || items.length === 0) return undefined;
  for (const item of items) {
    if (!known.includes(item)) {
      throw new RangeError(
        `${name} must list some of ${known.join(", ")}: ${JSON.stringify(item)} is none of them`,
      );
    }
  }
  return items;
}

/** One contender: a call per shape, and how to close it. */
export interface Contender {
  readonly name: string;
  readonly calls: Record<Shape, Call>;
  close(): Promise<void>;
}
type Shape = "select1" | "point" | "insert" | "rows100";

const SHAPES: Record<Shape, { label: string; text: string; args: (i: number) => unknown[] }> = {
  select1: { label: "select $1::int", text: "select $1::int as n", args: (i) => [i] },
  point: {
    label: "point select (5 columns)",
    text: "select id, name, email, score, created from bench_rows where id = $1",
    args: (i) => [1 + (i * 7919) % ROWS],
  },
  insert: {
    label: "one-row insert",
    text: "insert into bench_inserts (name, email, score) values ($1, $2, $3)",
    args: (i) => [`name ${i}`, `user${i}@example.com`, i / 3],
  },
  rows100: {
    label: "100-row select",
    text:
      "select id, name, email, score, created from bench_rows where id > $1 order by id limit 100",
    args: (i) => [(i * 7919) % (ROWS - 100)],
  },
};

const runtime = "Bun" in globalThis ? "bun" : "deno";

function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
};

/** Runs `fn` from `callers` loops for `ms`; returns q/s and records latencies. */
async function round(fn: Call, callers: number, ms: number, latencies: number[]): Promise<number> {
  let done = 0;
  let next = 0;
  const start = performance.now();
  const end = start + ms;
  await Promise.all(Array.from({ length: callers }, async () => {
    while (performance.now() < end) {
      const t = performance.now();
      await fn(next++);
      latencies.push(performance.now() - t);
      done++;
    }
  }));
  return done / ((performance.now() - start) / 1000);
}

/** Creates the bench tables (`bench_rows` with {@linkcode ROWS} rows, `bench_inserts`). */
async function prepare(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`
      drop table if exists bench_rows, bench_inserts;
      create table bench_rows (
        id int primary key, name text not null, email text not null,
        score float8 not null, created timestamptz not null);
      insert into bench_rows
        select g, 'name number ' || g || repeat('x', 20), 'user' || g || '@example.com' || repeat('y', 20),
               g / 7.0, now() - g * interval '1 minute'
        from generate_series(1, ${ROWS}) g;
      create table bench_inserts (
        id bigserial primary key, name text, email text, score float8,
        created timestamptz default now());`);
    await client.query("vacuum analyze bench_rows");
  } finally {
    await client.end();
  }
}

/**
 * Every contender on this runtime, each with a pool of {@linkcode POOL_SIZE}.
 *
 * @param url The server.
 * @returns Them, in the tables' order.
 */
export async function contenders(url: string): Promise<Contender[]> {
  const byShape = (run: (text: string, args: unknown[]) => Promise<unknown>) =>
    Object.fromEntries(
      Object.entries(SHAPES).map(([shape, s]) => [shape, (i: number) => run(s.text, s.args(i))]),
    ) as Record<Shape, Call>;

  const pool = new pg.Pool({ connectionString: url, max: POOL_SIZE });
  pool.on("error", () => {});
  const sql = postgres(url, { max: POOL_SIZE, prepare: true, onnotice: () => {} });
  // DBX_BENCH_PIPELINE=<connections>x<maxDepth> tries other pipelining settings.
  const [connections, maxDepth] = (process.env.DBX_BENCH_PIPELINE ?? "").split("x").map(Number);
  const cluster = await connect({
    master: url,
    pool: { max: POOL_SIZE },
    ...(connections ? { pipeline: { connections, maxDepth } } : {}),
  });
  const list: Contender[] = [
    { name: "pg.Pool", calls: byShape((t, a) => pool.query(t, a)), close: () => pool.end() },
    {
      name: "postgres.js",
      calls: byShape((t, a) => sql.unsafe(t, a as never[], { prepare: true })),
      close: () => sql.end(),
    },
    { name: "dbx", calls: byShape((t, a) => cluster.query(t, a)), close: () => cluster.close() },
  ];
  const Bun = (globalThis as { Bun?: { SQL: new (o: unknown) => BunSql } }).Bun;
  if (Bun !== undefined) {
    const bunSql = new Bun.SQL({ url, max: POOL_SIZE, prepare: true });
    list.splice(2, 0, {
      name: "Bun.SQL",
      calls: byShape((t, a) => bunSql.unsafe(t, a)),
      close: () => bunSql.close(),
    });
  }
  return list;
}

interface BunSql {
  unsafe(text: string, args: unknown[]): Promise<unknown>;
  close(): Promise<void>;
}

/** One cell's figures. */
interface Cell {
  qps: number;
  p50: number;
  p99: number;
  /** The lowest and the highest of its rounds' own p99s. */
  p99Rounds: [number, number];
}

/** `ms` rounded to hundredths. */
function hundredths(ms: number): number {
  return Math.round(ms * 100) / 100;
}

async function measure(list: Contender[]): Promise<Record<string, Record<string, Cell>>> {
  const results: Record<string, Record<string, Cell>> = {};
  const only = envChoice("DBX_BENCH_SHAPES", Object.keys(SHAPES));
  const callerCounts = envCounts("DBX_BENCH_CALLERS", CALLERS);
  for (const shape of Object.keys(SHAPES) as Shape[]) {
    if (only !== undefined && !only.includes(shape)) continue;
    const key = (callers: number, name: string) => `${callers} ${name}`;
    const qps = new Map<string, number[]>();
    const lat = new Map<string, number[]>();
    const roundP99 = new Map<string, number[]>();
    for (const callers of callerCounts) {
      for (const c of list) {
        qps.set(key(callers, c.name), []);
        lat.set(key(callers, c.name), []);
        roundP99.set(key(callers, c.name), []);
        // Warm-up: connections open, statements prepared.
        await round(c.calls[shape], callers, 100, []);
      }
    }
    // A shape's cells, every caller count and contender, take turns round by
    // round (both orders rotate): a drift of the host's load falls on all of
    // them, so cells of one shape compare with each other as well as across
    // contenders.
    for (let r = 0; r < ROUNDS; r++) {
      for (let j = 0; j < callerCounts.length; j++) {
        const callers = callerCounts[(j + r) % callerCounts.length]!;
        for (let k = 0; k < list.length; k++) {
          const c = list[(k + r) % list.length]!;
          const at = key(callers, c.name);
          const all = lat.get(at)!;
          const from = all.length;
          qps.get(at)!.push(await round(c.calls[shape], callers, ROUND_MS, all));
          const own = all.slice(from).sort((a, b) => a - b);
          roundP99.get(at)!.push(percentile(own, 0.99));
        }
      }
    }
    for (const callers of callerCounts) {
      const cells: Record<string, Cell> = {};
      for (const c of list) {
        const sorted = lat.get(key(callers, c.name))!.sort((a, b) => a - b);
        const rounds = roundP99.get(key(callers, c.name))!;
        cells[c.name] = {
          qps: Math.round(median(qps.get(key(callers, c.name))!)),
          p50: hundredths(percentile(sorted, 0.5)),
          p99: hundredths(percentile(sorted, 0.99)),
          p99Rounds: [hundredths(Math.min(...rounds)), hundredths(Math.max(...rounds))],
        };
      }
      results[`${shape}@${callers}`] = cells;
      console.error(`${shape}@${callers}: ${JSON.stringify(cells)}`);
    }
  }
  return results;
}

/** pgbench in pipeline mode: statements per second, or undefined without pgbench. */
async function pgbenchCeiling(url: string): Promise<number | undefined> {
  const binDir = await findPgBinDir();
  if (binDir === undefined) return undefined;
  const dir = await mkdtemp(join(tmpdir(), "dbx-pgbench-"));
  try {
    const script = join(dir, "pipeline.sql");
    const body = Array.from({ length: 50 }, () => "select :x::int;").join("\n");
    await writeFile(script, `\\set x random(1, 1000)\n\\startpipeline\n${body}\n\\endpipeline\n`);
    const { stdout } = await promisify(execFile)(join(binDir, "pgbench"), [
      ...["-n", "-M", "prepared", "-c", String(POOL_SIZE), "-j", "2", "-T", "5"],
      ...["-f", script, url],
    ]);
    const tps = /tps = ([\d.]+)/.exec(stdout)?.[1];
    return tps === undefined ? undefined : Math.round(Number(tps) * 50);
  } catch (err) {
    console.error(`pgbench failed: ${(err as Error).message}`);
    return undefined;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function report(results: Record<string, Record<string, Cell>>, names: string[]): string {
  const header = [
    "shape @ callers",
    ...names,
    "dbx ÷ best peer",
    "p50/p99 ms (" + names.join(", ") +
    ")",
  ];
  const rows = Object.entries(results).map(([cell, byName]) => {
    const [shape, callers] = cell.split("@") as [Shape, string];
    const best = Math.max(...names.filter((n) => n !== "dbx").map((n) => byName[n]!.qps));
    return [
      `${SHAPES[shape].label} @${callers}`,
      ...names.map((n) => String(byName[n]!.qps)),
      (byName.dbx!.qps / best).toFixed(2),
      names.map((n) => `${byName[n]!.p50}/${byName[n]!.p99}`).join("  "),
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i]!)).join(" | ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("-|-"), ...rows.map(line)].join(
    "\n",
  );
}

/**
 * The p99s at `callers` callers: every contender's over all rounds, and the
 * lowest and highest of its rounds' own, a line per shape.
 */
function tails(
  results: Record<string, Record<string, Cell>>,
  names: string[],
  callers: number,
): string {
  const lines = Object.entries(results)
    .filter(([cell]) => cell.endsWith(`@${callers}`))
    .map(([cell, byName]) => {
      const shape = cell.split("@")[0] as Shape;
      const each = names.map((n) => {
        const { p99, p99Rounds: [low, high] } = byName[n]!;
        return `${n} ${p99} (${low}–${high})`;
      });
      return `${SHAPES[shape].label.padEnd(24)} | ${each.join(" | ")}`;
    });
  if (lines.length === 0) return "";
  return [`p99 ms at ${callers} callers, all rounds (each round's own: lowest–highest)`, ...lines]
    .join("\n");
}

/**
 * Runs `fn` against the bench's server, its tables just created: `DBX_BENCH_URL` when
 * set, else a local primary started (and stopped) here.
 *
 * @param fn The bench.
 */
export async function withBenchServer(fn: (url: string) => Promise<void>): Promise<void> {
  const local = process.env.DBX_BENCH_URL === undefined
    ? await startLocalCluster({ replicas: 0 })
    : undefined;
  try {
    const url = local?.masterUrl ?? process.env.DBX_BENCH_URL!;
    await prepare(url);
    await fn(url);
  } finally {
    await local?.close();
  }
}

async function main(url: string): Promise<void> {
  const every = await contenders(url);
  // DBX_BENCH_CLIENTS=Bun.SQL measures some of them only (dbx always).
  let chosen;
  try {
    chosen = envChoice("DBX_BENCH_CLIENTS", every.map((c) => c.name));
  } catch (err) {
    for (const c of every) await c.close();
    throw err;
  }
  const list: Contender[] = [];
  for (const c of every) {
    if (chosen === undefined || c.name === "dbx" || chosen.includes(c.name)) list.push(c);
    else await c.close();
  }
  let results;
  try {
    results = await measure(list);
  } finally {
    for (const c of list) await c.close();
  }
  const ceiling = await pgbenchCeiling(url);
  const names = list.map((c) => c.name);
  console.log(`\n${runtime}: pool ${POOL_SIZE}, ${ROUNDS} rounds of ${ROUND_MS} ms per cell`);
  console.log(report(results, names));
  const tailLines = tails(results, names, 64);
  if (tailLines !== "") console.log(tailLines);
  const dbxBest = Math.max(...Object.values(results).map((r) => r.dbx!.qps));
  if (ceiling !== undefined) {
    console.log(
      `pgbench pipeline ceiling: ${ceiling} statements/s; dbx's best cell is ${
        (100 * dbxBest / ceiling).toFixed(1)
      } % of it`,
    );
  }
  const summary = { runtime, poolSize: POOL_SIZE, results, pgbenchPipeline: ceiling };
  await mkdir(new URL("./results/", import.meta.url), { recursive: true });
  await writeFile(
    new URL(`./results/peers-${runtime}.json`, import.meta.url),
    JSON.stringify(summary, null, 2),
  );
  console.log(JSON.stringify(summary));
}

if (import.meta.main) await withBenchServer(main);
