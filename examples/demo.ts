/**
 * `deno task demo`: dbx in front of a real local primary and two streaming
 * replicas, under a mixed workload, through a replica crash and a failover.
 *
 * 1. starts a throwaway cluster from the PostgreSQL binaries on this machine
 *    (`startLocalCluster`; the npm embedded binaries when none are installed);
 * 2. runs 6 readers (`readQuery`) and 2 writers (`exec` inserts into a ledger,
 *    one id per insert) through dbx for ~15 s, with a progress line;
 * 3. at ~5 s kills replica2; at ~9 s stops the primary and promotes replica1 —
 *    dbx moves writes there by itself when its checker sees the promotion;
 * 4. prints per-node routing, errors, retries, how long writes were unavailable,
 *    and checks that every acknowledged write is present exactly once.
 *
 * Where PostgreSQL 18 can be had (installed, or npm's on linux-x64) the cluster
 * runs it with logical replication, and a change-stream consumer
 * (`cluster.subscribe()`, `demo_changes.ts`) counts every ledger insert through
 * the failover: every row on the new primary must come through at least once,
 * none it lacks. Elsewhere the demo runs without it and says so.
 *
 * Exits 0 on success, 1 when an acknowledged write is missing or doubled or
 * writes never reached the new primary, 130 when interrupted. Every server it
 * started is stopped and its directory removed, on errors and Ctrl-C too.
 *
 * @module
 */

import {
  AggregationTemporality,
  type DataPoint,
  type Histogram,
  MeterProvider,
  MetricReader,
} from "@opentelemetry/sdk-metrics";
import { connect, mayHaveBeenApplied, type MetricsHook } from "../mod.ts";
import { otelMetrics } from "../src/observe/otel.ts";
import { findPgBinaries, startLocalCluster } from "../src/testing/mod.ts";
import { type ChangeCounter, startChangeCounter } from "./demo_changes.ts";

const DURATION_MS = 15_000;
const KILL_AT_MS = 5_000;
const FAILOVER_AT_MS = 9_000;
const READERS = 6;
const WRITERS = 2;
/** Pause after a failed call, so a writer or reader does not spin while no node is up. */
const BACKOFF_MS = 25;

const READ_SQL = "select count(*)::int as n from ledger where id > $1";
const WRITE_SQL = "insert into ledger(id, writer) values ($1, $2)";

interface Served {
  reads: number;
  writes: number;
  errors: number;
  /** performance.now() of the first and last successful ledger insert. */
  firstWriteAt?: number;
  lastWriteAt?: number;
}

const tty = Deno.stdout.isTerminal();
const encoder = new TextEncoder();
/** Start of the workload: the timeline (and every printed time) counts from here. */
let started = performance.now();
const clock = (t = performance.now()) => `${((t - started) / 1000).toFixed(1).padStart(5)}s`;
let progressShown = false;

/** Prints a line above the progress line (TTY) or as a plain line (pipes, CI logs). */
function say(line: string): void {
  if (tty && progressShown) Deno.stdout.writeSync(encoder.encode("\r\x1b[K"));
  progressShown = false;
  console.log(line);
}

function progress(line: string): void {
  if (tty) {
    Deno.stdout.writeSync(encoder.encode(`\r\x1b[K${line}`));
    progressShown = true;
  } else {
    console.log(line);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, ms));
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** A plain-text table: strings left-aligned, numbers right-aligned. */
/** An OpenTelemetry metric reader that collects when asked (no timer). */
class OnDemandReader extends MetricReader {
  constructor() {
    super({ aggregationTemporalitySelector: () => AggregationTemporality.CUMULATIVE });
  }
  protected override onForceFlush(): Promise<void> {
    return Promise.resolve();
  }
  protected override onShutdown(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * Where reads went and how far each replica is behind, as a dashboard sees
 * them: from `otelMetrics()`'s `db.client.operation.duration` (SELECT
 * attempts by server and role) and `dbx.replica.lag`.
 */
async function metricsReport(reader: OnDemandReader): Promise<{ reads: string; lag: string }> {
  const { resourceMetrics } = await reader.collect();
  const metrics = resourceMetrics.scopeMetrics.flatMap((s) => s.metrics);
  const points = (name: string) =>
    metrics.find((m) => m.descriptor.name === name)?.dataPoints ?? [];
  const reads = new Map<string, { selects: number; other: number }>();
  for (const p of points("db.client.operation.duration") as DataPoint<Histogram>[]) {
    const a = p.attributes;
    const key = `${a["server.address"]}:${a["server.port"]} ${a["dbx.node.role"]}`;
    const row = reads.get(key) ?? { selects: 0, other: 0 };
    if (a["db.operation.name"] === "SELECT") row.selects += p.value.count;
    else row.other += p.value.count;
    reads.set(key, row);
  }
  const lag = (points("dbx.replica.lag") as DataPoint<number>[]).map((p) => [
    String(p.attributes["db.client.connection.pool.name"]),
    p.value.toFixed(3),
  ]);
  return {
    reads: table(
      ["server", "role", "SELECT attempts", "other attempts"],
      [...reads].map(([key, r]) => [...key.split(" "), r.selects, r.other]),
    ),
    lag: table(["replica", "lag s"], lag),
  };
}

function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map(String))];
  const widths = headers.map((_, c) => Math.max(...cells.map((r) => r[c]!.length)));
  const numeric = headers.map((_, c) => rows.every((r) => /^(-?[\d.]+|-)$/.test(String(r[c]))));
  const line = (r: string[]) =>
    r.map((v, c) => numeric[c] ? v.padStart(widths[c]!) : v.padEnd(widths[c]!)).join("  ")
      .trimEnd();
  return [line(cells[0]!), widths.map((w) => "-".repeat(w)).join("  "), ...cells.slice(1).map(line)]
    .map((l) => `  ${l}`).join("\n");
}

