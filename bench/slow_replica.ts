/**
 * The "slow replica" part of `deno task bench`, also on its own as
 * `deno task bench:slow`: two replicas, each behind a `faultProxy`, one of
 * them made ~30 ms slower per round trip (`delay(15)`), 10 callers reading
 * `select $1::int` for 3 s per row, in alternating rounds of 1 s:
 *
 * - `both healthy`: no delay, the default balancer (the baseline);
 * - `one slow: round robin`: `roundRobin()`, half the reads wait for the slow one;
 * - `one slow: latencyAware (default)`;
 * - `one slow: latencyAware + hedge p95`: `hedge: { afterMs: "p95" }`;
 * - `both healthy: latencyAware + hedge p95`: what hedging does with no slow replica.
 *
 * Per row: the share of statements the slow replica ran, read latency
 * p50/p95/p99 as the callers saw it, reads, hedges. Targets (issue #24): with
 * the default balancer at most 5 % of reads on the slow replica and p95 at
 * most 3 × the healthy p95 + 2 ms; with hedging, p99 at most 3 × the healthy
 * p99 + 2 ms.
 *
 * @module
 */

import { type Cluster, type ClusterConfig, connect, roundRobin } from "../mod.ts";
import { faultProxy, type LocalCluster, startLocalCluster } from "../src/testing/mod.ts";

const CALLERS = 10;
/** 3 s per row, in rounds of 1 s that alternate over the rows: drift on a shared host hits all alike. */
const ROUNDS = 3;
const ROUND_MS = 1_000;
/** Before each round, unrecorded: the balancer relearns after the delay was switched. */
const WARMUP_MS = 300;
/** Added per direction: a round trip ~30 ms slower. */
const DELAY_MS = 15;

/** One row of the table. */
export interface SlowReplicaRow {
  readonly label: string;
  /** Share of the replicas' statements that the slow one ran (0–1). */
  readonly slowShare: number;
  readonly p50Ms: number;
  readonly p95Ms: number;
  readonly p99Ms: number;
  readonly reads: number;
  readonly hedgesSent: number;
  readonly hedgesWon: number;
}

/** What {@linkcode slowReplicaBench} measured, with the targets. */
export interface SlowReplicaBench {
  readonly rows: readonly SlowReplicaRow[];
  readonly targetsMet: {
    readonly slowShare: boolean;
    readonly p95: boolean;
    readonly hedgedP99: boolean;
  };
}

const r2 = (x: number) => Math.round(x * 100) / 100;

function percentile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/** One row's cluster and what it measured so far. */
interface Contender {
  readonly label: string;
  readonly slow: boolean;
  readonly cluster: Cluster;
  readonly latencies: number[];
  slowStatements: number;
  statements: number;
  hedgesSent: number;
  hedgesWon: number;
}

/** Reads with CALLERS callers for `ms`, recording each read's latency when `record`. */
async function reads(c: Contender, ms: number, record: boolean, signal: AbortSignal) {
  const end = performance.now() + ms;
  await Promise.all(Array.from({ length: CALLERS }, async (_, k) => {
    for (let i = k; performance.now() < end && !signal.aborted; i += CALLERS) {
      const t = performance.now();
      await c.cluster.readQuery("select $1::int as n", [i]);
      if (record) c.latencies.push(performance.now() - t);
    }
  }));
  signal.throwIfAborted();
}

/** One recorded round of `c`: its statements per replica and hedges counted. */
async function round(c: Contender, signal: AbortSignal): Promise<void> {
  await reads(c, WARMUP_MS, false, signal);
  const counts = () => {
    const { nodes, hedges } = c.cluster.stats();
    const by = new Map(nodes.map((n) => [n.name, n.queries]));
    return { fast: by.get("fast")!, slow: by.get("slow")!, ...hedges };
  };
  const before = counts();
  await reads(c, ROUND_MS, true, signal);
  const after = counts();
  c.slowStatements += after.slow - before.slow;
  c.statements += after.slow - before.slow + after.fast - before.fast;
  c.hedgesSent += after.sent - before.sent;
  c.hedgesWon += after.won - before.won;
}

function rowOf(c: Contender): SlowReplicaRow {
  const sorted = Float64Array.from(c.latencies).sort();
  return {
    label: c.label,
    slowShare: c.slowStatements / c.statements,
    p50Ms: r2(percentile(sorted, 0.5)),
    p95Ms: r2(percentile(sorted, 0.95)),
    p99Ms: r2(percentile(sorted, 0.99)),
    reads: c.latencies.length,
    hedgesSent: c.hedgesSent,
    hedgesWon: c.hedgesWon,
  };
}

/**
 * Measures the four rows on `local` (a primary and at least two replicas).
 *
 * @param local The local cluster.
 * @param signal Aborts the run.
 * @returns The rows and whether the targets were met.
 */
