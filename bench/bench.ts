/**
 * `deno task bench`: raw `pg.Pool` against dbx on the same local cluster,
 * same pool size (10) and concurrency (10 callers), in alternating rounds;
 * replica reads; memory over 200k queries; and `pgbench -S` as the server's
 * ceiling when it is installed. Prints a table and, as its last line, a JSON
 * summary (also written to bench/results/latest.json).
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { connect } from "../mod.ts";
import { findPgBinDir, startLocalCluster } from "../src/testing/mod.ts";

const CONCURRENCY = 10;
const POOL_SIZE = 10;
const ROUNDS = 5;
const ROUND_MS = 2_000;
const MEMORY_QUERIES = 200_000;

const run = promisify(execFile);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

/** Queries per second of `fn` with CONCURRENCY callers for `ms`. */
async function throughput(fn: (i: number) => Promise<unknown>, ms: number): Promise<number> {
  let done = 0;
  const end = performance.now() + ms;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < end) {
        await fn(done);
        done++;
      }
    }),
  );
  return done / ((performance.now() - start) / 1000);
}

console.log("Starting a local cluster (1 primary + 2 replicas) ...");
await using local = await startLocalCluster({ replicas: 2 });
const raw = new pg.Pool({ connectionString: local.masterUrl, max: POOL_SIZE });
raw.on("error", () => {});
await using cluster = await connect({
  master: local.masterUrl,
  replicas: local.replicaUrls,
  pool: { max: POOL_SIZE },
});

const PAD = "select repeat('x', 1000) as pad, $1::int as n";
const workloads = {
  "select $1::int": {
    raw: (i: number) => raw.query("select $1::int", [i]),
    dbx: (i: number) => cluster.query("select $1::int", [i]),
    replicas: (i: number) => cluster.readQuery("select $1::int", [i]),
  },
  "1 kB row": {
    raw: (i: number) => raw.query(PAD, [i]),
    dbx: (i: number) => cluster.query(PAD, [i]),
    replicas: (i: number) => cluster.readQuery(PAD, [i]),
  },
};

const results: Record<string, Record<string, number>> = {};
for (const [name, w] of Object.entries(workloads)) {
  // Warm up every contender's connections and JIT.
  await throughput(w.raw, 500);
  await throughput(w.dbx, 500);
  await throughput(w.replicas, 500);
  const rounds: Record<string, number[]> = { raw: [], dbx: [], replicas: [] };
  for (let r = 0; r < ROUNDS; r++) {
    // Alternate the order so drift in the machine's load hits both sides.
    const order = r % 2 === 0 ? ["raw", "dbx"] as const : ["dbx", "raw"] as const;
    for (const k of order) rounds[k]!.push(await throughput(w[k], ROUND_MS));
    rounds.replicas!.push(await throughput(w.replicas, ROUND_MS));
  }
  results[name] = {
    raw: median(rounds.raw!),
    dbx: median(rounds.dbx!),
    replicas: median(rounds.replicas!),
    dbxOverRaw: median(rounds.dbx!) / median(rounds.raw!),
  };
  console.log(
    `${name}: rounds raw ${rounds.raw!.map(Math.round)} dbx ${rounds.dbx!.map(Math.round)}`,
  );
}

// Memory: RSS before and after 200k primary queries (after a warm-up).
const gc = (globalThis as { gc?: () => void }).gc;
gc?.();
const rssBefore = Deno.memoryUsage().rss;
let n = 0;
await Promise.all(
  Array.from({ length: CONCURRENCY }, async () => {
    while (n < MEMORY_QUERIES) {
      n++;
      await cluster.query("select $1::int", [n]);
    }
  }),
);
gc?.();
const rssAfter = Deno.memoryUsage().rss;
const rssGrowthMb = (rssAfter - rssBefore) / 1024 / 1024;

// pgbench -S -M prepared: the server's own ceiling for read-only point queries.
let pgbenchTps: number | undefined;
const bin = await findPgBinDir();
if (bin !== undefined) {
  try {
    const asPostgres = (cmd: string, args: string[]) =>
      Deno.uid() === 0 ? run("runuser", ["-u", "postgres", "--", cmd, ...args]) : run(cmd, args);
    const port = String(local.nodes[0]!.port);
    const common = ["-h", "127.0.0.1", "-p", port, "-U", "postgres"];
    await asPostgres(join(bin, "pgbench"), ["-i", "-s", "1", "-q", ...common, "postgres"]);
    const { stdout } = await asPostgres(join(bin, "pgbench"), [
      "-S",
      "-M",
      "prepared",
      "-c",
      String(CONCURRENCY),
      "-j",
      "2",
      "-T",
      "5",
      ...common,
      "postgres",
    ]);
    const m = /tps = ([\d.]+)/.exec(stdout);
    if (m) pgbenchTps = Number(m[1]);
  } catch (err) {
    console.log(`pgbench skipped: ${err instanceof Error ? err.message.split("\n")[0] : err}`);
  }
}

await raw.end();

console.log("\nThroughput (queries/s, median of alternating rounds, 10 callers, pool 10):");
console.table(
  Object.fromEntries(
    Object.entries(results).map(([k, v]) => [k, {
      "raw pg.Pool": Math.round(v.raw!),
      "dbx primary": Math.round(v.dbx!),
      "dbx replicas": Math.round(v.replicas!),
      "dbx / raw": v.dbxOverRaw!.toFixed(3),
    }]),
  ),
);
console.log(
  `RSS: ${(rssBefore / 1048576).toFixed(1)} MB -> ${
    (rssAfter / 1048576).toFixed(1)
  } MB over ${MEMORY_QUERIES} queries ` +
    `(${rssGrowthMb.toFixed(1)} MB)${
      gc ? "" : "; no --expose-gc, so this includes garbage not yet collected"
    }`,
);
if (pgbenchTps !== undefined) {
  console.log(`pgbench -S -M prepared (server ceiling): ${Math.round(pgbenchTps)} tps`);
}

const summary = {
  dbxOverRaw: Number(results["select $1::int"]!.dbxOverRaw!.toFixed(3)),
  dbxOverRaw1kB: Number(results["1 kB row"]!.dbxOverRaw!.toFixed(3)),
  qps: Object.fromEntries(
    Object.entries(results).map(([k, v]) => [k, {
      raw: Math.round(v.raw!),
      dbx: Math.round(v.dbx!),
      replicas: Math.round(v.replicas!),
    }]),
  ),
  rssGrowthMbPer200k: Number(rssGrowthMb.toFixed(1)),
  pgbenchTps: pgbenchTps === undefined ? null : Math.round(pgbenchTps),
  rounds: ROUNDS,
  roundMs: ROUND_MS,
  concurrency: CONCURRENCY,
};
const dir = join(import.meta.dirname ?? ".", "results");
await mkdir(dir, { recursive: true });
await writeFile(join(dir, "latest.json"), JSON.stringify(summary, null, 2) + "\n");
console.log(JSON.stringify(summary));
