/**
 * `deno task bench`: raw `pg.Pool` against dbx on one local cluster (a primary
 * and 2 streaming replicas), same pool size (10) and concurrency (10 callers).
 *
 * - throughput, in alternating rounds (raw, dbx, replicas / replicas, dbx,
 *   raw, ...), of `select $1::int` and of a ~1 kB row: raw `pool.query`,
 *   `cluster.query` (primary) and `cluster.readQuery` (2 replicas); the
 *   median of each contender, and `dbxOverRaw` = median dbx primary ÷ median
 *   raw for `select $1::int`;
 * - memory: RSS and heap before/after 200k `cluster.query` calls (after a
 *   warm-up and a GC), and the same for raw `pool.query` as the baseline;
 * - stream: RSS before, after and at its peak while `cluster.stream` hands out
 *   1 M rows (`streamRssGrowthMb` = peak − before);
 * - `pgbench -S -M prepared` on the primary as the server's ceiling, when
 *   `pgbench` sits next to the other PostgreSQL binaries;
 * - pipelining (`callers.ts`): dbx vs raw `pg.Pool` vs postgres.js at 1, 10
 *   and 64 callers, p50/p99 at 10 callers, and the p99 of fast statements
 *   when 1 % are slow;
 * - sessions (`sessions.ts`): a read-mostly workload in read-your-writes
 *   sessions vs everything on the primary vs no session;
 * - ORMs (`orms.ts`): Drizzle and Kysely (PostgresDialect on `pgPool()`,
 *   and `dbxDialect`) on dbx vs the same ORM on a raw `pg.Pool`, point
 *   select by primary key at 10 and 64 callers;
 * - a slow replica (`slow_replica.ts`, also `deno task bench:slow`): one of
 *   two replicas 30 ms slower, round robin vs `latencyAware()` vs hedging;
 * - a failover: how long writes through dbx were unavailable.
 *
 * Prints tables, writes the summary to `bench/results/latest.json`, and
 * prints the summary as one JSON object on the last line.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type Cluster, connect } from "../mod.ts";
import { findPgBinDir, type LocalCluster, startLocalCluster } from "../src/testing/mod.ts";
import { callerScaling } from "./callers.ts";
import { sessionWorkload } from "./sessions.ts";
import { ormBench, printOrmBench } from "./orms.ts";
import { slowReplicaBench, slowReplicaReport } from "./slow_replica.ts";

const CONCURRENCY = 10;
const POOL_SIZE = 10;
/** Many short rounds: raw and dbx run close in time, so load drift on a shared host cancels. */
const ROUNDS = 16;
const ROUND_MS = 500;
const WARMUP_MS = 500;
const MEMORY_QUERIES = 200_000;
/** Long enough for RSS to settle at the workload's plateau (~40k queries here). */
const MEMORY_WARMUP = 50_000;
const MEMORY_STEP = 20_000;
/** The pipelining targets (issue #10): lower bounds on dbx ÷ peer, upper bound on p99 ÷ raw. */
const TARGETS = {
  dbxOverRaw: 2.0,
  dbxOverRaw64: 2.5,
  dbxOverRaw1: 0.95,
  dbxOverPostgresJs: 2.0,
  p99OverRaw: 1.0,
} as const;
const TARGET_RSS_MB = 10;

type Contender = "raw" | "dbx" | "replicas";
type Call = (i: number) => Promise<unknown>;

const LABEL: Record<Contender, string> = {
  raw: "raw pg.Pool (primary)",
  dbx: "dbx query (primary)",
  replicas: "dbx readQuery (2 replicas)",
};

const gc = (globalThis as { gc?: () => void }).gc;
const MB = 1024 * 1024;

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

