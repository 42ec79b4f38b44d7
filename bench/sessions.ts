/**
 * The read-your-writes part of `deno task bench`: a read-mostly workload of
 * "requests" (5 reads each; every 4th request starts with a write, so 1
 * write per 20 reads), 10 callers, in alternating rounds:
 *
 * - `session`: each request in `cluster.session()`, reads with `readQuery`
 *   (replicas once they have the request's write);
 * - `primary`: reads with `query`, everything on the primary (what ORMs'
 *   "read after write" fixes do);
 * - `none`: `readQuery` without a session (fast, but may read stale rows).
 *
 * Reads per second per mode, and the share of session reads that stayed on
 * replicas (from `stats().totals.sessionReadsOnPrimary`).
 *
 * @module
 */

import type { Cluster } from "../mod.ts";

/** Workload shapes compared. */
export type SessionMode = "session" | "primary" | "none";

/** What {@linkcode sessionWorkload} measured. */
export interface SessionBench {
  /** Median reads/s per mode. */
  readonly readsPerSecond: Record<SessionMode, number>;
  /** Share of the session mode's reads served by replicas (0–1). */
  readonly sessionReplicaShare: number;
}

const CALLERS = 10;
const ROUNDS = 6;
const ROUND_MS = 750;
const READS_PER_REQUEST = 5;
const REQUESTS_PER_WRITE = 4;
const MODES: readonly SessionMode[] = ["session", "primary", "none"];

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

/** One request of caller `id`: maybe a write, then the reads. Returns the reads done. */
async function request(cluster: Cluster, mode: SessionMode, id: number, n: number) {
  if (n % REQUESTS_PER_WRITE === 0) {
    await cluster.exec("update bench_session set v = v + 1 where id = $1", [id]);
  }
  for (let r = 0; r < READS_PER_REQUEST; r++) {
    if (mode === "primary") await cluster.query("select v from bench_session where id = $1", [id]);
    else await cluster.readQuery("select v from bench_session where id = $1", [id]);
  }
  return READS_PER_REQUEST;
}

async function round(
  cluster: Cluster,
  mode: SessionMode,
  ms: number,
  signal: AbortSignal,
): Promise<{ reads: number; perSecond: number }> {
  let reads = 0;
  const start = performance.now();
  const end = start + ms;
  await Promise.all(Array.from({ length: CALLERS }, async (_, c) => {
    for (let n = 0; performance.now() < end && !signal.aborted; n++) {
      // Not `reads += await ...`: that reads `reads` before the await.
      const done = mode === "session"
        ? await cluster.session(() => request(cluster, mode, c + 1, n))
        : await request(cluster, mode, c + 1, n);
      reads += done;
    }
  }));
  signal.throwIfAborted();
  return { reads, perSecond: reads / ((performance.now() - start) / 1000) };
}

/**
 * Measures the three modes on `cluster` (a primary with replicas).
 *
 * @param cluster The cluster.
 * @param signal Stops the bench.
 * @returns Reads/s per mode and the session's replica share.
 */
export async function sessionWorkload(
  cluster: Cluster,
  signal: AbortSignal,
): Promise<SessionBench> {
  await cluster.exec("drop table if exists bench_session");
  await cluster.exec("create table bench_session(id int primary key, v int not null)");
  await cluster.exec(
    "insert into bench_session select g, 0 from generate_series(1, $1::int) g",
    [CALLERS],
  );
  for (const mode of MODES) await round(cluster, mode, ROUND_MS, signal);
  const rounds: Record<SessionMode, number[]> = { session: [], primary: [], none: [] };
  let sessionReads = 0;
  let onPrimary = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? MODES : [...MODES].reverse();
    for (const mode of order) {
      const before = cluster.stats().totals.sessionReadsOnPrimary;
      const { reads, perSecond } = await round(cluster, mode, ROUND_MS, signal);
      rounds[mode].push(perSecond);
      if (mode === "session") {
        sessionReads += reads;
        onPrimary += cluster.stats().totals.sessionReadsOnPrimary - before;
      }
    }
  }
  return {
    readsPerSecond: {
      session: Math.round(median(rounds.session)),
      primary: Math.round(median(rounds.primary)),
      none: Math.round(median(rounds.none)),
    },
    sessionReplicaShare: Math.round((1 - onPrimary / sessionReads) * 1000) / 1000,
  };
}
