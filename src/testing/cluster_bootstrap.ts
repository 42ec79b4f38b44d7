/**
 * Bringing up a local cluster: `initdb` and configuration of the primary, base backups of
 * the replicas, starting every server (on a fresh port when another socket took the one
 * chosen for it) and waiting until every replica streams. Internal to
 * `startLocalCluster`.
 *
 * @module
 */

import { appendFile, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { LocalNode } from "./local_cluster.ts";
import {
  DEADLINE_MS,
  freePorts,
  logTail,
  type Runner,
  ServerStartError,
  sql,
  waitUntil,
} from "./pg_process.ts";
import { copyPrimary } from "./replica_clone.ts";

/**
 * How many ports a server is tried on: the OS may hand a port chosen by `freePorts` to
 * any socket (a client's ephemeral port, another test process) before the server binds it.
 */
const PORT_ATTEMPTS = 5;

/** What {@linkcode bootstrap} needs besides the nodes. */
export interface BootstrapSettings {
  /** The `postgres` user's password; `undefined` for trust authentication. */
  readonly password: string | undefined;
  /** Aborts between steps. */
  readonly signal: AbortSignal | undefined;
  /** Whether the ports were given (`basePort`): then a taken port is an error. */
  readonly fixedPorts: boolean;
  /** A logical-replication cluster whose failover slots are synced to the replicas. */
  readonly logical: boolean;
}

/**
 * Describes a node of a cluster.
 *
 * @param dir The cluster directory.
 * @param name The node name, e.g. `"replica1"`.
 * @param port Its TCP port on 127.0.0.1.
 * @param password The `postgres` user's password, put in the URL when set.
 * @returns The frozen node.
 */
export function makeNode(
  dir: string,
  name: string,
  port: number,
  password: string | undefined,
): LocalNode {
  const auth = password === undefined ? "postgres" : `postgres:${encodeURIComponent(password)}`;
  const url = `postgres://${auth}@127.0.0.1:${port}/postgres`;
  return Object.freeze({ name, port, url, dataDir: join(dir, name) });
}

/**
 * Creates and starts the primary, clones and starts the replicas, and waits until every
 * replica streams from the primary.
 *
 * @param runner Runs the binaries.
 * @param dir The cluster directory (empty but for nothing started yet).
 * @param nodes The primary, then the replicas, with the ports chosen for them.
 * @param settings Password, abort signal and whether the ports may change.
 * @returns The nodes as started: a node whose port was taken runs on another one.
 * @throws {Error} When a step fails; a server that fails to start adds its log's tail.
 */
export async function bootstrap(
  runner: Runner,
  dir: string,
  nodes: readonly LocalNode[],
  settings: BootstrapSettings,
): Promise<LocalNode[]> {
  const [first, ...replicas] = nodes;
  if (first === undefined) throw new Error("unreachable: a cluster always has a primary");
  const { password, signal, logical } = settings;
  const ports = new Set(nodes.map((node) => node.port));
  await initPrimary(runner, dir, first, replicas, settings);
  signal?.throwIfAborted();
  const primary = await startNode(runner, dir, first, settings, ports);
  signal?.throwIfAborted();
  if (logical) {
    // Made before the copies, so the primary keeps every WAL segment they will need.
    for (const replica of replicas) {
      await sql(
        primary.url,
        `select pg_create_physical_replication_slot(${sqlString(replica.name)}, true)`,
      );
    }
  }

  const results = await Promise.allSettled(
    replicas.map(async (replica) => {
      await copyPrimary(runner, primary, replica, password);
      await configureReplica(primary, replica, password, logical);
      return await startNode(runner, dir, replica, settings, ports);
    }),
  );
  const started: LocalNode[] = [primary];
  for (const result of results) {
    if (result.status === "rejected") throw result.reason;
    started.push(result.value);
  }
  await waitForStreaming(started[0]!, started.slice(1), dir, signal);
  return started;
}

async function initPrimary(
  runner: Runner,
  dir: string,
  primary: LocalNode,
  replicas: readonly LocalNode[],
  settings: BootstrapSettings,
): Promise<void> {
  const { password, logical } = settings;
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

  const senders = Math.max(10, 2 * replicas.length + 2);
  await appendFile(
    join(primary.dataDir, "postgresql.conf"),
    confBlock({
      listen_addresses: "127.0.0.1",
      port: primary.port,
      // Never the system socket directory: it may belong to another server or not exist.
      unix_socket_directories: dir,
      wal_level: logical ? "logical" : "replica",
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
      // Logical changes reach consumers only once every replica has their WAL, so a
      // consumer never sees what a failover loses. Written here, the replicas' copies
      // inherit it, as copied configurations do: promote() clears it.
      ...(logical && replicas.length > 0
        ? { synchronized_standby_slots: replicas.map((replica) => replica.name).join(",") }
        : {}),
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
}

/**
 * Points a freshly copied replica at the primary, on its own port; in a logical cluster
 * through its physical slot, syncing failover slots.
 */
async function configureReplica(
  primary: LocalNode,
  replica: LocalNode,
  password: string | undefined,
  logical: boolean,
): Promise<void> {
  const settings: [string, string][] = [
    ["host", "127.0.0.1"],
    ["port", String(primary.port)],
    ["user", "postgres"],
    // Names the replica in pg_stat_replication, so startup can tell who is late.
    ["application_name", replica.name],
  ];
  if (password !== undefined) settings.push(["password", password]);
  // The slot sync worker reads the primary's slots through this connection's database.
  if (logical) settings.push(["dbname", "postgres"]);
  const conninfo = settings.map(([key, value]) => `${key}=${conninfoValue(value)}`).join(" ");
  // Later settings win: these override the primary's copied port and the -R conninfo,
  // which would otherwise lack the password the replica needs to reconnect.
  await appendFile(
    join(replica.dataDir, "postgresql.conf"),
    confBlock({ port: replica.port, cluster_name: replica.name }),
  );
  await appendFile(
    join(replica.dataDir, "postgresql.auto.conf"),
    confBlock({
      primary_conninfo: conninfo,
      ...(logical
        ? {
          primary_slot_name: replica.name,
          sync_replication_slots: "on",
          hot_standby_feedback: "on",
        }
        : {}),
    }),
  );
}

/**
 * Starts a configured server. When its log says another socket holds its port (a
 * free port is not a reserved one), it moves to a fresh port, up to
 * {@linkcode PORT_ATTEMPTS} ports in all, unless the ports were given.
 */
async function startNode(
  runner: Runner,
  dir: string,
  node: LocalNode,
  settings: BootstrapSettings,
  ports: Set<number>,
): Promise<LocalNode> {
  for (let attempt = 1;; attempt++) {
    try {
      await runner.pgCtlStart(node, dir);
      return node;
    } catch (error) {
      const portTaken = error instanceof ServerStartError && error.portTaken;
      if (!portTaken || settings.fixedPorts || attempt >= PORT_ATTEMPTS) throw error;
    }
    settings.signal?.throwIfAborted();
    // Never a port of this cluster, not even one another node has not bound yet.
    const [port] = await freePorts(1, ports);
    ports.add(port!);
    node = makeNode(dir, node.name, port!, settings.password);
    await appendFile(join(node.dataDir, "postgresql.conf"), confBlock({ port: node.port }));
  }
}

async function waitForStreaming(
  primary: LocalNode,
  replicas: readonly LocalNode[],
  dir: string,
  signal: AbortSignal | undefined,
): Promise<void> {
  if (replicas.length === 0) return;
  let streaming = new Set<string>();
  const outcome = await waitUntil(async () => {
    const rows = await sql<{ application_name: string }>(
      primary.url,
      "select application_name from pg_stat_replication where state = 'streaming'",
    );
    streaming = new Set(rows.map((row) => row.application_name));
    return replicas.every((replica) => streaming.has(replica.name));
  }, signal);
  if (outcome.done === true) return;
  const late = replicas.filter((replica) => !streaming.has(replica.name));
  const logs = await Promise.all(late.map((node) => logTail(dir, node.name)));
  throw new Error(
    `Not streaming from the primary after ${DEADLINE_MS / 1000}s: ` +
      `${late.map((node) => node.name).join(", ")}\n${logs.join("\n")}`,
    { cause: outcome.lastError },
  );
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

/**
 * A SQL string literal.
 *
 * @param value Any text.
 * @returns It quoted, with `'` doubled.
 */
export function sqlString(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

function conninfoValue(value: string): string {
  return `'${value.replaceAll("\\", "\\\\").replaceAll("'", "\\'")}'`;
}
