/**
 * Read-your-writes sessions: an async context that remembers its writes, so
 * that its reads only go to replicas known to have replayed them.
 *
 * No round trip is added to a write. The write only records the health
 * checker's probe sequence number when it ends; the first probe of the
 * primary that *started* after that moment reports a WAL position at or past
 * the write, and from then on a replica is eligible once it has replayed that
 * far. Until such a probe has come back, the session's reads go to the
 * primary.
 *
 * @module
 */

import { AsyncLocalStorage } from "node:async_hooks";
import type { CallOptions } from "./signal.ts";
import { formatLsn, parseLsn } from "./route.ts";
import { describe } from "./validate.ts";

/** What a session reads of the primary: its last probe's position and sequence number. */
interface SampledNode {
  readonly state: {
    readonly probe: { readonly lsn: bigint | undefined; readonly seq: number } | undefined;
  };
}

/**
 * A read-your-writes session, as given to `cluster.session(fn)`.
 *
 * @example Carry the guarantee to the next request
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app"],
 * });
 * const token = await cluster.session(async (session) => {
 *   await cluster.exec("update users set name = $1 where id = $2", ["Ada", 1]);
 *   return await session.token(); // e.g. into a cookie
 * });
 * // Later, maybe in another process:
 * await cluster.session(async () => {
 *   await cluster.readQuery("select name from users where id = $1", [1]);
 * }, { consistentWith: token });
 * ```
 */
export interface Session {
  /** Whether a write has run in this session (or a token was given to it). */
  readonly wrote: boolean;
  /**
   * A `writeToken()`-compatible token covering every write of the session
   * so far: pass it as `consistentWith` (to a read or a session) in another
   * process. Asks the primary for its WAL position only when no health probe
   * has reported one since the session's last write.
   *
   * @param options Cancellation and deadline of that question.
   * @returns The token (`"0/0"` when the session has not written).
   * @throws {DbxError} when the primary cannot be reached.
   */
  token(
    options?: { signal?: AbortSignal | undefined; timeoutMs?: number | undefined },
  ): Promise<string>;
}

/** Options of `cluster.session()`. */
export interface SessionOptions {
  /**
   * A token (from `writeToken()` or `session.token()`) the session's reads
   * must also be consistent with.
   * @default undefined
   */
  consistentWith?: string | undefined;
}

/** What a session's next read demands of replicas. */
export type SessionDemand =
  /** Nothing: no write yet. */
  | undefined
  /** A write no probe of the primary has covered yet: only the primary will do. */
  | "primary"
  /** Replicas that have replayed this far. */
  | bigint;

/** The cluster side a session needs: the checker's clock and the primary's position. */
export interface SessionHost {
  /** The sequence number of the last probe started (`HealthChecker.probeSeq`). */
  readonly probeSeq: number;
  /** Asks the primary for its WAL position, outside any session. */
  primaryLsn(options: CallOptions | undefined): Promise<string>;
}

/** One session of one cluster. Internal: users see {@linkcode Session}. */
export class SessionState implements Session {
  /** The cluster (its dispatcher) the session belongs to. */
  readonly host: SessionHost;
  /** The enclosing session of another cluster, if any. */
  readonly outer: SessionState | undefined;
  /** Probe sequence number at the end of the last write no primary probe has covered yet. */
  #pendingSince: number | undefined;
  /** The WAL position reads must have replayed. */
  #minLsn: bigint | undefined;
  /** Writes so far: tells `token()` whether one ran while it asked the primary. */
  #writes = 0;

  constructor(host: SessionHost, outer: SessionState | undefined, minLsn: bigint | undefined) {
    this.host = host;
    this.outer = outer;
    this.#minLsn = minLsn;
  }

  get wrote(): boolean {
    return this.#writes > 0 || this.#minLsn !== undefined;
  }

  /** A write ended (acknowledged or not: it may have been applied). */
  noteWrite(): void {
    this.#writes++;
    this.#pendingSince = this.host.probeSeq;
  }

