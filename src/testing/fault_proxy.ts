/**
 * {@linkcode faultProxy}: a TCP proxy in front of one PostgreSQL node that can add latency,
 * hang like an unreachable host, or drop every connection, for fault-injection tests.
 * Works in Deno and Bun: only `node:net`.
 *
 * @module
 */

import { createServer, type Server, type Socket } from "node:net";
import { redactUrl } from "../config/redact.ts";
import { describe } from "../call/validate.ts";
import { type Address, ignore, Link, type Mode } from "./fault_proxy_link.ts";

/**
 * Options for {@linkcode faultProxy}.
 *
 * @example Listen on a fixed port
 * ```ts
 * import { faultProxy } from "@codelab/dbx/testing";
 *
 * await using proxy = await faultProxy({ host: "127.0.0.1", port: 5432 }, { port: 15432 });
 * console.log(proxy.port); // 15432
 * ```
 */
export interface FaultProxyOptions {
  /**
   * TCP port to listen on; `0` lets the operating system choose a free one, which
   * {@linkcode FaultProxy.port} then reports.
   *
   * @default {0}
   */
  port?: number;
  /**
   * Address to listen on. The proxy adds no authentication of its own, so keep it on
   * loopback unless other machines must reach it.
   *
   * @default {"127.0.0.1"}
   */
  host?: string;
}

/**
 * A running proxy returned by {@linkcode faultProxy}. It starts out forwarding bytes
 * unchanged; {@linkcode FaultProxy.delay}, {@linkcode FaultProxy.blackhole} and
 * {@linkcode FaultProxy.reset} inject faults and {@linkcode FaultProxy.heal} ends them.
 * Dispose it with `await using` or {@linkcode FaultProxy.close}.
 *
 * @example Slow every round trip down, then restore it
 * ```ts
 * import { faultProxy } from "@codelab/dbx/testing";
 *
 * await using proxy = await faultProxy("postgres://app@127.0.0.1:5433/app");
 * proxy.delay(200); // every chunk through proxy.url(...) now arrives 200 ms late
 * proxy.heal();
 * ```
 */
export interface FaultProxy extends AsyncDisposable {
  /** Address the proxy listens on, as bound (e.g. `"127.0.0.1"`). */
  readonly host: string;
  /** Port the proxy listens on (the one the operating system chose for port `0`). */
  readonly port: number;
  /** Number of client connections currently open through the proxy. */
  readonly connections: number;
  /**
   * Points a connection URL at the proxy: host and port are replaced, while user,
   * password, database and query parameters are kept as they are.
   *
   * @param base A `postgres://` or `postgresql://` URL, usually the target node's.
   * @returns The same URL with the proxy's host and port.
   * @throws {TypeError} When `base` is not a `postgres://` or `postgresql://` URL (the
   * message never shows its password).
   */
  url(base: string): string;
  /**
   * Delays every chunk in both directions by `ms` from now on; `0` forwards at once again.
   * Chunks already on their way keep their delay, and bytes are never reordered: a chunk
   * never overtakes one that arrived before it.
   *
   * @param ms Added latency per direction in milliseconds, so a round trip takes about
   * `2 * ms` longer.
   * @throws {RangeError} When `ms` is not a finite number from 0 to 2147483647.
   */
  delay(ms: number): void;
  /**
   * Makes the node look hung, from now until {@linkcode FaultProxy.heal}: open
   * connections stay open but nothing is forwarded either way, and new connections are
   * accepted but never reach the node, so the PostgreSQL handshake never completes.
   * Bytes that arrive meanwhile, and delayed bytes not yet delivered, are discarded.
   * A client that hangs up is still noticed (its server connection is closed), but
   * a server that hangs up is not passed on to its client.
   */
  blackhole(): void;
  /**
   * Destroys every open connection now, on both sides, as if the network dropped them;
   * clients see their connection end. New connections are then handled as before
   * (still blackholed or delayed if the proxy was).
   */
  reset(): void;
  /**
   * Returns to plain forwarding: no delay, no blackhole. Connections that were open or
   * opened while blackholed are destroyed, because the bytes they lost leave their
   * protocol state undefined; their clients see the connection end instead of hanging
   * forever. Other connections, and new ones, forward normally.
   */
  heal(): void;
  /**
   * Stops listening and destroys every connection, clearing every delay timer.
   * Idempotent: every call returns the same promise. `[Symbol.asyncDispose]` does the same.
   *
   * @returns A promise that resolves once the listener and every socket are closed; it
   * never rejects.
   */
  close(): Promise<void>;
}

