/**
 * A throwaway Patroni cluster for tests: one etcd and three Patroni nodes on loopback,
 * in a temp dir, with the Debian `patroni` and `etcd-server` packages. Not public: the
 * test of dbx under a real HA manager (tests/patroni_test.ts) is its only user.
 *
 * Patroni runs as the `postgres` OS user when this process is root (initdb and postgres
 * refuse root). Every wait is event-based (the REST API `GET /cluster`) with a generous
 * bound, and `[Symbol.asyncDispose]` stops Patroni (which stops its postgres), any
 * postgres left behind, and etcd, leaving no process.
 */

import { execFile } from "node:child_process";
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { statSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import process from "node:process";
import { promisify } from "node:util";
import { findPgBinDir, pgBinariesUnavailable } from "../src/testing/pg_binaries.ts";
import { freePorts, Runner, sql } from "../src/testing/pg_process.ts";

const execFileAsync = promisify(execFile);

/** Patroni under load is slow: every wait for the cluster to settle gets this long. */
export const SETTLE_MS = 120_000;
const POLL_MS = 100;
const STOP_GRACE_MS = 60_000;
const PASSWORD = "dbx-patroni-test";
const NODE_NAMES = ["node1", "node2", "node3"] as const;

/**
 * Why the Patroni cluster cannot run here (no `patroni`, `patronictl` or `etcd` on
 * PATH, or no PostgreSQL binaries), or `undefined` when it can. Synchronous: decides
 * at test registration.
 */
export function patroniUnavailable(): string | undefined {
  const missing = ["patroni", "patronictl", "etcd"].filter((b) => !onPath(b));
  if (missing.length > 0) {
    return `${missing.join(", ")} not on PATH (Debian: apt-get install patroni etcd-server)`;
  }
  if (process.env.DBX_PG_BIN?.startsWith("embedded")) {
    // Patroni clones its replicas with pg_basebackup, which npm's binaries lack.
    return `DBX_PG_BIN=${process.env.DBX_PG_BIN}: Patroni needs pg_basebackup, which the npm ` +
      "PostgreSQL binaries lack (the run on Debian's PostgreSQL covers Patroni)";
  }
  return pgBinariesUnavailable();
}

function onPath(binary: string): boolean {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    try {
      const info = statSync(join(dir, binary));
      if (info.isFile() && (info.mode & 0o111) !== 0) return true;
    } catch {
      // Not in this directory.
    }
  }
  return false;
}

/**
 * GETs JSON, bounded by 2 s; the body is always read, and the timer cleared (not
 * `AbortSignal.timeout`, whose timer would outlive the call).
 */
async function getJson<T>(url: string): Promise<T> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(new Error(`GET ${url} timed out`)), 2_000);
  try {
    const response = await fetch(url, { signal: abort.signal });
    const body = await response.json() as T;
    if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
    return body;
  } finally {
    clearTimeout(timer);
  }
}

/** One member as Patroni's REST API `GET /cluster` reports it. */
export interface PatroniMember {
  readonly name: string;
  /** `"leader"`, `"replica"`, `"sync_standby"`, ... */
  readonly role: string;
  /** `"running"`, `"streaming"`, `"starting"`, `"stopped"`, ... */
  readonly state: string;
  readonly port: number;
  readonly timeline?: number;
}

/** One Patroni node of the cluster. */
export interface PatroniNode {
  readonly name: string;
  readonly pgPort: number;
  readonly apiPort: number;
  /** `postgres://postgres:...@127.0.0.1:<pgPort>/postgres` */
  readonly url: string;
  readonly dataDir: string;
  readonly configPath: string;
}

interface Spawned {
  readonly process: Deno.ChildProcess;
  readonly status: Promise<Deno.CommandStatus>;
  exited: boolean;
}

function spawn(
  command: string,
  args: string[],
  options: { uid?: number; gid?: number; env?: Record<string, string>; cwd?: string } = {},
): Spawned {
  const child = new Deno.Command(command, {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "null",
    ...options,
  }).spawn();
  const spawned: Spawned = { process: child, status: child.status, exited: false };
  child.status.then(() => spawned.exited = true);
  return spawned;
}