/** A plain-text table: numeric-looking columns right-aligned. */
function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map(String))];
  const widths = headers.map((_, c) => Math.max(...cells.map((r) => r[c]!.length)));
  const numeric = headers.map((_, c) => rows.every((r) => /^[-+\d.,–]*$/.test(String(r[c]))));
  const line = (r: string[]) =>
    r.map((v, c) => numeric[c] ? v.padStart(widths[c]!) : v.padEnd(widths[c]!)).join("  ")
      .trimEnd();
  return [line(cells[0]!), widths.map((w) => "-".repeat(w)).join("  "), ...cells.slice(1).map(line)]
    .map((l) => `  ${l}`).join("\n");
}

/** Queries per second of `fn` with CONCURRENCY callers, for `ms` (or until `signal` aborts). */
async function throughput(fn: Call, ms: number, signal: AbortSignal): Promise<number> {
  let done = 0;
  const start = performance.now();
  const end = start + ms;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < end && !signal.aborted) {
        await fn(done);
        done++;
      }
    }),
  );
  signal.throwIfAborted();
  return done / ((performance.now() - start) / 1000);
}

/** Runs exactly `count` calls of `fn` with CONCURRENCY callers. */
async function runCount(fn: Call, count: number, signal: AbortSignal): Promise<void> {
  let issued = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (issued < count && !signal.aborted) await fn(issued++);
    }),
  );
  signal.throwIfAborted();
}

interface MemorySample {
  rssBeforeMb: number;
  rssAfterMb: number;
  rssGrowthMb: number;
  /** Highest RSS in the second half of the run minus the highest in the first half. */
  rssPeakGrowthMb: number;
  heapUsedGrowthMb: number;
  /** RSS every MEMORY_STEP queries (no GC in between), from before to after. */
  rssSamplesMb: number[];
}

/**
 * RSS and heap growth over MEMORY_QUERIES calls, after MEMORY_WARMUP calls and a
 * GC. RSS moves in steps of ~20 MB both ways whatever the client (the runtime
 * taking and returning memory), so the peak of each half is reported too: a
 * leak raises it, a step down and back up does not.
 */
async function memory(fn: Call, signal: AbortSignal): Promise<MemorySample> {
  const mb = (n: number) => Math.round((n / MB) * 10) / 10;
  await runCount(fn, MEMORY_WARMUP, signal);
  gc?.();
  const before = Deno.memoryUsage();
  const rssSamplesMb = [mb(before.rss)];
  for (let done = 0; done < MEMORY_QUERIES; done += MEMORY_STEP) {
    await runCount(fn, Math.min(MEMORY_STEP, MEMORY_QUERIES - done), signal);
    rssSamplesMb.push(mb(Deno.memoryUsage().rss));
  }
  gc?.();
  const after = Deno.memoryUsage();
  rssSamplesMb.push(mb(after.rss));
  const half = Math.ceil(rssSamplesMb.length / 2);
  return {
    rssBeforeMb: mb(before.rss),
    rssAfterMb: mb(after.rss),
    rssGrowthMb: mb(after.rss - before.rss),
    rssPeakGrowthMb: Math.round(
      (Math.max(...rssSamplesMb.slice(half)) - Math.max(...rssSamplesMb.slice(0, half))) * 10,
    ) / 10,
    heapUsedGrowthMb: mb(after.heapUsed - before.heapUsed),
    rssSamplesMb,
  };
}

/** Rows streamed by {@linkcode streamMemory}. */
const STREAM_ROWS = 1_000_000;

/**
 * RSS before, after and at its peak (sampled every 50k rows) while
 * `cluster.stream` hands out STREAM_ROWS rows: bounded by `batchSize`, not
 * by the result's size.
 */
async function streamMemory(cluster: Cluster, signal: AbortSignal) {
  const mb = (n: number) => Math.round((n / MB) * 10) / 10;
  gc?.();
  const before = Deno.memoryUsage().rss;
  let peak = before;
  let rows = 0;
  for await (
    const _ of cluster.stream("select g from generate_series(1, $1::int) g", [STREAM_ROWS], {
      signal,
    })
  ) {
    if (++rows % 50_000 === 0) peak = Math.max(peak, Deno.memoryUsage().rss);
  }
  if (rows !== STREAM_ROWS) throw new Error(`streamed ${rows} rows, expected ${STREAM_ROWS}`);
  gc?.();
  const after = Deno.memoryUsage().rss;
  return {
    beforeMb: mb(before),
    afterMb: mb(after),
    peakMb: mb(peak),
    growthMb: mb(peak - before),
  };
}

