/**
 * What `cluster.subscribe()` checks before it streams: a server that can
 * decode (PostgreSQL 17+, `wal_level = logical`), the publication, the slot
 * (made with `failover = true` when asked), and — when the cluster has
 * replicas — everything that makes the slot survive a failover: the slot's
 * `failover` flag, `synchronized_standby_slots` on the primary naming
 * physical slots it has, and on each replica it names (a failover target)
 * `sync_replication_slots`, `hot_standby_feedback` and the slot synced.
 * Settings that are wrong fail the call with every problem named; a slot not
 * synced yet, a replica that does not answer, or one the primary does not
 * wait for (no failover target) is a warning.
 *
 * @module
 */

import { once, statement } from "../call/dispatch.ts";
import type { Dispatcher } from "../call/dispatch.ts";
import { parseLsn } from "../call/route.ts";
import { DbxError } from "../errors.ts";
import { rowsOf } from "../executor.ts";
import { pgErrorCode } from "../failure.ts";
import type { Node } from "../node/node.ts";

/** The first PostgreSQL version whose logical slots can follow a failover. */
const MIN_VERSION_NUM = 170000;

/**
 * The servers are not set up for a change stream that survives a failover:
 * `problems` says what is missing, one line each, and the message lists them.
 *
 * @example
 * ```ts
 * import { ReplicationSetupError } from "@codelab/dbx";
 *
 * const explain = (err: unknown) =>
 *   err instanceof ReplicationSetupError ? err.problems.join("\n") : String(err);
 * ```
 */
export class ReplicationSetupError extends DbxError {
  /** What is missing, e.g. `wal_level is "replica" on node primary; set wal_level = logical`. */
  readonly problems: readonly string[];

  /**
   * Creates a ReplicationSetupError.
   *
   * @param problems What is missing, one line each.
   * @param options The node checked and the cause.
   */
  constructor(problems: readonly string[], options: { node?: string; cause?: unknown } = {}) {
    super(
      `Cannot subscribe as the servers are not set up for change streams:\n- ${
        problems.join("\n- ")
      }`,
      { kind: "other", node: options.node, cause: options.cause },
    );
    this.name = "ReplicationSetupError";
    this.problems = problems;
  }
}

/** What the checks found out. */
export interface SlotReady {
  /** The slot's `confirmed_flush_lsn` on the primary: where decoding resumes. */
  readonly confirmed: bigint;
  /** Whether subscribe() created the slot. */
  readonly created: boolean;
}

interface SlotRow {
  slot_type: string;
  plugin: string | null;
  database: string | null;
  failover: boolean;
  confirmed: string | null;
  invalidation_reason: string | null;
  current_db: string;
}

const SLOT_SQL = `select slot_type, plugin, database, failover,
  confirmed_flush_lsn::text as confirmed, invalidation_reason, current_database() as current_db
  from pg_replication_slots where slot_name = $1`;

/**
 * Checks the servers for a subscription and, when asked, creates the slot.
 *
 * @param d The cluster.
 * @param publication The publication streamed.
 * @param slot The slot's name.
 * @param create Whether a missing slot is created (with `failover = true`).
 * @param signal Ends the checks.
 * @returns The slot's confirmed position.
 * @throws {ReplicationSetupError} naming every missing setting.
 */
export async function checkSetup(
  d: Dispatcher,
  publication: string,
  slot: string,
  create: boolean,
  signal: AbortSignal | undefined,
): Promise<SlotReady> {
  const options = signal === undefined ? undefined : { signal };
  const ask = <T>(sql: string, args: readonly unknown[] = []): Promise<T[]> =>
    statement(d, "subscribe", false, sql, args, options, rowsOf<T>);

  const [server] = await ask<{ version: number; wal_level: string; text: string }>(
    `select current_setting('server_version_num')::int as version,
      current_setting('server_version') as text, current_setting('wal_level') as wal_level`,
  );
  if (server!.version < MIN_VERSION_NUM) {
    throw new ReplicationSetupError([
      `the primary runs PostgreSQL ${server!.text}: change streams need PostgreSQL 17 or ` +
      "later, whose logical slots can be synced to replicas (failover = true)",
    ]);
  }
  const problems: string[] = [];
  if (server!.wal_level !== "logical") {
    problems.push(
      `wal_level is "${server!.wal_level}" on the primary; set wal_level = logical (restart)`,
    );
  }
  const [pub] = await ask(`select 1 as ok from pg_publication where pubname = $1`, [publication]);
  if (pub === undefined) {
    problems.push(
      `publication "${publication}" does not exist; create it, e.g. CREATE PUBLICATION ... ` +
        "FOR TABLE ...",
    );
  }
  const withReplicas = d.nodes.length > 1;
  let [row] = await ask<SlotRow>(SLOT_SQL, [slot]);
  if (row !== undefined) problems.push(...slotProblems(slot, row, withReplicas));
  else if (!create) {
    problems.push(
      `replication slot "${slot}" does not exist; pass create: true, or run select ` +
        `pg_create_logical_replication_slot('${slot}', 'pgoutput', failover => true)`,
    );
  }
  if (withReplicas) await checkReplicas(d, slot, row !== undefined, ask, problems, signal);
  if (problems.length > 0) throw new ReplicationSetupError(problems);
  // Made only once everything else is right: a slot nobody reads holds WAL back forever.
  let created = false;
  if (row === undefined) {
    try {
      await ask(
        "select lsn from pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)",
        [slot],
      );
      created = true;
      d.observer.log("info", "dbx: created the change stream's slot (failover = true)", {
        slot,
        replicas: withReplicas ? "copied by their slot sync worker within seconds" : "none",
      });
    } catch (err) {
      // Another subscriber made it meanwhile (42710): use it.
      if (pgErrorCode(err) !== "42710") throw err;
    }
    [row] = await ask<SlotRow>(SLOT_SQL, [slot]);
    if (row === undefined) throw new ReplicationSetupError([`slot "${slot}" vanished`]);
    if (!created) {
      const raced = slotProblems(slot, row, withReplicas);
      if (raced.length > 0) throw new ReplicationSetupError(raced);
    }
  }
  return { confirmed: parseLsn(row.confirmed) ?? 0n, created };
}

