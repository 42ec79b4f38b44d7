/**
 * Multi-host connection strings, as libpq writes them:
 * `postgres://app@h1:5432,h2:5433,[::1]/app?target_session_attrs=read-write`.
 * Every host becomes a node of its own (one single-host URL each, which is
 * what pg understands); libpq's `target_session_attrs` and
 * `load_balance_hosts` are read, checked and removed, since pg does not know
 * them and dbx applies them to the whole cluster. Pure: no I/O.
 *
 * @module
 */

import { ConfigError } from "../errors.ts";

/**
 * libpq's `target_session_attrs`: which server a session must reach. dbx
 * routes by method, so it decides what `connect()` waits for (see the README).
 */
export type TargetSessionAttrs =
  | "any"
  | "read-write"
  | "primary"
  | "read-only"
  | "standby"
  | "prefer-standby";

/**
 * libpq's `load_balance_hosts`: `random` spreads reads at random over the
 * replicas, `disable` keeps the default balancer.
 */
export type LoadBalanceHosts = "disable" | "random";

const TARGET_SESSION_ATTRS: readonly TargetSessionAttrs[] = [
  "any",
  "read-write",
  "primary",
  "read-only",
  "standby",
  "prefer-standby",
];
const LOAD_BALANCE_HOSTS: readonly LoadBalanceHosts[] = ["disable", "random"];

/** One host of a connection string. */
export interface HostUrl {
  /** Host name or address (an IPv6 address without its brackets). */
  readonly host: string;
  /** TCP port; 5432 when the URL gives none. */
  readonly port: number;
  /** A single-host connection string for this host, without the libpq-only parameters. */
  readonly url: string;
}

/**
 * A connection string split into its hosts and the cluster-wide libpq
 * parameters it carried.
 */
export interface MultiHostUrl {
  /** Every host, in the order given. */
  readonly hosts: readonly HostUrl[];
  /** `target_session_attrs`, when given. */
  readonly targetSessionAttrs: TargetSessionAttrs | undefined;
  /** `load_balance_hosts`, when given. */
  readonly loadBalanceHosts: LoadBalanceHosts | undefined;
}

/** The parts of a URL around its host list. */
export interface UrlAuthority {
  /** Scheme, `//` and the user info with its `@` (may hold a password). */
  readonly head: string;
  /** The comma-separated host list, as written. */
  readonly hosts: string;
  /** Path, query and fragment, as written (may be empty). */
  readonly tail: string;
}

/**
 * Splits a URL around its authority's host list, without decoding anything.
 *
 * @param url A connection string.
 * @returns Its parts, or undefined when it has no `scheme://` authority.
 */