/** `pgbench -S -M prepared` against the primary: the server's own ceiling, or why it was skipped. */
async function pgbench(
  local: LocalCluster,
  signal: AbortSignal,
): Promise<{ tps: number } | { skipped: string }> {
  const bin = await findPgBinDir();
  if (bin === undefined) return { skipped: "no PostgreSQL binaries found" };
  const exe = join(bin, "pgbench");
  try {
    await Deno.stat(exe);
  } catch {
    return { skipped: `no pgbench in ${bin}` };
  }
  // Run as the postgres OS user when root, like the servers themselves.
  const asRoot = Deno.uid() === 0;
  const port = String(local.nodes[0]!.port);
  const common = ["-h", "127.0.0.1", "-p", port, "-U", "postgres"];
  const run = async (args: string[]) => {
    const [cmd, argv] = asRoot ? ["runuser", ["-u", "postgres", "--", exe, ...args]] : [exe, args];
    const out = await new Deno.Command(cmd, {
      args: argv,
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.any([signal, AbortSignal.timeout(60_000)]),
    }).output();
    const text = new TextDecoder();
    if (!out.success) {
      throw new Error(
        `pgbench ${args[0]} failed: ${text.decode(out.stderr).trim().split("\n")[0]}`,
      );
    }
    return text.decode(out.stdout);
  };
  try {
    await run(["-i", "-s", "1", "-q", ...common, "postgres"]);
    const stdout = await run([
      ...["-S", "-M", "prepared", "-c", String(CONCURRENCY), "-j", "2", "-T", "5"],
      ...common,
      "postgres",
    ]);
    const m = /tps = ([\d.]+)/.exec(stdout);
    return m ? { tps: Number(m[1]) } : { skipped: "pgbench printed no tps" };
  } catch (err) {
    signal.throwIfAborted();
    return { skipped: err instanceof Error ? err.message : String(err) };
  }
}