function slotProblems(slot: string, row: SlotRow, withReplicas: boolean): string[] {
  const problems: string[] = [];
  if (row.slot_type !== "logical" || row.plugin !== "pgoutput") {
    problems.push(
      `replication slot "${slot}" is a ${row.slot_type} slot${
        row.plugin === null ? "" : ` of plugin ${row.plugin}`
      }; a change stream needs a logical slot of plugin pgoutput`,
    );
  } else if (row.database !== row.current_db) {
    problems.push(
      `replication slot "${slot}" belongs to database "${row.database}", not "${row.current_db}"`,
    );
  }
  if (row.invalidation_reason !== null) {
    problems.push(
      `replication slot "${slot}" is invalidated (${row.invalidation_reason}); drop and recreate it`,
    );
  }
  if (withReplicas && !row.failover) {
    problems.push(
      `replication slot "${slot}" has failover = false, so no replica gets a copy; recreate it ` +
        `with failover => true, or run ALTER_REPLICATION_SLOT ${slot} (FAILOVER true)`,
    );
  }
  return problems;
}

/** The primary's synchronized_standby_slots, then each replica's slot sync settings. */
async function checkReplicas(
  d: Dispatcher,
  slot: string,
  slotExists: boolean,
  ask: <T>(sql: string, args?: readonly unknown[]) => Promise<T[]>,
  problems: string[],
  signal: AbortSignal | undefined,
): Promise<void> {
  const [standby] = await ask<{ names: string; physical: string[] }>(
    `select current_setting('synchronized_standby_slots') as names,
      array(select slot_name::text from pg_replication_slots where slot_type = 'physical')
        as physical`,
  );
  const waitsFor = standby!.names.split(",").map((name) => name.trim()).filter((n) => n !== "");
  if (waitsFor.length === 0) {
    problems.push(
      "synchronized_standby_slots is empty on the primary, so a consumer may receive changes " +
        "a replica does not have yet and that a failover loses; set it to the replicas' " +
        "physical slots (primary_slot_name)",
    );
  }
  const missing = waitsFor.filter((name) => !standby!.physical.includes(name));
  if (missing.length > 0) {
    problems.push(
      `synchronized_standby_slots on the primary names ${
        missing.map((n) => `"${n}"`).join(", ")
      }, which ${missing.length === 1 ? "is" : "are"} not a physical slot there, so ` +
        "decoding waits forever (a promoted replica that inherited the setting?); " +
        "set it to the replicas' physical slots, or to '' on a primary without replicas",
    );
  }
  const primary = d.checker.topology.primary;
  const replicas = d.nodes.filter((node) => node !== primary);
  await Promise.all(
    replicas.map((node) =>
      checkReplica(d, node, slotExists ? slot : undefined, waitsFor, problems, signal)
    ),
  );
}

async function checkReplica(
  d: Dispatcher,
  node: Node,
  slot: string | undefined,
  waitsFor: readonly string[],
  problems: string[],
  signal: AbortSignal | undefined,
): Promise<void> {
  let row: Record<string, unknown> | undefined;
  try {
    const result = await once(
      d,
      node,
      "subscribe",
      `select pg_is_in_recovery() as standby,
        current_setting('sync_replication_slots') as sync,
        current_setting('hot_standby_feedback') as feedback,
        current_setting('primary_slot_name') as slot,
        (select synced and not temporary from pg_replication_slots where slot_name = $1)
          as synced`,
      [slot ?? ""],
      signal === undefined ? undefined : { signal },
    );
    row = result.rows[0] as Record<string, unknown> | undefined;
  } catch (err) {
    if (signal?.aborted) throw err;
    d.observer.log("warn", "dbx: subscribe() could not check a replica's slot sync", {
      node: node.name,
      error: err instanceof Error ? err.message : String(err),
    });
    return;
  }
  if (row === undefined || row.standby !== true) return;
  // Only the replicas the primary waits for are failover targets for change streams; the
  // others may serve reads, but a consumer may have seen changes they lack.
  if (row.slot === "" || !waitsFor.includes(row.slot as string)) {
    d.observer.log(
      "warn",
      "dbx: a replica is not in synchronized_standby_slots; do not fail over to it while change streams run: consumers may have seen changes it lacks",
      { node: node.name, primarySlotName: row.slot },
    );
    return;
  }
  const on = `on replica ${node.name}`;
  if (row.sync !== "on") {
    problems.push(
      `sync_replication_slots is off ${on}; set it to on (with a dbname in ` +
        "primary_conninfo) so the slot is copied there",
    );
  }
  if (row.feedback !== "on") problems.push(`hot_standby_feedback is off ${on}; set it to on`);
  if (slot !== undefined && row.synced !== true && row.sync === "on") {
    d.observer.log(
      "warn",
      "dbx: the change stream's slot is not synced to a replica yet; a failover to it now would lose the slot",
      { node: node.name, slot },
    );
  }
}
