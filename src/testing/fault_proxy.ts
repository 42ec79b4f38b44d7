/**
 * {@linkcode faultProxy}: a loopback TCP proxy in front of one node that
 * can add latency, hang (blackhole), or drop every connection, for
 * fault-injection tests. Uses only `node:net`, so it runs on Deno and Bun.
 *
 * @module
 */

import { connect as tcpConnect, createServer, type Server, type Socket } from "node:net";

/**
 * Options of {@linkcode faultProxy}.
 *
 * @example
 * ```ts
 * import { faultProxy } from "@codelab/dbx/testing";
 *
 * await using proxy = await faultProxy({ host: "127.0.0.1", port: 5432 }, { port: 15432 });
 * ```
 */
export interface FaultProxyOptions {
  /** Port to listen on. @default 0 (chosen by the OS) */
  port?: number;
  /** Address to listen on. @default "127.0.0.1" */
  host?: string;
}

/**
 * A running proxy.
 *
 * @example
 * ```ts
 * import { faultProxy } from "@codelab/dbx/testing";
 *
 * await using proxy = await faultProxy({ host: "127.0.0.1", port: 5433 });
 * proxy.delay(200); // every round trip through proxy.url(...) now takes 200 ms longer
 * proxy.heal();
 * ```
 */
export interface FaultProxy extends AsyncDisposable {
  /** Address it listens on. */
  readonly host: string;
  /** Port it listens on. */
  readonly port: number;
  /** Open client connections. */
  readonly connections: number;
  /**
   * The given connection string with host and port replaced by the proxy's
   * (user, password, database and parameters kept).
   *
   * @param base A postgres:// URL.
   * @returns The URL through the proxy.
   */
  url(base: string): string;
  /**
   * Delays every chunk, both ways, by `ms` from now on (0 = none). Byte order is kept.
   *
   * @param ms Added latency in ms.
   */
  delay(ms: number): void;
  /** Hangs: accepts connections but forwards nothing either way, like a host that stopped answering. */
  blackhole(): void;
  /** Drops every open connection now (both sides); new connections still work. */
  reset(): void;
  /**
   * Back to plain forwarding (no delay, no blackhole). Connections opened or
   * starved while blackholed are dropped, since their protocol state is unknown.
   */
  heal(): void;
  /**
   * Stops listening and drops every connection. Idempotent (same promise).
   *
   * @returns Resolves when the listener is closed.
   */
  close(): Promise<void>;
}

interface Pair {
  readonly client: Socket;
  upstream: Socket | undefined;
  /** Touched by a blackhole: dropped on heal. */
  starved: boolean;
}

function parseTarget(target: unknown): { host: string; port: number } {
  if (typeof target === "string") {
    let url: URL;
    try {
      url = new URL(target);
    } catch {
      throw new TypeError(
        "Cannot start faultProxy as 'target' must be a postgres URL or { host, port }",
      );
    }
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    if (host === "") throw new TypeError("Cannot start faultProxy as 'target' names no host");
    return { host, port: url.port === "" ? 5432 : Number(url.port) };
  }
  const t = target as { host?: unknown; port?: unknown } | null;
  if (
    t === null || typeof t !== "object" || typeof t.host !== "string" || t.host === "" ||
    typeof t.port !== "number" || !Number.isInteger(t.port) || t.port < 1 || t.port > 65535
  ) {
    throw new TypeError(
      "Cannot start faultProxy as 'target' must be a postgres URL or { host: string, port: 1-65535 }",
    );
  }
  return { host: t.host, port: t.port };
}

/**
 * Starts a loopback TCP proxy in front of `target`.
 *
 * @param target The node: a postgres URL or `{ host, port }`.
 * @param options Listening address and port.
 * @returns The running proxy; close it (or `await using`) when done.
 * @throws {TypeError} / {RangeError} for a bad target or options.
 *
 * @example Make a replica hang, then recover
 * ```ts
 * import { faultProxy } from "@codelab/dbx/testing";
 *
 * await using proxy = await faultProxy("postgres://app@127.0.0.1:5433/app");
 * const replicaUrl = proxy.url("postgres://app@127.0.0.1:5433/app");
 * proxy.blackhole(); // reads on replicaUrl now hang
 * proxy.heal();
 * ```
 */
export async function faultProxy(
  target: string | { host: string; port: number },
  options: FaultProxyOptions = {},
): Promise<FaultProxy> {
  const upstreamAddr = parseTarget(target);
  const host = options.host ?? "127.0.0.1";
  const port = options.port ?? 0;
  if (typeof host !== "string" || host === "") {
    throw new TypeError(`Cannot start faultProxy as 'options.host' must be a non-empty string`);
  }
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(
      `Cannot start faultProxy as 'options.port' must be an integer 0-65535: current value is ${port}`,
    );
  }

  const pairs = new Set<Pair>();
  const timers = new Set<ReturnType<typeof setTimeout>>();
  let latency = 0;
  let holes = false;

  const drop = (pair: Pair) => {
    pair.client.destroy();
    pair.upstream?.destroy();
    pairs.delete(pair);
  };

  /** Forwards `chunk` to `to`, after the current latency, unless blackholed. */
  const forward = (pair: Pair, to: Socket, chunk: Uint8Array) => {
    if (holes) {
      pair.starved = true;
      return;
    }
    if (latency === 0) {
      to.write(chunk);
      return;
    }
    // Timers fire in creation order for equal delays, so bytes stay ordered.
    const timer = setTimeout(() => {
      timers.delete(timer);
      if (!to.destroyed) to.write(chunk);
    }, latency);
    timers.add(timer);
  };

  const server: Server = createServer((client) => {
    const pair: Pair = { client, upstream: undefined, starved: holes };
    pairs.add(pair);
    client.on("error", () => drop(pair));
    client.on("close", () => drop(pair));
    const upstream = tcpConnect(upstreamAddr);
    pair.upstream = upstream;
    upstream.on("error", () => drop(pair));
    upstream.on("close", () => drop(pair));
    client.on("data", (chunk: Uint8Array) => forward(pair, upstream, chunk));
    upstream.on("data", (chunk: Uint8Array) => forward(pair, client, chunk));
  });
  server.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host, port }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address();
  const boundPort = typeof address === "object" && address !== null ? address.port : port;
  let closing: Promise<void> | undefined;

  const proxy: FaultProxy = {
    host,
    port: boundPort,
    get connections() {
      return pairs.size;
    },
    url(base: string): string {
      const u = new URL(base);
      u.hostname = host.includes(":") ? `[${host}]` : host;
      u.port = String(boundPort);
      return u.href;
    },
    delay(ms: number): void {
      if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) {
        throw new RangeError(
          `Cannot delay as 'ms' must be a non-negative number: current value is ${ms}`,
        );
      }
      latency = ms;
    },
    blackhole(): void {
      holes = true;
      for (const pair of pairs) pair.starved = true;
    },
    reset(): void {
      for (const pair of [...pairs]) drop(pair);
    },
    heal(): void {
      holes = false;
      latency = 0;
      for (const pair of [...pairs]) if (pair.starved) drop(pair);
    },
    close(): Promise<void> {
      closing ??= (async () => {
        for (const timer of timers) clearTimeout(timer);
        timers.clear();
        for (const pair of [...pairs]) drop(pair);
        await new Promise<void>((resolve) => server.close(() => resolve()));
      })();
      return closing;
    },
    [Symbol.asyncDispose](): Promise<void> {
      return this.close();
    },
  };
  return proxy;
}