/**
 * Starts a TCP proxy in front of one PostgreSQL node, for fault-injection tests: point
 * a client or a cluster at {@linkcode FaultProxy.url} instead of the node, then make the
 * node slow ({@linkcode FaultProxy.delay}), hung ({@linkcode FaultProxy.blackhole}) or
 * unreachable mid-query ({@linkcode FaultProxy.reset}) and back ({@linkcode FaultProxy.heal}).
 * Every connection gets its own connection to the node. Peers that reset their connection
 * never crash the process.
 *
 * @param target The node: a `postgres://` URL (only its host and port are used; port 5432
 * when absent) or `{ host, port }`.
 * @param options Listening address and port.
 * @returns The proxy, already listening; dispose it with `await using` or `close()`.
 * @throws {TypeError} When `target` or an option has the wrong type or is empty, or the
 * URL is malformed or names a unix socket (the message names the field and never shows
 * a password).
 * @throws {RangeError} When a port is out of range, e.g. `{ port: 70000 }`.
 * @throws {Error} When the proxy cannot listen, e.g. because the port is in use.
 *
 * @example Make a replica hang, then recover
 * ```ts
 * import { connect } from "@codelab/dbx";
 * import { faultProxy } from "@codelab/dbx/testing";
 *
 * const replicaUrl = "postgres://app@127.0.0.1:5433/app";
 * await using proxy = await faultProxy(replicaUrl);
 * await using cluster = await connect({
 *   master: "postgres://app@127.0.0.1:5432/app",
 *   replicas: [proxy.url(replicaUrl)],
 * });
 * proxy.blackhole(); // reads on the replica now hang until their deadline
 * proxy.heal(); // hung connections are dropped; new ones work
 * ```
 *
 * @example Drop a statement in flight
 * ```ts
 * // @ts-types="@types/pg"
 * import pg from "pg";
 * import { faultProxy } from "@codelab/dbx/testing";
 *
 * await using proxy = await faultProxy({ host: "127.0.0.1", port: 5432 });
 * const client = new pg.Client(proxy.url("postgres://postgres@127.0.0.1:5432/postgres"));
 * client.on("error", () => {});
 * await client.connect();
 * const sleeping = client.query("select pg_sleep(5)");
 * proxy.reset();
 * await sleeping.catch((err: Error) => console.log(err.message)); // Connection terminated
 * ```
 */
export async function faultProxy(
  target: string | { host: string; port: number },
  options: FaultProxyOptions = {},
): Promise<FaultProxy> {
  const upstream = parseTarget(target);
  const listen = parseOptions(options);
  return await FaultProxyImpl.start(upstream, listen);
}

const DEFAULT_HOST = "127.0.0.1";
const DEFAULT_PG_PORT = 5432;
const MAX_PORT = 65_535;
// Longer timeouts overflow setTimeout's 32-bit delay and fire at once.
const MAX_DELAY_MS = 2_147_483_647;

class FaultProxyImpl implements FaultProxy {
  readonly #target: Address;
  readonly #server: Server;
  readonly #links = new Set<Link>();
  readonly #mode: Mode = { latency: 0, blackholed: false };
  #host = "";
  #port = 0;
  #closing: Promise<void> | undefined;

  private constructor(target: Address) {
    this.#target = target;
    this.#server = createServer((socket) => this.#accept(socket));
  }

  static async start(target: Address, listen: Address): Promise<FaultProxyImpl> {
    const proxy = new FaultProxyImpl(target);
    await proxy.#listen(listen);
    return proxy;
  }

  get host(): string {
    return this.#host;
  }

  get port(): number {
    return this.#port;
  }

  get connections(): number {
    let open = 0;
    for (const link of this.#links) if (link.open) open++;
    return open;
  }

  url(base: string): string {
    const fail = (rule: string): never => {
      throw new TypeError(
        `Cannot build a proxy URL as 'base' ${rule}: current value is ${describe(base, redactUrl)}`,
      );
    };
    if (typeof base !== "string") fail("must be a string");
    const url = parseUrl(base) ?? fail("must be a postgres:// URL");
    if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") {
      fail("must be a postgres:// URL");
    }
    const hostname = this.#host.includes(":") ? `[${this.#host}]` : this.#host;
    url.hostname = hostname;
    url.port = String(this.#port);
    // The setters silently do nothing on a URL without an authority ("postgres:db").
    if (url.hostname !== hostname) fail("must have a host part (postgres://host/...)");
    return url.href;
  }

  delay(ms: number): void {
    if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0 || ms > MAX_DELAY_MS) {
      const message = `Cannot delay as 'ms' must be a finite number from 0 to ${MAX_DELAY_MS}: ` +
        `current value is ${describe(ms, redactUrl)}`;
      throw typeof ms === "number" ? new RangeError(message) : new TypeError(message);
    }
    this.#mode.latency = ms;
  }

