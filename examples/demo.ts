/**
 * `deno task demo`: dbx in front of a real local primary and two streaming
 * replicas, under a mixed workload, through a replica crash and a failover.
 *
 * 1. starts a throwaway cluster from the PostgreSQL binaries on this machine;
 * 2. runs 6 readers and 2 writers through dbx for ~15 s;
 * 3. at ~5 s kills replica2, at ~9 s stops the primary and promotes replica1;
 * 4. prints per-node routing, errors, retries, the time writes were
 *    unavailable, and checks that every acknowledged write is present once.
 *
 * Exits 0 on success, 1 if an acknowledged write is missing or doubled.
 *
 * @module
 */

import { connect, type MetricsHook } from "../mod.ts";
import { startLocalCluster } from "../src/testing/mod.ts";

const DURATION_MS = 15_000;
const KILL_AT_MS = 5_000;
const FAILOVER_AT_MS = 9_000;
const READERS = 6;
const WRITERS = 2;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const tty = Deno.stdout.isTerminal();

console.log("Starting a local PostgreSQL cluster: 1 primary + 2 streaming replicas ...");
await using local = await startLocalCluster({ replicas: 2 });
const portName = new Map(local.nodes.map((n) => [`127.0.0.1:${n.port}`, n.name]));
const label = (node: string) => portName.get(node) ?? node;

const served = new Map<string, { reads: number; writes: number; errors: number }>();
const events: string[] = [];
let retries = 0;
const started = performance.now();
const at = () => `${((performance.now() - started) / 1000).toFixed(1)}s`;
const metrics: MetricsHook = {
  onQueryEnd(e) {
    const s = served.get(e.node) ?? { reads: 0, writes: 0, errors: 0 };
    if (e.error !== undefined) s.errors++;
    else if (e.sql.startsWith("select")) s.reads++;
    else s.writes++;
    served.set(e.node, s);
  },
  onRetry: () => void retries++,
  onNodeDown: (e) => void events.push(`${at()} ${label(e.node)} down`),
  onNodeUp: (e) => void events.push(`${at()} ${label(e.node)} up`),
  onRoleChange: (e) => void events.push(`${at()} ${label(e.node)} ${e.from} -> ${e.to}`),
};

await using cluster = await connect({
  master: local.masterUrl,
  replicas: local.replicaUrls,
  healthCheck: { intervalMs: 500, timeoutMs: 500 },
  metrics,
});
await cluster.exec(
  "create table ledger(id bigint not null, at timestamptz not null default now())",
);

let running = true;
let nextId = 1;
const acknowledged: number[] = [];
const ackTimes: number[] = [];
let failedWrites = 0;
let failedReads = 0;
let reads = 0;
const readErrors = new Map<string, number>();

const writer = async () => {
  while (running) {
    const id = nextId++;
    try {
      await cluster.exec("insert into ledger(id) values ($1)", [id]);
      acknowledged.push(id);
      ackTimes.push(performance.now());
    } catch {
      failedWrites++;
      await sleep(20);
    }
  }
};
const reader = async () => {
  while (running) {
    try {
      await cluster.readQuery("select count(*) from ledger where id > $1", [nextId - 50]);
      reads++;
    } catch (err) {
      failedReads++;
      const msg = `${at()} ${err instanceof Error ? err.message : String(err)}`;
      readErrors.set(msg, (readErrors.get(msg) ?? 0) + 1);
      await sleep(20);
    }
  }
};

const workers = [
  ...Array.from({ length: WRITERS }, writer),
  ...Array.from({ length: READERS }, reader),
];
const progress = setInterval(() => {
  const line = `${at().padStart(6)}  reads ${reads}  writes ${acknowledged.length}  ` +
    `failed reads ${failedReads}  failed writes ${failedWrites}  retries ${retries}`;
  if (tty) Deno.stdout.writeSync(new TextEncoder().encode(`\r${line}   `));
  else console.log(line);
}, 1_000);

let failoverStarted = 0;
try {
  await sleep(KILL_AT_MS);
  events.push(`${at()} killing replica2 (immediate shutdown)`);
  await local.kill("replica2");
  await sleep(FAILOVER_AT_MS - KILL_AT_MS);
  events.push(`${at()} stopping the primary and promoting replica1`);
  failoverStarted = performance.now();
  await local.stop("primary");
  await local.promote("replica1");
  events.push(`${at()} replica1 promoted`);
  await sleep(Math.max(0, DURATION_MS - (performance.now() - started)));
} finally {
  running = false;
  clearInterval(progress);
  await Promise.all(workers);
}
if (tty) console.log();

// Writes were unavailable for the longest pause between two acknowledged
// writes from the failover on (the old primary keeps acknowledging while it
// shuts down, so "last before / first after" would understate it).
const sorted = ackTimes.filter((t) => t >= failoverStarted - 1_000).sort((a, b) => a - b);
let gapMs = NaN;
for (let i = 1; i < sorted.length; i++) {
  const gap = sorted[i]! - sorted[i - 1]!;
  if (Number.isNaN(gapMs) || gap > gapMs) gapMs = gap;
}

const rows = await cluster.query<{ id: string; n: number }>(
  "select id::text, count(*)::int as n from ledger group by id",
);
const counts = new Map(rows.map((r) => [Number(r.id), r.n]));
const missing = acknowledged.filter((id) => !counts.has(id)).length;
const duplicated = rows.filter((r) => r.n > 1).length;

console.log("\nEvents:");
for (const e of events) console.log(`  ${e}`);
console.log("\nPer node:");
const stats = cluster.stats();
console.table(
  Object.fromEntries(stats.nodes.map((n) => {
    const s = served.get(n.name) ?? { reads: 0, writes: 0, errors: 0 };
    return [label(n.name), {
      role: n.role,
      healthy: n.healthy,
      reads: s.reads,
      writes: s.writes,
      errors: s.errors,
      retries: n.retries,
      "p50 ms": n.latencyP50Ms ?? "-",
      "p99 ms": n.latencyP99Ms ?? "-",
    }];
  })),
);
console.log(
  `Totals: ${reads} reads (${failedReads} failed), ${acknowledged.length} writes acknowledged ` +
    `(${failedWrites} failed attempts), ${retries} retries`,
);
console.log(
  `Writes unavailable during failover: ${Number.isNaN(gapMs) ? "n/a" : `${Math.round(gapMs)} ms`}`,
);
console.log(
  `Ledger: ${acknowledged.length} acknowledged, ${acknowledged.length - missing} present, ` +
    `${missing} missing, ${duplicated} duplicated`,
);
if (missing > 0 || duplicated > 0) {
  console.error("FAIL: an acknowledged write was lost or doubled");
  Deno.exitCode = 1;
}