export function splitAuthority(url: string): UrlAuthority | undefined {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(url);
  if (scheme === null) return undefined;
  const start = scheme[0].length;
  const end = url.slice(start).search(/[/?#]/);
  const authorityEnd = end === -1 ? url.length : start + end;
  const authority = url.slice(start, authorityEnd);
  const at = authority.lastIndexOf("@");
  return {
    head: url.slice(0, start + at + 1),
    hosts: authority.slice(at + 1),
    tail: url.slice(authorityEnd),
  };
}

function fail(field: string, rule: string, shown: string): never {
  throw new ConfigError(field, `Cannot connect: '${field}' ${rule}: current value is ${shown}`);
}

/** One `host[:port]` or `[v6][:port]` entry of a host list. */
function parseHost(field: string, entry: string, index: number): { host: string; port: number } {
  const where = `host ${index + 1} of the URL`;
  let host: string;
  let portText: string | undefined;
  if (entry.startsWith("[")) {
    const close = entry.indexOf("]");
    if (close === -1) fail(field, `${where} must close its IPv6 '['`, JSON.stringify(entry));
    host = entry.slice(1, close);
    const rest = entry.slice(close + 1);
    if (rest !== "" && !rest.startsWith(":")) {
      fail(field, `${where} must be '[address]:port'`, JSON.stringify(entry));
    }
    portText = rest === "" ? undefined : rest.slice(1);
  } else {
    const parts = entry.split(":");
    if (parts.length > 2) {
      fail(
        field,
        `${where} must put an IPv6 address in brackets ('[::1]:5432')`,
        JSON.stringify(entry),
      );
    }
    host = parts[0]!;
    portText = parts[1];
  }
  if (host === "") fail(field, `${where} must name a host`, JSON.stringify(entry));
  let port = 5432;
  if (portText !== undefined) {
    port = Number(portText);
    if (!/^\d{1,5}$/.test(portText) || port < 1 || port > 65535) {
      fail(field, `${where} must have a port from 1 to 65535`, JSON.stringify(entry));
    }
  }
  try {
    host = decodeURIComponent(host);
  } catch {
    fail(field, `${where} must be a valid percent-encoded host`, JSON.stringify(entry));
  }
  return { host, port };
}

/** Path, query pairs (as written) and fragment of the part of a URL after its authority. */
function splitTail(tail: string): { path: string; pairs: string[]; fragment: string } {
  const hashAt = tail.indexOf("#");
  const beforeHash = hashAt === -1 ? tail : tail.slice(0, hashAt);
  const queryAt = beforeHash.indexOf("?");
  return {
    path: queryAt === -1 ? beforeHash : beforeHash.slice(0, queryAt),
    pairs: queryAt === -1 ? [] : beforeHash.slice(queryAt + 1).split("&").filter((p) => p !== ""),
    fragment: hashAt === -1 ? "" : tail.slice(hashAt),
  };
}

function paramKey(pair: string): string {
  const eq = pair.indexOf("=");
  return decodeParam(eq === -1 ? pair : pair.slice(0, eq));
}

function paramValue(pair: string): string {
  const eq = pair.indexOf("=");
  return decodeParam(eq === -1 ? "" : pair.slice(eq + 1));
}

/**
 * The query parameters of a URL, decoded; the last one wins, as in pg.
 *
 * @param url A connection string.
 * @returns Parameter names to values.
 */
export function queryParams(url: string): Map<string, string> {
  const q = url.indexOf("?");
  const tail = splitAuthority(url)?.tail ?? (q === -1 ? "" : url.slice(q));
  const { pairs } = splitTail(tail);
  return new Map(pairs.map((p) => [paramKey(p), paramValue(p)]));
}

/**
 * A URL without some query parameters; everything else is kept as written.
 *
 * @param url A connection string.
 * @param keys The parameter names to remove.
 * @returns The URL without them (unchanged when it has none of them).
 */
export function withoutParams(url: string, keys: readonly string[]): string {
  const parts = splitAuthority(url);
  if (parts === undefined) return url;
  const { path, pairs, fragment } = splitTail(parts.tail);
  const kept = pairs.filter((p) => !keys.includes(paramKey(p)));
  if (kept.length === pairs.length) return url;
  return `${parts.head}${parts.hosts}${path}${
    kept.length === 0 ? "" : `?${kept.join("&")}`
  }${fragment}`;
}

function decodeParam(text: string): string {
  try {
    return decodeURIComponent(text.replaceAll("+", " "));
  } catch {
    return text;
  }
}

/** The value of a libpq parameter, checked against its allowed values. */
function choice<T extends string>(
  field: string,
  name: string,
  value: string | undefined,
  allowed: readonly T[],
): T | undefined {
  if (value === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(value)) {
    fail(field, `parameter '${name}' must be one of ${allowed.join(", ")}`, JSON.stringify(value));
  }
  return value as T;
}

/**
 * Splits a connection string into one single-host URL per host and reads
 * (and removes) libpq's `target_session_attrs` and `load_balance_hosts`.
 * A single-host URL without those parameters comes back unchanged, so
 * everything else about it is checked where single URLs are.
 *
 * @param url A connection string, single- or multi-host.
 * @param field The config field it came from, for errors.
 * @returns The hosts and the parameters.
 * @throws {ConfigError} naming the field and the host or parameter that is wrong
 * (never the password).
 */
export function parseMultiHostUrl(url: string, field: string): MultiHostUrl {
  const parts = splitAuthority(url);
  if (parts === undefined) {
    return {
      hosts: [{ host: "", port: 5432, url }],
      targetSessionAttrs: undefined,
      loadBalanceHosts: undefined,
    };
  }
  const { head } = parts;
  const { path, pairs, fragment } = splitTail(parts.tail);
  const kept: string[] = [];
  const libpq = new Map<string, string>();
  const queryKeys = new Set<string>();
  for (const pair of pairs) {
    const key = paramKey(pair);
    queryKeys.add(key);
    if (key === "target_session_attrs" || key === "load_balance_hosts") {
      libpq.set(key, paramValue(pair));
    } else kept.push(pair);
  }
  const targetSessionAttrs = choice(
    field,
    "target_session_attrs",
    libpq.get("target_session_attrs"),
    TARGET_SESSION_ATTRS,
  );
  const loadBalanceHosts = choice(
    field,
    "load_balance_hosts",
    libpq.get("load_balance_hosts"),
    LOAD_BALANCE_HOSTS,
  );

  const entries = parts.hosts.split(",");
  if (entries.length === 1 && libpq.size === 0) {
    return { hosts: [{ ...hostOf(url), url }], targetSessionAttrs, loadBalanceHosts };
  }
  if (entries.length > 1) {
    for (const key of ["host", "hostaddr", "port"]) {
      if (queryKeys.has(key)) {
        fail(
          field,
          `must not combine a host list with the '${key}' parameter (pg would send every node to the same ${key})`,
          `${entries.length} hosts and '${key}='`,
        );
      }
    }
  }
  const rest = `${path}${kept.length === 0 ? "" : `?${kept.join("&")}`}${fragment}`;
  const hosts = entries.map((entry, i) => {
    if (entries.length === 1 && entry === "") {
      return { host: "", port: 5432, url: `${head}${rest}` };
    }
    const { host, port } = parseHost(field, entry, i);
    return { host, port, url: `${head}${entry}${rest}` };
  });
  return { hosts, targetSessionAttrs, loadBalanceHosts };
}

/** Host and port of a single-host URL, as far as they can be read (validation is elsewhere). */
function hostOf(url: string): { host: string; port: number } {
  try {
    const u = new URL(url);
    return {
      host: decodeURIComponent(u.hostname).replace(/^\[(.*)\]$/, "$1"),
      port: u.port === "" ? 5432 : Number(u.port),
    };
  } catch {
    return { host: "", port: 5432 };
  }
}