const firstLine = (err: unknown) =>
  (err instanceof Error ? err.message : String(err)).split("\n")[0]!;

async function main(signal: AbortSignal): Promise<number> {
  // Change streams that survive a failover need PostgreSQL 17+.
  const logical = (await findPgBinaries({ pgVersion: 18 })) !== undefined;
  say(
    `Starting a local PostgreSQL ${
      logical ? "18 " : ""
    }cluster: 1 primary + 2 streaming replicas ...`,
  );
  await using local = await startLocalCluster({
    replicas: 2,
    signal,
    ...(logical ? { pgVersion: 18, logical: true } : {}),
  });
  if (!logical) say("  (no PostgreSQL 18 here: the change-stream consumer is skipped)");
  const [primary, replica1, replica2] = local.nodes;
  if (primary === undefined || replica1 === undefined || replica2 === undefined) {
    throw new Error("startLocalCluster({ replicas: 2 }) returned fewer than 3 nodes");
  }
  say(
    `  ${local.nodes.map((n) => `${n.name} on 127.0.0.1:${n.port}`).join(", ")} (${local.dir})`,
  );

  const served = new Map<string, Served>(
    local.nodes.map((n) => [n.name, { reads: 0, writes: 0, errors: 0 }]),
  );
  let retries = 0;
  const nodeEvents = { down: 0, up: 0, roleChanges: 0 };
  let promotedSeenAt: number | undefined;
  const metrics: MetricsHook = {
    onQueryEnd(e) {
      const s = served.get(e.node);
      if (s === undefined) return;
      if (e.error !== undefined) s.errors++;
      else if (e.sql === READ_SQL) s.reads++;
      else if (e.sql === WRITE_SQL) {
        s.writes++;
        const now = performance.now();
        s.firstWriteAt ??= now;
        s.lastWriteAt = now;
      }
    },
    onRetry: () => void retries++,
    onNodeDown(e) {
      nodeEvents.down++;
      say(`${clock()}  dbx: ${e.node} down (${firstLine(e.error)})`);
    },
    onNodeUp(e) {
      nodeEvents.up++;
      say(`${clock()}  dbx: ${e.node} up`);
    },
    onRoleChange(e) {
      nodeEvents.roleChanges++;
      if (e.node === replica1.name && e.to === "primary") promotedSeenAt ??= performance.now();
      say(`${clock()}  dbx: ${e.node} is now ${e.to} (was ${e.from})`);
    },
  };

  await using cluster = await connect({
    master: { name: primary.name, url: primary.url },
    replicas: [replica1, replica2].map((n) => ({ name: n.name, url: n.url })),
    healthCheck: { intervalMs: 500, timeoutMs: 500 },
    metrics,
  });
  // The same figures a dashboard would show, from OpenTelemetry metrics.
  const metricReader = new OnDemandReader();
  const meterProvider = new MeterProvider({ readers: [metricReader] });
  using _metrics = otelMetrics(cluster, { meterProvider });
  let lagBeforeChaos = "";
  await cluster.exec("create table ledger(id bigint not null, writer int not null)");
  // Not unique on purpose: a write applied twice must show up as a duplicate.
  await cluster.exec("create index on ledger(id)");
  // Readers start once both replicas have replayed the DDL, or the first reads fail.
  for (const until = performance.now() + 10_000; performance.now() < until;) {
    const { nodes } = await cluster.health();
    if (nodes.every((n) => n.role === "primary" || n.lagBytes === 0)) break;
    await sleep(50, signal);
  }
  const changes: ChangeCounter | undefined = logical
    ? await startChangeCounter(cluster, replica1.name, say)
    : undefined;

  let running = true;
  let nextId = 1;
  const acknowledged: number[] = [];
  let reads = 0;
  let failedReads = 0;
  let failedWrites = 0;
  /** Failed writes that reached the primary before it went away: they may have been applied. */
  let inFlightWrites = 0;
  const failures = new Map<string, number>();
  const failed = (what: string, err: unknown) => {
    const key = `${what}: ${firstLine(err).replace(/\d+(\.\d+)?/g, "N")}`;
    failures.set(key, (failures.get(key) ?? 0) + 1);
  };

  const writer = async (w: number) => {
    while (running) {
      const id = nextId++;
      try {
        await cluster.exec(WRITE_SQL, [id, w]);
        acknowledged.push(id);
      } catch (err) {
        // Expected during the failover: counted, and the id is never reused.
        if (mayHaveBeenApplied(err)) inFlightWrites++;
        else failedWrites++;
        failed("write", err);
        await sleep(BACKOFF_MS, signal).catch(() => {});
      }
    }
  };
  const reader = async () => {
    while (running) {
      try {
        await cluster.readQuery(READ_SQL, [nextId - 100]);
        reads++;
      } catch (err) {
        failedReads++;
        failed("read", err);
        await sleep(BACKOFF_MS, signal).catch(() => {});
      }
    }
  };

  started = performance.now();
  say(`${clock()}  workload: ${READERS} readers (readQuery), ${WRITERS} writers (exec insert)`);
  const workers = [
    ...Array.from({ length: WRITERS }, (_, w) => writer(w + 1)),
    ...Array.from({ length: READERS }, reader),
  ];
  let last = { at: performance.now(), reads: 0, writes: 0 };
  const ticker = setInterval(() => {
    const now = performance.now();
    const secs = (now - last.at) / 1000;
    const up = cluster.stats().nodes.map((n) => `${n.name}${n.healthy ? "" : "(down)"}`);
    progress(
      `${clock(now)}  reads ${reads} (${Math.round((reads - last.reads) / secs)}/s)  ` +
        `writes ${acknowledged.length} (${
          Math.round((acknowledged.length - last.writes) / secs)
        }/s)  failed r/w ${failedReads}/${failedWrites + inFlightWrites}  retries ${retries}  ` +
        (changes === undefined ? "" : `changes ${changes.delivered}  `) +
        `nodes ${up.join(" ")}`,
    );
    last = { at: now, reads, writes: acknowledged.length };
  }, 1_000);

  let failoverAt = NaN;
  let stoppedAt = NaN;
  let promotedAt = NaN;
  try {
    await sleep(started + KILL_AT_MS - performance.now(), signal);
    lagBeforeChaos = (await metricsReport(metricReader)).lag;
    say(`${clock()}  chaos: killing ${replica2.name} (pg_ctl stop -m immediate)`);
    await local.kill(replica2.name);
    await sleep(started + FAILOVER_AT_MS - performance.now(), signal);
    failoverAt = performance.now();
    say(`${clock()}  chaos: stopping ${primary.name} (pg_ctl stop -m fast)`);
    await local.stop(primary.name);
    stoppedAt = performance.now();
    say(`${clock()}  chaos: promoting ${replica1.name} (pg_ctl promote)`);
    await local.promote(replica1.name);
    promotedAt = performance.now();
    say(`${clock()}  chaos: ${replica1.name} accepts writes`);
    await sleep(started + DURATION_MS - performance.now(), signal);
  } finally {
    running = false;
    clearInterval(ticker);
    await Promise.all(workers);
    // Keep the last progress line on screen.
    if (tty && progressShown) Deno.stdout.writeSync(encoder.encode("\n"));
    progressShown = false;
  }

  // The check runs on whichever node dbx now routes writes to: it must be replica1.
  const where = await cluster.queryRow<{ port: number }>("select inet_server_port() as port");
  const rows = await cluster.query<{ id: string; n: number }>(
    "select id::text, count(*)::int as n from ledger group by id",
  );
  const copies = new Map(rows.map((r) => [Number(r.id), r.n]));
  const present = acknowledged.filter((id) => copies.has(id)).length;
  const missing = acknowledged.length - present;
  const duplicated = rows.filter((r) => r.n > 1).length;
  const ackedSet = new Set(acknowledged);
  // A write whose connection was cut mid-flight is reported as failed but may have committed.
  const appliedUnacked = rows.filter((r) => !ackedSet.has(Number(r.id))).length;

  const oldPrimary = served.get(primary.name)!;
  const newPrimary = served.get(replica1.name)!;
  const gapMs = newPrimary.firstWriteAt !== undefined && oldPrimary.lastWriteAt !== undefined
    ? newPrimary.firstWriteAt - oldPrimary.lastWriteAt
    : undefined;

  const stats = cluster.stats();
  console.log("\nPer node (role and health as dbx sees them now):");
  console.log(table(
    ["node", "role", "healthy", "reads", "writes", "errors", "p50 ms", "p99 ms"],
    stats.nodes.map((n) => {
      const s = served.get(n.name)!;
      return [
        n.name,
        n.role,
        n.healthy ? "yes" : "no",
        s.reads,
        s.writes,
        s.errors,
        n.latencyP50Ms?.toFixed(2) ?? "-",
        n.latencyP99Ms?.toFixed(2) ?? "-",
      ];
    }),
  ));
  console.log(
    "\nFrom otelMetrics() (db.client.operation.duration by server and role, dbx.replica.lag):",
  );
  console.log((await metricsReport(metricReader)).reads);
  console.log(`replica lag before the chaos, from dbx.replica.lag:\n${lagBeforeChaos}`);
  await meterProvider.shutdown();
  console.log(
    `\ntotals: ${reads} reads, ${acknowledged.length} writes acknowledged; ` +
      `${retries} retries, ${failedReads} failed reads, ${failedWrites} failed writes ` +
      `besides ${inFlightWrites} in flight when the primary stopped (may have been applied); ` +
      `nodes down ${nodeEvents.down}, up ${nodeEvents.up}, role changes ${nodeEvents.roleChanges}`,
  );
  for (const [msg, n] of [...failures].sort((a, b) => b[1] - a[1]).slice(0, 6)) {
    console.log(`  ${String(n).padStart(5)} × ${msg}`);
  }
  const rel = (t: number | undefined) =>
    t === undefined || Number.isNaN(t) ? "-" : `${Math.round(t - failoverAt)} ms`;
  if (gapMs === undefined) {
    console.log(`writes unavailable: no write reached ${replica1.name} after the failover`);
  } else {
    console.log(
      `writes unavailable: ${Math.round(gapMs)} ms ` +
        `(last write on ${primary.name} to first write on ${replica1.name})`,
    );
    console.log(
      `  from the stop of ${primary.name}: last write on it ${rel(oldPrimary.lastWriteAt)}, ` +
        `server down ${rel(stoppedAt)}, ${replica1.name} promoted ${rel(promotedAt)}, ` +
        `dbx saw it ${rel(promotedSeenAt)}, first write there ${rel(newPrimary.firstWriteAt)}`,
    );
  }
  console.log(
    `ledger: ${acknowledged.length} acknowledged, ${present} present, ${missing} missing, ` +
      `${duplicated} duplicated` +
      (appliedUnacked > 0 ? ` (+${appliedUnacked} applied whose acknowledgement was lost)` : ""),
  );

  const problems: string[] = [];
  if (changes !== undefined) {
    const checked = await changes.check(new Set(copies.keys()));
    for (const line of checked.lines) console.log(line);
    problems.push(...checked.problems);
    await changes.close();
  }
  if (missing > 0) problems.push(`${missing} acknowledged writes are missing`);
  if (duplicated > 0) problems.push(`${duplicated} ids were written more than once`);
  if (gapMs === undefined) problems.push(`dbx never moved writes to ${replica1.name}`);
  if (where.port !== replica1.port) {
    problems.push(`writes go to port ${where.port}, not to ${replica1.name} (${replica1.port})`);
  }
  if (problems.length > 0) {
    console.error(`\nFAIL: ${problems.join("; ")}`);
    return 1;
  }
  console.log("\nOK: writes moved to the promoted replica with no acknowledged write lost");
  return 0;
}

// Ctrl-C or a CI timeout must not leave servers behind: abort, let `await using` clean up.
const interrupt = new AbortController();
const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
const onSignal = () => {
  if (interrupt.signal.aborted) return;
  say("\ninterrupted: stopping the workload and the local cluster ...");
  interrupt.abort(new Error("interrupted"));
};
for (const s of signals) Deno.addSignalListener(s, onSignal);
try {
  Deno.exitCode = await main(interrupt.signal);
} catch (err) {
  if (interrupt.signal.aborted) {
    Deno.exitCode = 130;
  } else {
    console.error("\ndemo failed:", err);
    Deno.exitCode = 1;
  }
} finally {
  for (const s of signals) Deno.removeSignalListener(s, onSignal);
}