  blackhole(): void {
    this.#mode.blackholed = true;
    for (const link of this.#links) link.starve();
  }

  reset(): void {
    for (const link of this.#links) link.destroy();
  }

  heal(): void {
    this.#mode.blackholed = false;
    this.#mode.latency = 0;
    for (const link of this.#links) if (link.starved) link.destroy();
  }

  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #listen(listen: Address): Promise<void> {
    const server = this.#server;
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen({ host: listen.host, port: listen.port }, () => {
          server.off("error", reject);
          resolve();
        });
      });
    } catch (error) {
      throw new Error(
        `Cannot start fault proxy: listening on ${listen.host}:${listen.port} failed: ${
          (error as Error).message
        }`,
        { cause: error },
      );
    }
    // Accept errors (e.g. too many open files) must not crash the process.
    server.on("error", () => {});
    const address = server.address();
    if (address === null || typeof address === "string") {
      await this.close();
      throw new Error("Cannot start fault proxy: could not read the listening address");
    }
    this.#host = address.address;
    this.#port = address.port;
  }

  #accept(socket: Socket): void {
    socket.on("error", ignore);
    if (this.#closing !== undefined) {
      socket.destroy();
      return;
    }
    const link = new Link(socket, this.#target, this.#mode);
    this.#links.add(link);
    void link.done.then(() => this.#links.delete(link));
  }

  async #shutdown(): Promise<void> {
    const stopped = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    const links = [...this.#links];
    for (const link of links) link.destroy();
    await Promise.all([stopped, ...links.map((link) => link.done)]);
  }
}

function parseTarget(target: unknown): Address {
  const fail = (
    field: string,
    rule: string,
    value: unknown,
    range = typeof value === "number",
  ): never => {
    const message = `Cannot start fault proxy as '${field}' ${rule}: current value is ${
      describe(value, redactUrl)
    }`;
    throw range ? new RangeError(message) : new TypeError(message);
  };
  if (typeof target === "string") {
    const url = parseUrl(target) ?? fail("target", "must be a postgres:// URL", target);
    if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") {
      fail("target", "must be a postgres:// URL", target);
    }
    const host = decodeHost(url.hostname) ?? fail("target", "must have a valid host", target);
    if (host === "") fail("target", "must name a host", target);
    if (host.startsWith("/")) {
      fail("target", "must name a TCP host, not a unix socket directory", target);
    }
    const port = url.port === "" ? DEFAULT_PG_PORT : Number(url.port);
    if (port < 1) fail("target", `must have a port from 1 to ${MAX_PORT}`, target, true);
    return { host, port };
  }
  if (typeof target !== "object" || target === null) {
    fail("target", "must be a postgres:// URL or { host, port }", target, false);
  }
  const { host, port } = target as { host?: unknown; port?: unknown };
  if (typeof host !== "string" || host === "") {
    fail("target.host", "must be a non-empty string", host);
  }
  if (!isInteger(port) || port < 1 || port > MAX_PORT) {
    fail("target.port", `must be an integer from 1 to ${MAX_PORT}`, port);
  }
  return { host: host as string, port: port as number };
}

function parseOptions(options: unknown): Address {
  const fail = (field: string, rule: string, value: unknown): never => {
    const message = `Cannot start fault proxy as '${field}' ${rule}: current value is ${
      describe(value, redactUrl)
    }`;
    throw typeof value === "number" ? new RangeError(message) : new TypeError(message);
  };
  if (typeof options !== "object" || options === null) {
    fail("options", "must be an object", options);
  }
  const { host = DEFAULT_HOST, port = 0 } = options as { host?: unknown; port?: unknown };
  if (typeof host !== "string" || host === "") {
    fail("options.host", "must be a non-empty string", host);
  }
  if (!isInteger(port) || port < 0 || port > MAX_PORT) {
    fail("options.port", `must be an integer from 0 to ${MAX_PORT}`, port);
  }
  return { host: host as string, port: port as number };
}

/** The host of a URL without IPv6 brackets and percent-encoding. */
function decodeHost(hostname: string): string | undefined {
  try {
    return decodeURIComponent(hostname).replace(/^\[(.*)\]$/, "$1");
  } catch {
    return undefined;
  }
}

function isInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value);
}

function parseUrl(text: string): URL | undefined {
  try {
    return new URL(text);
  } catch {
    return undefined;
  }
}
