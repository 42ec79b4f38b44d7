/**
 * Memory of dbx and the peers over a long run, on the runtime running this file:
 * `deno task bench:rss` (Deno) and `bun bench/peers_rss.ts` (Bun).
 *
 * Each contender of `peers.ts` runs in a process of its own (the same runtime), so that
 * one's garbage is not counted as another's: {@linkcode WARMUP} point selects at
 * {@linkcode CALLERS} callers (the MBs a runtime takes once for a new load are not growth
 * with use), a full GC, RSS once the runtime has given the freed memory back
 * ({@linkcode settled}); then `DBX_RSS_STATEMENTS` more (default 1M), RSS sampled every
 * 100k; the same again. Growth is the RSS after minus before; the peak is the highest
 * sample minus before; the live heap's growth (after a full GC) is what a leak would show
 * in. Uses `DBX_BENCH_URL` when set, else starts a local primary. Prints a table, and the
 * figures as JSON on the last line.
 *
 * @module
 */

import { execFile } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { type Call, contenders, envCount, withBenchServer } from "./peers.ts";

const CALLERS = 64;
/**
 * Statements before the measure (`DBX_RSS_WARMUP`): a runtime sizes its heap for a new
 * load once, and V8 takes tens of MB for it within about the first 1M point selects
 * (dbx over 3M: RSS 90, 105, 132, 132, 132, 132, 132 MB every 500k); that is not growth
 * with use.
 */
const WARMUP = envCount("DBX_RSS_WARMUP", 1_000_000);
const STATEMENTS = envCount("DBX_RSS_STATEMENTS", 1_000_000);
const SAMPLE_EVERY = 100_000;
/** Waits of {@linkcode settled}. */
const SETTLE_STEP_MS = 500;
const SETTLE_STEPS = 20;
const SETTLE_MB = 0.5;
/** A child's permissions on Deno: the task's. */
const PERMISSIONS = ["net", "env", "read", "write", "run", "sys"].map((p) => `--allow-${p}`);

/** What one contender's process reports. */
interface Figures {
  name: string;
  statements: number;
  rssBeforeMb: number;
  rssAfterMb: number;
  growthMb: number;
  peakMb: number;
  /** Growth of the live heap (after a full collection): what a leak would show in. */
  heapGrowthMb: number;
}

const mb = (bytes: number) => Math.round(bytes / 1024 / 1024 * 10) / 10;

/** A full collection, where the runtime offers one (Deno needs `--expose-gc`). */
function collect(): void {
  const bun = (globalThis as { Bun?: { gc(force: boolean): void } }).Bun;
  if (bun !== undefined) bun.gc(true);
  else (globalThis as { gc?: () => void }).gc?.();
}

/**
 * RSS once the runtime has given back what a full collection freed: a runtime
 * returns freed pages to the system some time after the collection (Bun's
 * allocator and V8 both do it in the background), so RSS read at once still
 * counts the garbage of the last moments. Collects, then again every
 * {@linkcode SETTLE_STEP_MS} until RSS stops falling (two readings within
 * {@linkcode SETTLE_MB} MB), for at most {@linkcode SETTLE_STEPS} steps.
 *
 * @returns RSS, and the live heap after the last collection, in bytes.
 */
async function settled(): Promise<{ rss: number; heap: number }> {
  collect();
  let rss = process.memoryUsage().rss;
  for (let i = 0; i < SETTLE_STEPS; i++) {
    await new Promise((resolve) => setTimeout(resolve, SETTLE_STEP_MS));
    collect();
    const now = process.memoryUsage().rss;
    const fell = rss - now;
    rss = Math.min(rss, now);
    if (fell < SETTLE_MB * 1024 * 1024) break;
  }
  return { rss, heap: process.memoryUsage().heapUsed };
}

/** Runs `count` calls from `callers` loops, calling `every` after each `step` of them. */
async function run(fn: Call, count: number, step: number, every: () => void): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: CALLERS }, async () => {
    while (next < count) {
      const i = next++;
      await fn(i);
      if ((i + 1) % step === 0) every();
    }
  }));
}

/** In a child: measures the contender `name`. */
async function child(url: string, name: string): Promise<Figures> {
  const list = await contenders(url);
  try {
    const contender = list.find((c) => c.name === name);
    if (contender === undefined) throw new Error(`no contender named ${name}`);
    const call = contender.calls.point;
    await run(call, WARMUP, SAMPLE_EVERY, () => {});
    const before = await settled();
    let peak = before.rss;
    await run(call, STATEMENTS, SAMPLE_EVERY, () => {
      peak = Math.max(peak, process.memoryUsage().rss);
    });
    const after = await settled();
    return {
      name,
      statements: STATEMENTS,
      rssBeforeMb: mb(before.rss),
      rssAfterMb: mb(after.rss),
      growthMb: mb(after.rss - before.rss),
      peakMb: mb(peak - before.rss),
      heapGrowthMb: mb(after.heap - before.heap),
    };
  } finally {
    for (const c of list) await c.close();
  }
}

async function main(url: string): Promise<void> {
  const names = await contenders(url).then(async (list) => {
    for (const c of list) await c.close();
    return list.map((c) => c.name);
  });
  const self = fileURLToPath(import.meta.url);
  const args = "Bun" in globalThis
    ? [self]
    : ["run", ...PERMISSIONS, "--v8-flags=--expose-gc", self];
  const figures: Figures[] = [];
  for (const name of names) {
    const { stdout } = await promisify(execFile)(process.execPath, args, {
      env: { ...process.env, DBX_BENCH_URL: url, DBX_RSS_CONTENDER: name },
      maxBuffer: 1 << 20,
    });
    figures.push(JSON.parse(stdout.trim().split("\n").at(-1)!) as Figures);
    console.error(JSON.stringify(figures.at(-1)));
  }
  const runtime = "Bun" in globalThis ? "bun" : "deno";
  console.log(
    `\n${runtime}: ${STATEMENTS} point selects at ${CALLERS} callers after ${WARMUP} warm-up`,
  );
  console.log(
    "contender    | RSS before MB | after MB | growth MB | peak MB | live heap growth MB",
  );
  for (const f of figures) {
    console.log(
      `${f.name.padEnd(12)} | ${String(f.rssBeforeMb).padStart(13)} | ${
        String(f.rssAfterMb).padStart(8)
      } | ${String(f.growthMb).padStart(9)} | ${String(f.peakMb).padStart(7)} | ${
        String(f.heapGrowthMb).padStart(19)
      }`,
    );
  }
  console.log(JSON.stringify({ runtime, statements: STATEMENTS, figures }));
}

if (import.meta.main) {
  const only = process.env.DBX_RSS_CONTENDER;
  if (only !== undefined) {
    console.log(JSON.stringify(await child(process.env.DBX_BENCH_URL!, only)));
  } else await withBenchServer(main);
}