async function stopProcess(proc: Spawned, ms: number): Promise<void> {
  if (!proc.exited) {
    try {
      proc.process.kill("SIGTERM");
    } catch {
      // Already gone.
    }
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = await Promise.race([
    proc.status.then(() => false),
    new Promise<boolean>((ok) => timer = setTimeout(() => ok(true), ms)),
  ]);
  clearTimeout(timer);
  if (timedOut) {
    try {
      proc.process.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await proc.status;
  }
}

/** A running etcd + 3 × Patroni cluster. Dispose it to stop everything. */
export class PatroniCluster implements AsyncDisposable {
  readonly dir: string;
  readonly scope: string;
  readonly nodes: readonly PatroniNode[];
  readonly #etcd: Spawned;
  readonly #patroni: Map<string, Spawned>;
  readonly #runner: Runner;
  #closing: Promise<void> | undefined;

  constructor(
    dir: string,
    scope: string,
    nodes: readonly PatroniNode[],
    etcd: Spawned,
    patroni: Map<string, Spawned>,
    runner: Runner,
  ) {
    this.dir = dir;
    this.scope = scope;
    this.nodes = nodes;
    this.#etcd = etcd;
    this.#patroni = patroni;
    this.#runner = runner;
  }

  /** The node called `name`. */
  node(name: string): PatroniNode {
    const node = this.nodes.find((n) => n.name === name);
    if (node === undefined) throw new Error(`No Patroni node ${name}`);
    return node;
  }

  /**
   * The members as the first node whose REST API answers sees them.
   *
   * @throws {Error} When no REST API answers.
   */
  async members(): Promise<PatroniMember[]> {
    let last: unknown;
    for (const node of this.nodes) {
      try {
        const body = await getJson<{ members?: PatroniMember[] }>(
          `http://127.0.0.1:${node.apiPort}/cluster`,
        );
        return body.members ?? [];
      } catch (error) {
        last = error;
      }
    }
    throw new Error("No Patroni REST API answers", { cause: last });
  }

  /** The current leader's name, when there is one that runs. */
  async leader(): Promise<string | undefined> {
    const members = await this.members();
    return members.find((m) => m.role === "leader" && m.state === "running")?.name;
  }

  /**
   * Waits until a running leader (other than `notLeader`) and two replicas streaming
   * from it exist, one of them the sync standby (Patroni says so, and the leader's
   * `pg_stat_replication` shows both streaming).
   *
   * @returns The leader's name and the members as last seen.
   * @throws {Error} After {@linkcode SETTLE_MS}, with what was seen and the logs' tails.
   */
  async waitHealthy(notLeader?: string): Promise<{ leader: string; members: PatroniMember[] }> {
    const deadline = Date.now() + SETTLE_MS;
    let seen: unknown = "nothing yet";
    while (Date.now() < deadline) {
      const exited = [...this.#patroni].filter(([, p]) => p.exited).map(([name]) => name);
      if (exited.length > 0) {
        throw new Error(
          `Patroni of ${exited.join(", ")} exited; last seen: ${JSON.stringify(seen)}\n${await this
            .logTails()}`,
        );
      }
      try {
        const members = await this.members();
        seen = members;
        const leader = members.find((m) => m.role === "leader" && m.state === "running");
        const replicas = members.filter((m) =>
          m.role !== "leader" && (m.state === "running" || m.state === "streaming")
        );
        // synchronous_mode: the cluster is settled once Patroni has named a sync standby.
        const sync = replicas.some((r) => r.role === "sync_standby");
        if (
          leader !== undefined && leader.name !== notLeader && replicas.length === 2 && sync
        ) {
          const streaming = await sql<{ name: string }>(
            this.node(leader.name).url,
            "select application_name as name from pg_stat_replication where state = 'streaming'",
          );
          seen = { members, streaming };
          const names = new Set(streaming.map((s) => s.name));
          if (replicas.every((r) => names.has(r.name))) return { leader: leader.name, members };
        }
      } catch (error) {
        seen = error instanceof Error ? error.message : error;
      }
      await new Promise((ok) => setTimeout(ok, POLL_MS * 2));
    }
    throw new Error(
      `Patroni cluster ${this.scope} did not settle (leader${
        notLeader === undefined ? "" : ` other than ${notLeader}`
      } + 2 streaming replicas) in ${SETTLE_MS} ms; last seen: ${JSON.stringify(seen)}\n${await this
        .logTails()}`,
    );
  }

  /**
   * `patronictl switchover --leader <leader> --candidate <candidate> --force`.
   *
   * @returns Its output.
   */
  async switchover(leader: string, candidate: string): Promise<string> {
    const { stdout, stderr } = await execFileAsync("patronictl", [
      "-c",
      this.node(leader).configPath,
      "switchover",
      "--leader",
      leader,
      "--candidate",
      candidate,
      "--force",
      this.scope,
    ], { timeout: SETTLE_MS, encoding: "utf8" });
    return `${stdout}${stderr}`.trim();
  }

  /**
   * SIGKILLs the postmaster of `name` (its pid from `postmaster.pid`).
   *
   * @returns The pid killed.
   */
  async killPostmaster(name: string): Promise<number> {
    const pidFile = await readFile(join(this.node(name).dataDir, "postmaster.pid"), "utf8");
    const pid = Number(pidFile.split("\n")[0]);
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`Bad postmaster.pid of ${name}`);
    Deno.kill(pid, "SIGKILL");
    return pid;
  }

  /** The last lines of each Patroni log, for failure messages. */
  async logTails(lines = 25): Promise<string> {
    const parts: string[] = [];
    for (const node of this.nodes) {
      const path = join(this.dir, `${node.name}.log`);
      const text = await readFile(path, "utf8").catch(() => "(no log)");
      parts.push(`--- ${path} ---\n${text.trimEnd().split("\n").slice(-lines).join("\n")}`);
    }
    return parts.join("\n");
  }

  /** Stops Patroni (and its postgres), any postgres left, then etcd; removes the dir. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.#closing ??= this.#teardown();
  }

  async #teardown(): Promise<void> {
    const problems: unknown[] = [];
    await Promise.all(
      [...this.#patroni.values()].map((p) =>
        stopProcess(p, STOP_GRACE_MS).catch((e) => problems.push(e))
      ),
    );
    // Patroni stops its postgres on SIGTERM; one it lost track of (or a SIGKILLed
    // Patroni's) is stopped here by its data dir.
    await Promise.all(
      this.nodes.map((n) =>
        this.#runner.stopIfRunning(n.dataDir, "immediate").catch((e) => problems.push(e))
      ),
    );
    await stopProcess(this.#etcd, STOP_GRACE_MS).catch((e) => problems.push(e));
    if (problems.length === 0) await rm(this.dir, { recursive: true, force: true });
    else throw new AggregateError(problems, `Patroni cluster teardown failed; kept ${this.dir}`);
  }
}

/** Options of {@linkcode startPatroni}. */
export interface StartPatroniOptions {
  /** Leader lock TTL in seconds. @default 10 */
  ttl?: number;
  /** Seconds between Patroni's HA loops. @default 1 */
  loopWait?: number;
}

/**
 * Starts etcd and three Patroni nodes and waits until a leader and two streaming
 * replicas exist.
 *
 * @throws {Error} When something does not start; everything started is stopped.
 */
export async function startPatroni(options: StartPatroniOptions = {}): Promise<PatroniCluster> {
  const ttl = options.ttl ?? 10;
  const loopWait = options.loopWait ?? 1;
  // Patroni wants loop_wait + 2 * retry_timeout <= ttl.
  const retryTimeout = Math.max(3, Math.floor((ttl - loopWait) / 2));
  const binDir = await findPgBinDir();
  if (binDir === undefined) throw new Error("No PostgreSQL binaries");
  const runner = await Runner.create(binDir);
  const owner = await postgresUser();
  const dir = await mkdtemp(join(tmpdir(), "dbx-patroni-"));
  await chmod(dir, 0o755);
  const scope = `dbx-${crypto.randomUUID().slice(0, 8)}`;
  const [etcdClient = 0, etcdPeer = 0, ...rest] = await freePorts(2 + NODE_NAMES.length * 2);
  const nodes: PatroniNode[] = NODE_NAMES.map((name, i) => ({
    name,
    pgPort: rest[i * 2]!,
    apiPort: rest[i * 2 + 1]!,
    url: `postgres://postgres:${PASSWORD}@127.0.0.1:${rest[i * 2]!}/postgres`,
    dataDir: join(dir, name, "data"),
    configPath: join(dir, `${name}.yml`),
  }));

  const etcdDir = join(dir, "etcd");
  await mkdir(etcdDir, { mode: 0o700 });
  const etcdLog = join(dir, "etcd.log");
  const etcd = spawn("sh", [
    "-c",
    'exec etcd "$@" >>"$0" 2>&1',
    etcdLog,
    "--name",
    "etcd0",
    "--data-dir",
    etcdDir,
    "--listen-client-urls",
    `http://127.0.0.1:${etcdClient}`,
    "--advertise-client-urls",
    `http://127.0.0.1:${etcdClient}`,
    "--listen-peer-urls",
    `http://127.0.0.1:${etcdPeer}`,
    "--initial-advertise-peer-urls",
    `http://127.0.0.1:${etcdPeer}`,
    "--initial-cluster",
    `etcd0=http://127.0.0.1:${etcdPeer}`,
    "--initial-cluster-state",
    "new",
  ]);
  const patroni = new Map<string, Spawned>();
  const cluster = new PatroniCluster(dir, scope, nodes, etcd, patroni, runner);
  try {
    await waitEtcd(etcdClient, etcdLog, etcd);
    for (const node of nodes) {
      const nodeDir = join(dir, node.name);
      await mkdir(nodeDir, { mode: 0o700 });
      const config = patroniConfig({
        scope,
        node,
        nodeDir,
        binDir,
        etcdClient,
        ttl,
        loopWait,
        retryTimeout,
      });
      await writeFile(node.configPath, config, { mode: 0o644 });
      if (owner !== undefined) await chown(nodeDir, owner.uid, owner.gid);
      const log = join(dir, `${node.name}.log`);
      await writeFile(log, "");
      if (owner !== undefined) await chown(log, owner.uid, owner.gid);
      patroni.set(
        node.name,
        spawn("sh", ["-c", 'exec patroni "$0" >>"$1" 2>&1', node.configPath, log], {
          ...(owner ?? {}),
          cwd: nodeDir,
          env: { HOME: nodeDir, PATH: process.env.PATH ?? "/usr/bin:/bin" },
        }),
      );
    }
    await cluster.waitHealthy();
    return cluster;
  } catch (error) {
    await cluster[Symbol.asyncDispose]().catch(() => {});
    throw error;
  }
}

async function postgresUser(): Promise<{ uid: number; gid: number } | undefined> {
  // `id`, not process.getuid(): the test permissions include --allow-run, not --allow-sys.
  if ((await execFileAsync("id", ["-u"])).stdout.trim() !== "0") return undefined;
  const uid = Number((await execFileAsync("id", ["-u", "postgres"])).stdout.trim());
  const gid = Number((await execFileAsync("id", ["-g", "postgres"])).stdout.trim());
  return { uid, gid };
}

async function waitEtcd(port: number, log: string, etcd: Spawned): Promise<void> {
  const deadline = Date.now() + SETTLE_MS;
  while (Date.now() < deadline) {
    if (etcd.exited) break;
    try {
      const body = await getJson<{ health?: string }>(`http://127.0.0.1:${port}/health`);
      if (body.health === "true") return;
    } catch {
      // Not listening yet.
    }
    await new Promise((ok) => setTimeout(ok, POLL_MS));
  }
  const text = await readFile(log, "utf8").catch(() => "(no log)");
  throw new Error(
    `etcd did not become healthy on 127.0.0.1:${port}${etcd.exited ? " (it exited)" : ""}\n` +
      text.trimEnd().split("\n").slice(-20).join("\n"),
  );
}

function patroniConfig(o: {
  scope: string;
  node: PatroniNode;
  nodeDir: string;
  binDir: string;
  etcdClient: number;
  ttl: number;
  loopWait: number;
  retryTimeout: number;
}): string {
  const hba = [
    "local all all trust",
    "host all all 127.0.0.1/32 scram-sha-256",
    "host replication replicator 127.0.0.1/32 scram-sha-256",
  ];
  // JSON is YAML: no YAML writer needed.
  return JSON.stringify(
    {
      scope: o.scope,
      name: o.node.name,
      restapi: {
        listen: `127.0.0.1:${o.node.apiPort}`,
        connect_address: `127.0.0.1:${o.node.apiPort}`,
      },
      etcd3: { hosts: `127.0.0.1:${o.etcdClient}` },
      bootstrap: {
        dcs: {
          ttl: o.ttl,
          loop_wait: o.loopWait,
          retry_timeout: o.retryTimeout,
          maximum_lag_on_failover: 1_048_576,
          // Synchronous replication: a commit is acknowledged only once the sync
          // standby has it, so a failover to that standby loses no acknowledged
          // write (with asynchronous replication it may, whatever the client does).
          synchronous_mode: true,
          // A crashed primary is failed over at once instead of being restarted in
          // place (the default waits up to 300 s for its crash recovery).
          master_start_timeout: 0,
          postgresql: {
            use_pg_rewind: true,
            use_slots: true,
            parameters: {
              max_connections: 100,
              max_wal_senders: 10,
              max_replication_slots: 10,
              wal_keep_size: "128MB",
              hot_standby: "on",
              wal_log_hints: "on",
            },
          },
        },
        initdb: [{ encoding: "UTF8" }, { "auth-local": "trust" }],
      },
      postgresql: {
        listen: `127.0.0.1:${o.node.pgPort}`,
        connect_address: `127.0.0.1:${o.node.pgPort}`,
        data_dir: o.node.dataDir,
        bin_dir: o.binDir,
        pgpass: join(o.nodeDir, "pgpass"),
        authentication: {
          superuser: { username: "postgres", password: PASSWORD },
          replication: { username: "replicator", password: PASSWORD },
          rewind: { username: "postgres", password: PASSWORD },
        },
        parameters: {
          unix_socket_directories: o.nodeDir,
          lc_messages: "C",
        },
        pg_hba: hba,
      },
      tags: { nofailover: false, noloadbalance: false, clonefrom: false, nosync: false },
    },
    null,
    2,
  ) + "\n";
}