export async function slowReplicaBench(
  local: LocalCluster,
  signal: AbortSignal,
): Promise<SlowReplicaBench> {
  const [fastUrl, slowUrl] = local.replicaUrls as [string, string];
  // Both behind a proxy, so that the proxy's own cost is the same for both.
  await using fastProxy = await faultProxy(fastUrl);
  await using slowProxy = await faultProxy(slowUrl);
  const config = (extra: Partial<ClusterConfig>): ClusterConfig => ({
    master: local.masterUrl,
    replicas: [
      { name: "fast", url: fastProxy.url(fastUrl) },
      { name: "slow", url: slowProxy.url(slowUrl) },
    ],
    pool: { max: CALLERS },
    ...extra,
  });
  const rows: [string, boolean, Partial<ClusterConfig>][] = [
    ["both healthy", false, {}],
    ["one slow: round robin", true, { balancer: roundRobin() }],
    ["one slow: latencyAware (default)", true, {}],
    ["one slow: latencyAware + hedge p95", true, { hedge: { afterMs: "p95" } }],
    // Not in the issue: what hedging costs and wins when no replica is slow.
    ["both healthy: latencyAware + hedge p95", false, { hedge: { afterMs: "p95" } }],
  ];
  const contenders: Contender[] = [];
  try {
    for (const [label, slow, extra] of rows) {
      const cluster = await connect(config(extra));
      contenders.push({
        label,
        slow,
        cluster,
        latencies: [],
        slowStatements: 0,
        statements: 0,
        hedgesSent: 0,
        hedgesWon: 0,
      });
    }
    for (let r = 0; r < ROUNDS; r++) {
      // ABCD then DCBA: drift in the machine's load hits every row alike.
      for (const c of r % 2 === 0 ? contenders : [...contenders].reverse()) {
        slowProxy.delay(c.slow ? DELAY_MS : 0);
        await round(c, signal);
      }
    }
  } finally {
    await Promise.all(contenders.map((c) => c.cluster.close()));
  }
  const table = contenders.map(rowOf);
  const [healthy, , aware, hedged] = table as [
    SlowReplicaRow,
    SlowReplicaRow,
    SlowReplicaRow,
    SlowReplicaRow,
  ];
  return {
    rows: table,
    targetsMet: {
      slowShare: aware.slowShare <= 0.05,
      p95: aware.p95Ms <= 3 * healthy.p95Ms + 2,
      hedgedP99: hedged.p99Ms <= 3 * healthy.p99Ms + 2,
    },
  };
}

/**
 * The rows as text lines: a table and the targets.
 *
 * @param result What {@linkcode slowReplicaBench} measured.
 * @returns Lines to print.
 */
export function slowReplicaReport(result: SlowReplicaBench): string[] {
  const headers = ["row", "slow share", "p50 ms", "p95 ms", "p99 ms", "reads", "hedges won/sent"];
  const cells = [
    headers,
    ...result.rows.map((r) => [
      r.label,
      `${(r.slowShare * 100).toFixed(1)} %`,
      r.p50Ms.toFixed(2),
      r.p95Ms.toFixed(2),
      r.p99Ms.toFixed(2),
      String(r.reads),
      `${r.hedgesWon}/${r.hedgesSent}`,
    ]),
  ];
  const widths = headers.map((_, c) => Math.max(...cells.map((r) => r[c]!.length)));
  const line = (r: string[]) =>
    "  " + r.map((v, c) => c === 0 ? v.padEnd(widths[c]!) : v.padStart(widths[c]!)).join("  ");
  const [healthy, , aware, hedged] = result.rows;
  const met = (ok: boolean) => ok ? "met" : "NOT met";
  const t = result.targetsMet;
  return [
    line(cells[0]!),
    "  " + widths.map((w) => "-".repeat(w)).join("  "),
    ...cells.slice(1).map(line),
    `  targets: slow share ${(aware!.slowShare * 100).toFixed(1)} % ≤ 5 % ${met(t.slowShare)}; ` +
    `p95 ${aware!.p95Ms} ≤ 3 × ${healthy!.p95Ms} + 2 ms ${met(t.p95)}; ` +
    `hedged p99 ${hedged!.p99Ms} ≤ 3 × ${healthy!.p99Ms} + 2 ms ${met(t.hedgedP99)}`,
  ];
}

if (import.meta.main) {
  const interrupt = new AbortController();
  const onSignal = () => interrupt.abort(new Error("interrupted"));
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    console.log(
      `Slow replica: 2 replicas, one ${2 * DELAY_MS} ms slower per round trip, ` +
        `${CALLERS} callers, ${(ROUNDS * ROUND_MS) / 1000} s per row (Deno ${Deno.version.deno}, ` +
        `${navigator.hardwareConcurrency} CPUs) ...`,
    );
    await using local = await startLocalCluster({ replicas: 2, signal: interrupt.signal });
    const result = await slowReplicaBench(local, interrupt.signal);
    for (const l of slowReplicaReport(result)) console.log(l);
    console.log(JSON.stringify(result));
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
  }
}
