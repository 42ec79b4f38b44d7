/**
 * Running the PostgreSQL binaries of a local cluster: the {@linkcode Runner} (which runs
 * them as the `postgres` OS user when this process is root), short-lived SQL
 * connections, server logs, loopback port reservation and polling. Internal to
 * `startLocalCluster`.
 *
 * @module
 */

import { execFile } from "node:child_process";
import { chown, readFile, stat } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import process from "node:process";
import { promisify } from "node:util";
// @ts-types="@types/pg"
import pg from "pg";
import { delay } from "../call/retry.ts";
import { exists } from "./embedded_pg.ts";
import { isExecutable } from "./pg_binaries.ts";

/** How long startup and promotion wait for a server to get where it should. */
export const DEADLINE_MS = 60_000;
const POLL_MS = 100;
// pg_ctl waits 60 s itself (-t 60); this only guards against a command that never exits.
const COMMAND_TIMEOUT_MS = 180_000;
const LOG_TAIL_LINES = 30;
/** What the postmaster logs (lc_messages is C) when another socket holds its port. */
const PORT_TAKEN = /could not bind IPv[46] address .*: Address already in use/;

const execFileAsync = promisify(execFile);

/** The identity of one server of a cluster: its name (which names its log) and data. */
export interface ServerDir {
  /** Node name, e.g. `"replica1"`; the log is `<cluster dir>/<name>.log`. */
  readonly name: string;
  /** Absolute path of the data directory. */
  readonly dataDir: string;
}

/** A failed `pg_ctl start`, telling whether the server found its TCP port taken. */
export class ServerStartError extends Error {
  /** Whether the log of this start says the port was in use by another socket. */
  readonly portTaken: boolean;

  constructor(message: string, portTaken: boolean, options: ErrorOptions) {
    super(message, options);
    this.portTaken = portTaken;
  }
}

/**
 * Runs PostgreSQL binaries, as the `postgres` OS user when this process is root
 * (initdb and postgres refuse to run as root).
 */
export class Runner {
  #binDir: string;
  #asPostgres: { runuser: string; uid: number; gid: number } | undefined;

  private constructor(
    binDir: string,
    asPostgres: { runuser: string; uid: number; gid: number } | undefined,
  ) {
    this.#binDir = binDir;
    this.#asPostgres = asPostgres;
  }

  /**
   * A runner for the binaries in `binDir`; when root, it finds `runuser` and the
   * `postgres` OS user.
   *
   * @param binDir Directory holding `initdb`, `pg_ctl` and `postgres`.
   * @returns The runner.
   * @throws {Error} When this process is root and there is no `postgres` OS user.
   */
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

  /**
   * Runs `binary` from the binary directory and returns its stdout; the error of a
   * failed run carries its stderr in the message and its exit code as `exitCode`.
   */
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

  /**
   * Starts a server with `pg_ctl start` and waits until it accepts connections.
   *
   * @throws {ServerStartError} When it fails; the message ends with the tail of its log
   * and `portTaken` says whether this start failed because its port was in use.
   */
  async pgCtlStart(node: ServerDir, dir: string): Promise<void> {
    const log = logPath(dir, node.name);
    const logStart = await stat(log).then((info) => info.size, () => 0);
    try {
      await this.run("pg_ctl", [...["-D", node.dataDir, "-l", log], ...[
        "-w",
        "-t",
        "60",
        "start",
      ]]);
    } catch (error) {
      // Only this start's lines: an earlier start of the node may have failed differently.
      const written = await readFile(log).then(
        (all) => all.subarray(logStart).toString(),
        () => "",
      );
      throw new ServerStartError(
        `Node "${node.name}" failed to start: ${(error as Error).message}\n${await logTail(
          dir,
          node.name,
        )}`,
        PORT_TAKEN.test(written),
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

/** Ports a server of a local cluster may get: below Linux's default ephemeral range. */
const SERVER_PORTS = { low: 20_000, high: 32_767 } as const;

/**
 * Chooses distinct free loopback ports for servers, holding every listener open until
 * all are chosen. They come from below the operating system's ephemeral range
 * (32768–60999 on Linux), so no client socket and no `port: 0` listener is handed one
 * between this check and the server's bind. They are still free, not reserved: another
 * process may bind one explicitly, which is why servers started on them retry on a fresh
 * port.
 *
 * @param count How many ports.
 * @param exclude Ports never returned, e.g. those of servers that are not bound yet.
 * @returns `count` distinct ports, none of them in `exclude`.
 * @throws {Error} When too many of the ports tried are in use.
 */
export async function freePorts(
  count: number,
  exclude: ReadonlySet<number> = new Set(),
): Promise<number[]> {
  const servers: Server[] = [];
  const tried = new Set(exclude);
  try {
    const ports: number[] = [];
    while (ports.length < count) {
      if (tried.size >= exclude.size + count + 64) {
        throw new Error(
          `Could not find ${count} free loopback ports from ${SERVER_PORTS.low} to ` +
            `${SERVER_PORTS.high}: ${tried.size - exclude.size} tried`,
        );
      }
      const port = SERVER_PORTS.low +
        Math.floor(Math.random() * (SERVER_PORTS.high - SERVER_PORTS.low + 1));
      if (tried.has(port)) continue;
      tried.add(port);
      const server = createServer();
      const bound = await new Promise<boolean>((ok) => {
        server.once("error", () => ok(false));
        server.listen({ port, host: "127.0.0.1", exclusive: true }, () => ok(true));
      });
      if (!bound) continue;
      servers.push(server);
      ports.push(port);
    }
    return ports;
  } finally {
    await Promise.all(
      servers.map((server) => new Promise<void>((ok) => server.close(() => ok()))),
    );
  }
}

/**
 * Runs one statement on a short-lived connection that is always closed.
 *
 * @param url Connection URL of the server.
 * @param text The statement, without parameters.
 * @returns The rows it returned.
 */
export async function sql<T>(url: string, text: string): Promise<T[]> {
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

/**
 * Polls `check` every 100 ms until it returns `true` or {@linkcode DEADLINE_MS} has
 * passed; a check that throws counts as `false`.
 *
 * @param check The condition; its last error is returned when time runs out.
 * @param signal Aborts the wait.
 * @returns `{ done: true }`, or `{ done: false, lastError }` after the deadline.
 * @throws {unknown} The signal's reason when it aborts.
 */
export async function waitUntil(
  check: () => Promise<boolean>,
  signal?: AbortSignal,
): Promise<{ done: true } | { done: false; lastError: unknown }> {
  const deadline = Date.now() + DEADLINE_MS;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      if (await check()) return { done: true };
    } catch (error) {
      lastError = error;
    }
    await delay(POLL_MS, signal);
  }
  return { done: false, lastError };
}

/**
 * The path of a node's server log.
 *
 * @param dir The cluster directory.
 * @param name The node name.
 * @returns `<dir>/<name>.log`.
 */
export function logPath(dir: string, name: string): string {
  return join(dir, `${name}.log`);
}

/**
 * The last lines of a node's server log, for error messages.
 *
 * @param dir The cluster directory.
 * @param name The node name.
 * @returns The lines under a header naming the file, or a line saying there is no log.
 */
export async function logTail(dir: string, name: string): Promise<string> {
  const path = logPath(dir, name);
  try {
    const lines = (await readFile(path, "utf8")).trimEnd().split("\n");
    return `--- last lines of ${path} ---\n${lines.slice(-LOG_TAIL_LINES).join("\n")}`;
  } catch {
    return `--- no log at ${path} ---`;
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