/** Stops the primary, promotes replica1 and measures the write gap seen through dbx. */
async function failover(
  local: LocalCluster,
  signal: AbortSignal,
): Promise<{ writeGapMs: number; promoteMs: number; detectMs: number }> {
  const [primary, replica1] = local.nodes;
  let seenAt = NaN;
  await using cluster = await connect({
    master: { name: primary!.name, url: primary!.url },
    replicas: local.nodes.slice(1).map((n) => ({ name: n.name, url: n.url })),
    healthCheck: { intervalMs: 500, timeoutMs: 500 },
    metrics: {
      onRoleChange: (e) => {
        if (e.node === replica1!.name && e.to === "primary") seenAt = performance.now();
      },
    },
  });
  await cluster.exec("create table if not exists bench_failover(id bigint)");
  let running = true;
  let lastOld = NaN;
  let firstNew = NaN;
  const writer = async () => {
    for (let id = 0; running; id++) {
      try {
        const [row] = await cluster.query<{ port: number }>(
          "insert into bench_failover values ($1) returning inet_server_port() as port",
          [id],
        );
        if (row!.port === primary!.port) lastOld = performance.now();
        else if (Number.isNaN(firstNew)) firstNew = performance.now();
      } catch {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  };
  const writers = Array.from({ length: 2 }, writer);
  try {
    await new Promise((r) => setTimeout(r, 500));
    await local.stop(primary!.name);
    const promoting = performance.now();
    await local.promote(replica1!.name);
    const promoted = performance.now();
    const deadline = promoted + 10_000;
    while (Number.isNaN(firstNew) && performance.now() < deadline && !signal.aborted) {
      await new Promise((r) => setTimeout(r, 20));
    }
    signal.throwIfAborted();
    return {
      writeGapMs: Math.round(firstNew - lastOld),
      promoteMs: Math.round(promoted - promoting),
      detectMs: Math.round(seenAt - promoted),
    };
  } finally {
    running = false;
    await Promise.all(writers);
  }
}

async function main(signal: AbortSignal): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  console.log(
    `dbx bench on Deno ${Deno.version.deno} (${navigator.hardwareConcurrency} CPUs): ` +
      `${CONCURRENCY} callers, pool ${POOL_SIZE}, ${ROUNDS} rounds of ${ROUND_MS} ms per contender`,
  );
  console.log("Starting a local cluster (1 primary + 2 replicas) ...");
  await using local = await startLocalCluster({ replicas: 2, signal });
  const raw = new pg.Pool({ connectionString: local.masterUrl, max: POOL_SIZE });
  let rawEnded = false;
  const endRaw = () => rawEnded ? Promise.resolve() : (rawEnded = true, raw.end());
  await using _raw = { [Symbol.asyncDispose]: endRaw };
  raw.on("error", () => {});
  await using cluster: Cluster = await connect({
    master: local.masterUrl,
    replicas: local.replicaUrls,
    pool: { max: POOL_SIZE },
  });

  const PAD = "select repeat('x', 1000) as pad, $1::int as n";
  const workloads: Record<string, Record<Contender, Call>> = {
    "select $1::int": {
      raw: (i) => raw.query("select $1::int", [i]),
      dbx: (i) => cluster.query("select $1::int", [i]),
      replicas: (i) => cluster.readQuery("select $1::int", [i]),
    },
    "1 kB row": {
      raw: (i) => raw.query(PAD, [i]),
      dbx: (i) => cluster.query(PAD, [i]),
      replicas: (i) => cluster.readQuery(PAD, [i]),
    },
  };

  const results: Record<
    string,
    { rounds: Record<Contender, number[]>; median: Record<Contender, number>; paired: number }
  > = {};
  for (const [name, w] of Object.entries(workloads)) {
    for (const k of ["raw", "dbx", "replicas"] as const) await throughput(w[k], WARMUP_MS, signal);
    const rounds: Record<Contender, number[]> = { raw: [], dbx: [], replicas: [] };
    for (let r = 0; r < ROUNDS; r++) {
      // ABC then CBA: drift in the machine's load hits every contender alike.
      const order: Contender[] = r % 2 === 0
        ? ["raw", "dbx", "replicas"]
        : ["replicas", "dbx", "raw"];
      for (const k of order) rounds[k].push(await throughput(w[k], ROUND_MS, signal));
    }
    const med = {
      raw: median(rounds.raw),
      dbx: median(rounds.dbx),
      replicas: median(rounds.replicas),
    };
    // Each round's raw and dbx runs are back to back: their ratio cancels slow drift.
    const paired = median(rounds.dbx.map((d, i) => d / rounds.raw[i]!));
    results[name] = { rounds, median: med, paired };
    console.log(`  ${name}: done (dbx / raw ${(med.dbx / med.raw).toFixed(3)})`);
  }

  console.log(`Memory: ${MEMORY_QUERIES} queries each, after ${MEMORY_WARMUP} warm-up ...`);
  const mem = {
    dbx: await memory((i) => cluster.query("select $1::int", [i]), signal),
    raw: await memory((i) => raw.query("select $1::int", [i]), signal),
  };

  console.log(`Stream: ${STREAM_ROWS} rows through cluster.stream ...`);
  const streamed = await streamMemory(cluster, signal);

  console.log("Pipelining: raw pg.Pool vs dbx vs postgres.js at 1, 10, 64 callers ...");
  const scaling = await callerScaling(local.masterUrl, POOL_SIZE, signal);

  console.log("Sessions: read-your-writes vs all on the primary vs no session ...");
  const sessions = await sessionWorkload(cluster, signal);

  console.log("ORMs: Drizzle and Kysely on dbx vs on a raw pg.Pool at 10, 64 callers ...");
  const orms = await ormBench(cluster, local.masterUrl, POOL_SIZE, signal);
  console.log("Slow replica: one of two replicas 30 ms slower, 10 callers, 3 s per row ...");
  const slowReplica = await slowReplicaBench(local, signal);

  console.log("pgbench -S -M prepared -c 10 -j 2 -T 5 on the primary ...");
  const bench = await pgbench(local, signal);

  // Last: it takes the primary down.
  console.log("Failover: stop the primary, promote replica1, writes through dbx ...");
  await endRaw();
  const fo = await failover(local, signal);

  const select = results["select $1::int"]!;
  const kb = results["1 kB row"]!;
  console.log("\nThroughput (queries/s; median of alternating rounds):");
  const rows: (string | number)[][] = [];
  for (const [name, r] of Object.entries(results)) {
    for (const k of ["raw", "dbx", "replicas"] as const) {
      rows.push([
        k === "raw" ? name : "",
        LABEL[k],
        Math.round(r.median[k]),
        (r.median[k] / r.median.raw).toFixed(3),
        `${Math.round(Math.min(...r.rounds[k]))}–${Math.round(Math.max(...r.rounds[k]))}`,
      ]);
    }
  }
  if ("tps" in bench) {
    rows.push(["pgbench -S", "server ceiling (primary)", Math.round(bench.tps), "", ""]);
  }
  console.log(table(["workload", "contender", "median q/s", "÷ raw", "rounds min–max"], rows));
  if (!("tps" in bench)) console.log(`  pgbench skipped: ${bench.skipped}`);
  console.log(
    `  paired dbx/raw (median of per-round ratios): select ${select.paired.toFixed(3)}, ` +
      `1 kB ${kb.paired.toFixed(3)}`,
  );

  console.log(
    `\nMemory over ${MEMORY_QUERIES} queries (${
      gc ? "after a forced GC" : "no --expose-gc: includes uncollected garbage"
    }):`,
  );
  console.log(table(
    [
      "contender",
      "RSS before MB",
      "RSS after MB",
      "RSS growth MB",
      "peak growth MB",
      "heap used growth MB",
    ],
    (["dbx", "raw"] as const).map((k) => [
      k === "dbx" ? "dbx cluster.query" : "raw pool.query",
      mem[k].rssBeforeMb.toFixed(1),
      mem[k].rssAfterMb.toFixed(1),
      mem[k].rssGrowthMb.toFixed(1),
      mem[k].rssPeakGrowthMb.toFixed(1),
      mem[k].heapUsedGrowthMb.toFixed(1),
    ]),
  ));
  for (const k of ["dbx", "raw"] as const) {
    console.log(
      `  ${k} RSS every ${MEMORY_STEP / 1000}k queries: ${mem[k].rssSamplesMb.join(" ")}`,
    );
  }

  console.log(
    `  stream ${STREAM_ROWS} rows: RSS before ${streamed.beforeMb} MB, after ${streamed.afterMb} MB, ` +
      `peak ${streamed.peakMb} MB (growth ${streamed.growthMb} MB)`,
  );

  console.log("\nCallers (select $1::int, q/s, median of alternating rounds; pool 10 each):");
  console.log(table(
    ["callers", "raw pg.Pool", "dbx", "postgres.js", "dbx ÷ raw", "dbx ÷ postgres.js"],
    Object.entries(scaling.qps).map(([n, q]) => [
      n,
      q.raw,
      q.dbx,
      q.postgresjs,
      (q.dbx / q.raw).toFixed(3),
      (q.dbx / q.postgresjs).toFixed(3),
    ]),
  ));
  console.log(table(
    ["latency at 10 callers", "p50 ms", "p99 ms"],
    (["raw", "dbx", "postgresjs"] as const).map((k) => [
      k,
      scaling.latency[k].p50.toFixed(2),
      scaling.latency[k].p99.toFixed(2),
    ]),
  ));
  console.log(
    `  mixed (1 % pg_sleep(0.05)), p99 of the fast statements: raw ${scaling.mixedFastP99.raw} ms, ` +
      `dbx ${scaling.mixedFastP99.dbx} ms`,
  );

  console.log(
    "\nSessions (5 reads per request, a write every 4th request; reads/s, median):",
  );
  console.log(table(
    ["mode", "reads/s", "÷ all on primary"],
    (["session", "primary", "none"] as const).map((k) => [
      k === "session"
        ? "cluster.session + readQuery"
        : k === "primary"
        ? "everything on the primary"
        : "readQuery, no session (may be stale)",
      sessions.readsPerSecond[k],
      (sessions.readsPerSecond[k] / sessions.readsPerSecond.primary).toFixed(3),
    ]),
  ));
  console.log(
    `  session reads served by replicas: ${(sessions.sessionReplicaShare * 100).toFixed(1)} %`,
  );

  console.log(
    "\nSlow replica (one of two 30 ms slower through faultProxy; 10 callers, 3 s per row):",
  );
  for (const line of slowReplicaReport(slowReplica)) console.log(line);

  console.log(
    Number.isNaN(fo.writeGapMs)
      ? "\nFailover: no write reached the promoted replica within 10 s"
      : `\nFailover (health check every 500 ms): writes unavailable ${fo.writeGapMs} ms ` +
        `(promote took ${fo.promoteMs} ms, dbx saw it ${fo.detectMs} ms later)`,
  );

  printOrmBench(orms);

  const dbxOverRaw = select.median.dbx / select.median.raw;
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  const summary = {
    dbxOverRaw: r3(dbxOverRaw),
    dbxOverRawPaired: r3(select.paired),
    dbxOverRaw1kB: r3(kb.median.dbx / kb.median.raw),
    replicasOverRaw: r3(select.median.replicas / select.median.raw),
    dbxOverRaw1: r3(scaling.qps["1"]!.dbx / scaling.qps["1"]!.raw),
    dbxOverRaw10: r3(scaling.qps["10"]!.dbx / scaling.qps["10"]!.raw),
    dbxOverRaw64: r3(scaling.qps["64"]!.dbx / scaling.qps["64"]!.raw),
    dbxOverPostgresJs: r3(scaling.qps["10"]!.dbx / scaling.qps["10"]!.postgresjs),
    dbxOverPostgresJs64: r3(scaling.qps["64"]!.dbx / scaling.qps["64"]!.postgresjs),
    p99OverRaw: r3(scaling.mixedFastP99.dbx / scaling.mixedFastP99.raw),
    sessionOverPrimary: r3(sessions.readsPerSecond.session / sessions.readsPerSecond.primary),
    sessionOverNoSession: r3(sessions.readsPerSecond.session / sessions.readsPerSecond.none),
    sessions,
    slowReplica,
    callers: scaling,
    orms,
    qps: Object.fromEntries(
      Object.entries(results).map(([k, v]) => [k, {
        raw: Math.round(v.median.raw),
        dbx: Math.round(v.median.dbx),
        replicas: Math.round(v.median.replicas),
      }]),
    ),
    roundsQps: Object.fromEntries(
      Object.entries(results).map(([k, v]) => [
        k,
        Object.fromEntries(
          Object.entries(v.rounds).map(([c, xs]) => [c, xs.map((x) => Math.round(x))]),
        ),
      ]),
    ),
    rssGrowthMbPer200k: mem.dbx.rssGrowthMb,
    rssPeakGrowthMbPer200k: mem.dbx.rssPeakGrowthMb,
    heapGrowthMbPer200k: mem.dbx.heapUsedGrowthMb,
    rawRssGrowthMbPer200k: mem.raw.rssGrowthMb,
    rssSamplesMb: { dbx: mem.dbx.rssSamplesMb, raw: mem.raw.rssSamplesMb },
    streamRssGrowthMb: streamed.growthMb,
    gcExposed: gc !== undefined,
    pgbenchTps: "tps" in bench ? Math.round(bench.tps) : null,
    failoverWriteGapMs: Number.isNaN(fo.writeGapMs) ? null : fo.writeGapMs,
    targetsMet: {
      dbxOverRaw: dbxOverRaw >= TARGETS.dbxOverRaw,
      dbxOverRaw64: scaling.qps["64"]!.dbx / scaling.qps["64"]!.raw >= TARGETS.dbxOverRaw64,
      dbxOverRaw1: scaling.qps["1"]!.dbx / scaling.qps["1"]!.raw >= TARGETS.dbxOverRaw1,
      dbxOverPostgresJs: scaling.qps["10"]!.dbx / scaling.qps["10"]!.postgresjs >=
        TARGETS.dbxOverPostgresJs,
      p99OverRaw: scaling.mixedFastP99.dbx <= scaling.mixedFastP99.raw * TARGETS.p99OverRaw,
      rssGrowth: mem.dbx.rssGrowthMb < TARGET_RSS_MB,
      rssPeakGrowth: mem.dbx.rssPeakGrowthMb < TARGET_RSS_MB,
      orms: orms.targetMet,
      slowReplicaShare: slowReplica.targetsMet.slowShare,
      slowReplicaP95: slowReplica.targetsMet.p95,
      slowReplicaHedgedP99: slowReplica.targetsMet.hedgedP99,
    },
    rounds: ROUNDS,
    roundMs: ROUND_MS,
    concurrency: CONCURRENCY,
    poolSize: POOL_SIZE,
    runtime: `deno ${Deno.version.deno}`,
    cpus: navigator.hardwareConcurrency,
    durationS: 0,
  };
  const dir = join(import.meta.dirname ?? ".", "results");
  await mkdir(dir, { recursive: true });
  summary.durationS = Math.round((performance.now() - t0) / 1000);
  await writeFile(join(dir, "latest.json"), JSON.stringify(summary, null, 2) + "\n");
  const verdict = (ok: boolean) => ok ? "met" : "NOT met";
  const ratios = (["dbxOverRaw", "dbxOverRaw64", "dbxOverRaw1", "dbxOverPostgresJs"] as const)
    .map((k) => `${k} ${summary[k]} ≥ ${TARGETS[k]} ${verdict(summary.targetsMet[k])}`);
  console.log(
    `\ntargets: ${ratios.join(", ")}, p99OverRaw ${summary.p99OverRaw} ≤ ${TARGETS.p99OverRaw} ${
      verdict(summary.targetsMet.p99OverRaw)
    }; RSS growth per 200k < ${TARGET_RSS_MB} MB: before/after ${summary.rssGrowthMbPer200k} MB ${
      verdict(summary.targetsMet.rssGrowth)
    }, peak ${summary.rssPeakGrowthMbPer200k} MB ${verdict(summary.targetsMet.rssPeakGrowth)}`,
  );
  console.log("summary written to bench/results/latest.json");
  return summary;
}

// Ctrl-C or a CI timeout must not leave servers behind: abort, let `await using` clean up.
const interrupt = new AbortController();
const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
const onSignal = () => {
  if (interrupt.signal.aborted) return;
  console.log("\ninterrupted: stopping the local cluster ...");
  interrupt.abort(new Error("interrupted"));
};
for (const s of signals) Deno.addSignalListener(s, onSignal);
try {
  const summary = await main(interrupt.signal);
  // Printed after every server is gone, so that it is the last line of output.
  console.log(JSON.stringify(summary));
} catch (err) {
  if (interrupt.signal.aborted) {
    Deno.exitCode = 130;
  } else {
    console.error("\nbench failed:", err);
    Deno.exitCode = 1;
  }
} finally {
  for (const s of signals) Deno.removeSignalListener(s, onSignal);
}