  /**
   * What the next read demands, given the primary as the checker last saw it.
   *
   * @param primary The current primary, if one is known.
   * @returns The demand.
   */
  demand(primary: SampledNode | undefined): SessionDemand {
    if (this.#pendingSince !== undefined) {
      const probe = primary?.state.probe;
      if (probe === undefined || probe.seq <= this.#pendingSince || probe.lsn === undefined) {
        return "primary";
      }
      this.cover(probe.lsn);
      this.#pendingSince = undefined;
    }
    return this.#minLsn;
  }

  async token(
    options?: { signal?: AbortSignal | undefined; timeoutMs?: number | undefined },
  ): Promise<string> {
    if (this.#pendingSince === undefined) return formatLsn(this.#minLsn ?? 0n);
    const writes = this.#writes;
    const lsn = parseLsn(await this.host.primaryLsn(options));
    if (lsn !== undefined) {
      this.cover(lsn);
      // Asked after every write so far: the position covers them all.
      if (this.#writes === writes) this.#pendingSince = undefined;
    }
    return formatLsn(this.#minLsn ?? 0n);
  }

  /** Reads must also have replayed `lsn` from now on. */
  cover(lsn: bigint): void {
    if (this.#minLsn === undefined || lsn > this.#minLsn) this.#minLsn = lsn;
  }
}

const storage = new AsyncLocalStorage<SessionState>();

/**
 * The session of `host` bound to the current async context, if any.
 *
 * @param host The cluster.
 * @returns The innermost session of that cluster.
 */
export function currentSession(host: SessionHost): SessionState | undefined {
  let s = storage.getStore();
  while (s !== undefined && s.host !== host) s = s.outer;
  return s;
}

/**
 * Runs `fn` in a session of `host`; inside a session of the same cluster,
 * joins it (sessions nest: the inner and outer code see each other's writes).
 *
 * @param host The cluster.
 * @param fn The code to run.
 * @param options A token to start from.
 * @returns What `fn` returned.
 */
export function runSession<T>(
  host: SessionHost,
  fn: (session: Session) => T,
  options: SessionOptions | undefined,
): T {
  const token = options?.consistentWith;
  const minLsn = token === undefined ? undefined : parseLsn(token);
  if (token !== undefined && (typeof token !== "string" || minLsn === undefined)) {
    throw new RangeError(
      `Cannot run session() as 'options.consistentWith' must be a token from writeToken(): current value is ${
        describe(token)
      }`,
    );
  }
  const joined = currentSession(host);
  if (joined !== undefined) {
    if (minLsn !== undefined) joined.cover(minLsn);
    return fn(joined);
  }
  const session = new SessionState(host, storage.getStore(), minLsn);
  return storage.run(session, fn, session);
}

/**
 * Options of {@linkcode withSession}.
 *
 * @example
 * ```ts
 * import type { WithSessionOptions } from "@codelab/dbx";
 *
 * const options: WithSessionOptions = { header: "x-consistency" };
 * ```
 */
export interface WithSessionOptions {
  /**
   * The HTTP header that carries a session's token between requests and
   * services. A request's header (a token from `writeToken()` or
   * `session.token()`) is where its session starts; a response of a session
   * that wrote (or started from a token) gets the session's token in it, so
   * the client's or the next service's next request reads what this one
   * wrote. A header that is not a token is ignored. `false`: no header.
   * @default "dbx-token"
   */
  header?: string | false | undefined;
  /**
   * Also carry the token in a cookie of this name, for browsers: read from
   * the request's `Cookie` header, set on the response as a short-lived
   * (`Max-Age=60`), `HttpOnly`, `SameSite=Lax`, `Path=/` cookie. A replica
   * catches up within seconds; the cookie only has to outlive that.
   * @default undefined (no cookie)
   */
  cookie?: string | undefined;
}

/** How long the token cookie lives, in seconds: replicas catch up long before. */
const COOKIE_MAX_AGE_S = 60;

/** The token in the request's cookie `name`, when it holds one. */
function requestCookie(request: unknown, name: string): string | undefined {
  const cookies = headerOf(request, "cookie");
  if (cookies === undefined) return undefined;
  for (const part of cookies.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0 || part.slice(0, eq).trim() !== name) continue;
    const value = decodeURIComponent(part.slice(eq + 1).trim());
    return parseLsn(value) === undefined ? undefined : value;
  }
  return undefined;
}

/** A header of the handler's first argument, when it is a request. */
function headerOf(request: unknown, name: string): string | undefined {
  const headers = (request as { headers?: { get?: unknown } } | undefined)?.headers;
  if (typeof headers?.get !== "function") return undefined;
  return (headers.get as (name: string) => string | null).call(headers, name) ?? undefined;
}

/** The token in the request's header `name`, when it holds one. */
function requestHeader(request: unknown, name: string): string | undefined {
  const value = headerOf(request, name);
  return value !== undefined && parseLsn(value) !== undefined ? value : undefined;
}

/** `response` with `fill` applied to its headers; a copy when they are immutable. */
function withHeaders(response: Response, fill: (headers: Headers) => void): Response {
  try {
    fill(response.headers);
    return response;
  } catch {
    // Immutable headers (Response.redirect, a fetched response): copy it.
    const copy = new Response(response.body, response);
    fill(copy.headers);
    return copy;
  }
}

/**
 * Wraps a handler so that each call runs in its own read-your-writes
 * session of `cluster` (framework middleware, `Deno.serve`). With a
 * `Request` as the first argument, the session starts from the token in
 * its `dbx-token` header, and a `Response` of a session that wrote carries
 * the session's token in that header: a browser or a service that sends it
 * back reads its own writes on the next request, from any replica that has
 * them.
 *
 * @param cluster The cluster.
 * @param handler The handler.
 * @param options `header`: the header's name, or `false` for none; `cookie`: a cookie's name.
 * @returns The wrapped handler, with the same signature.
 * @throws {TypeError} when `options.header` is neither a header name nor `false`, or `options.cookie` is not a cookie name.
 *
 * @example Every request a session, carried across requests by a header
 * ```ts
 * import { connect, withSession } from "@codelab/dbx";
 *
 * const cluster = await connect({
 *   master: "postgres://app@db1:5432/app",
 *   replicas: ["postgres://app@db2:5432/app"],
 * });
 * Deno.serve(withSession(cluster, async (req) => {
 *   if (req.method === "POST") await cluster.exec("insert into hits(path) values ($1)", [req.url]);
 *   const { n } = await cluster.readQueryRow<{ n: number }>("select count(*)::int as n from hits");
 *   return new Response(String(n)); // after a POST: with a dbx-token header
 * }));
 * ```
 */
export function withSession<A extends unknown[], R>(
  cluster: { session<T>(fn: (session: Session) => T, options?: SessionOptions): T },
  handler: (...args: A) => R,
  options?: WithSessionOptions,
): (...args: A) => R {
  const header = options?.header ?? "dbx-token";
  const cookie = options?.cookie;
  const token = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
  if (header !== false && (typeof header !== "string" || !token.test(header))) {
    throw new TypeError(
      `Cannot run withSession() as 'options.header' must be a header name or false: current value is ${
        describe(header)
      }`,
    );
  }
  if (cookie !== undefined && (typeof cookie !== "string" || !token.test(cookie))) {
    throw new TypeError(
      `Cannot run withSession() as 'options.cookie' must be a cookie name: current value is ${
        describe(cookie)
      }`,
    );
  }
  if (header === false && cookie === undefined) {
    return (...args) => cluster.session(() => handler(...args));
  }
  return (...args) => {
    const consistentWith = (header === false ? undefined : requestHeader(args[0], header)) ??
      (cookie === undefined ? undefined : requestCookie(args[0], cookie));
    return cluster.session((session) => {
      const result = handler(...args);
      if (!(result instanceof Promise)) return result;
      return result.then(async (response: unknown) => {
        if (!(response instanceof Response) || !session.wrote) return response;
        // No token when the primary cannot say where it is: the request's
        // own outcome stands; its client only loses the guarantee.
        const value = await session.token().catch(() => undefined);
        if (value === undefined) return response;
        return withHeaders(response, (headers) => {
          if (header !== false) headers.set(header, value);
          if (cookie !== undefined) {
            headers.append(
              "set-cookie",
              `${cookie}=${
                encodeURIComponent(value)
              }; Max-Age=${COOKIE_MAX_AGE_S}; Path=/; HttpOnly; SameSite=Lax`,
            );
          }
        });
      }) as R;
    }, { consistentWith });
  };
}
