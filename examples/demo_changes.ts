/**
 * The demo's change-stream consumer (`deno task demo` on PostgreSQL 17+): it
 * counts every ledger insert through `cluster.subscribe()` while the demo kills
 * a replica and fails over, then checks that every acknowledged write on the
 * new primary was delivered at least once and nothing it lacks was.
 *
 * @module
 */

import type { ChangeReconnectInfo, ChangeSubscription, Cluster } from "../mod.ts";

/** A running consumer; `close()` ends its stream. */
export interface ChangeCounter {
  /** Inserts delivered so far, duplicates included. */
  readonly delivered: number;
  /**
   * Waits (up to 30 s) until every id in `expected` was delivered, then checks and describes.
   *
   * @param expected The ids on the new primary.
   * @returns Lines to print and problems (empty when all is well).
   */
  check(expected: ReadonlySet<number>): Promise<{ lines: string[]; problems: string[] }>;
  /** Ends the stream. */
  close(): Promise<void>;
}

/**
 * Publishes `ledger`, subscribes to it with a failover slot, and waits until `failoverTo` has a
 * synced copy of the slot (else a failover now would lose it).
 *
 * @param cluster The demo's cluster.
 * @param failoverTo The replica the demo promotes: the only one the primary waits for.
 * @param say Prints a line.
 * @returns The running counter.
 */
export async function startChangeCounter(
  cluster: Cluster,
  failoverTo: string,
  say: (line: string) => void,
): Promise<ChangeCounter> {
  // The primary holds changes back until the listed replicas have them: list only the one
  // the demo promotes, or the replica it kills would stall the stream (see the README).
  await cluster.withConnection(async (conn) => {
    await conn.exec(`alter system set synchronized_standby_slots = '${failoverTo}'`);
    await conn.exec("select pg_reload_conf()");
  });
  await cluster.exec("create publication ledger_pub for table ledger");
  const counts = new Map<number, number>();
  let delivered = 0;
  const reconnects: ChangeReconnectInfo[] = [];
  const sub: ChangeSubscription = await cluster.subscribe("ledger_pub", (change) => {
    if (change.op !== "insert") return;
    const id = Number(change.new?.id);
    counts.set(id, (counts.get(id) ?? 0) + 1);
    delivered++;
  }, {
    slot: "demo_ledger",
    create: true,
    onReconnect: (info) => {
      reconnects.push(info);
      say(
        `         changes: stream resumed on ${info.node} after ${info.downMs} ms at ` +
          `${info.position} (${info.reason})`,
      );
    },
  });
  const replica = cluster.node(failoverTo);
  for (const until = performance.now() + 30_000; performance.now() < until;) {
    const [row] = await replica.query<{ ok: boolean }>(
      "select synced and not temporary as ok from pg_replication_slots where slot_name = $1",
      ["demo_ledger"],
    );
    if (row?.ok === true) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  say(`  change stream: slot demo_ledger (failover = true), synced to ${failoverTo}`);
  return {
    get delivered() {
      return delivered;
    },
    async check(expected) {
      for (const until = performance.now() + 30_000; performance.now() < until;) {
        if ([...expected].every((id) => counts.has(id))) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const missing = [...expected].filter((id) => !counts.has(id)).length;
      const extra = [...counts.keys()].filter((id) => !expected.has(id)).length;
      const problems: string[] = [];
      if (missing > 0) problems.push(`${missing} ledger rows never came through the change stream`);
      if (extra > 0) problems.push(`the change stream delivered ${extra} rows the ledger lacks`);
      if (reconnects.length === 0) {
        problems.push("the change stream never resumed after the failover");
      }
      const resumed = reconnects.map((r) => `${r.previousNode} -> ${r.node} in ${r.downMs} ms`);
      return {
        lines: [
          `change stream: ${delivered} inserts delivered for ${expected.size} ledger rows ` +
          `(${missing} missing, ${delivered - counts.size} duplicates, ${extra} not in the ` +
          `ledger); resumed ${resumed.join(", ") || "never"}; acknowledged up to ${sub.position}`,
        ],
        problems,
      };
    },
    close: () => sub.close(),
  };
}
