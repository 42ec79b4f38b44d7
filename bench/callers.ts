/**
 * The pipelining part of `deno task bench`: dbx against a raw `pg.Pool` and
 * postgres.js (`prepare: true`), same pool size, at 1, 10 and 64 callers, in
 * alternating rounds; p50/p99 latency at 10 callers; and a mixed workload in
 * which 1 % of statements are `select pg_sleep(0.05)` (p99 of the fast ones).
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import postgres from "postgres";
import { connect } from "../mod.ts";

/** Contenders of the pipelining comparison. */
export type Peer = "raw" | "dbx" | "postgresjs";

/** What {@linkcode callerScaling} measured. */
export interface CallerScaling {
  /** Median q/s per caller count and contender. */
  readonly qps: Record<string, Record<Peer, number>>;
  /** Latency percentiles (ms) at 10 callers. */
  readonly latency: Record<Peer, { p50: number; p99: number }>;
  /** p99 (ms) of the fast statements in the mixed workload. */
  readonly mixedFastP99: Record<"raw" | "dbx", number>;
}

const CALLERS = [1, 10, 64] as const;
const ROUNDS = 6;
const ROUND_MS = 500;

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};
const percentile = (xs: number[], q: number): number => {
  const s = xs.sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]! * 100) / 100;
};

type Call = (i: number) => Promise<unknown>;

async function run(
  fn: Call,
  callers: number,
  ms: number,
  signal: AbortSignal,
  latencies?: number[],
): Promise<number> {
  let done = 0;
  const start = performance.now();
  const end = start + ms;
  await Promise.all(Array.from({ length: callers }, async () => {
    while (performance.now() < end && !signal.aborted) {
      const t = latencies === undefined ? 0 : performance.now();
      await fn(done++);
      if (latencies !== undefined) latencies.push(performance.now() - t);
    }
  }));
  signal.throwIfAborted();
  return done / ((performance.now() - start) / 1000);
}

/**
 * Runs the comparison against the primary at `url`.
 *
 * @param url The primary's connection string.
 * @param poolSize Connections of raw pg and postgres.js (dbx's pool size too).
 * @param signal Stops the run.
 * @returns The figures.
 */
export async function callerScaling(
  url: string,
  poolSize: number,
  signal: AbortSignal,
): Promise<CallerScaling> {
  const raw = new pg.Pool({ connectionString: url, max: poolSize });
  raw.on("error", () => {});
  const pj = postgres(url, { max: poolSize, prepare: true, onnotice: () => {} });
  await using cluster = await connect({ master: url, pool: { max: poolSize } });
  try {
    const calls: Record<Peer, Call> = {
      raw: (i) => raw.query("select $1::int", [i]),
      dbx: (i) => cluster.query("select $1::int", [i]),
      postgresjs: (i) => pj`select ${i}::int`,
    };
    const peers = Object.keys(calls) as Peer[];
    const qps: Record<string, Record<Peer, number>> = {};
    for (const callers of CALLERS) {
      for (const p of peers) await run(calls[p], callers, 200, signal);
      const rounds: Record<Peer, number[]> = { raw: [], dbx: [], postgresjs: [] };
      for (let r = 0; r < ROUNDS; r++) {
        const order = r % 2 === 0 ? peers : [...peers].reverse();
        for (const p of order) rounds[p].push(await run(calls[p], callers, ROUND_MS, signal));
      }
      qps[String(callers)] = {
        raw: Math.round(median(rounds.raw)),
        dbx: Math.round(median(rounds.dbx)),
        postgresjs: Math.round(median(rounds.postgresjs)),
      };
    }
    const latency = {} as Record<Peer, { p50: number; p99: number }>;
    for (const p of peers) {
      const xs: number[] = [];
      await run(calls[p], 10, 1_500, signal, xs);
      latency[p] = { p50: percentile(xs, 0.5), p99: percentile(xs, 0.99) };
    }
    // 1 % slow statements; the p99 of the other 99 % shows head-of-line blocking.
    const mixedFastP99 = {} as Record<"raw" | "dbx", number>;
    for (const p of ["raw", "dbx"] as const) {
      const fast: number[] = [];
      const run1 = p === "raw"
        ? (sql: string, args: unknown[]) => raw.query(sql, args)
        : (sql: string, args: unknown[]) => cluster.query(sql, args);
      await run(
        (i) => {
          if (i % 100 === 99) return run1("select pg_sleep(0.05), $1::int", [i]);
          const t = performance.now();
          return run1("select $1::int", [i]).then(() => fast.push(performance.now() - t));
        },
        10,
        2_000,
        signal,
      );
      mixedFastP99[p] = percentile(fast, 0.99);
    }
    return { qps, latency, mixedFastP99 };
  } finally {
    await raw.end();
    await pj.end();
  }
}
