/**
 * What a connection string must be before any part of it is used: a
 * `postgres://` scheme, well-formed percent-encoding, nothing after the host
 * that looks like a password's end (`@`), only query parameters pg or dbx act
 * on, and `host=` / `hostaddr=` / `port=` parameters that agree with the
 * host and port written before them. A connection string may hold a
 * password, so problems are named, never echoed.
 *
 * @module
 */

import { ConfigError } from "../errors.ts";
import { splitAuthority } from "./multi_host.ts";

/**
 * The query parameters pg (or dbx itself) acts on. Anything else would be
 * ignored without a word, so it is refused by name.
 */
export const URL_PARAMS: readonly string[] = [
  // Read by dbx (libpq's multi-host parameters, applied to the whole cluster).
  "target_session_attrs",
  "load_balance_hosts",
  // Where and as whom: must agree with the URL (host, hostaddr, port).
  "host",
  "hostaddr",
  "port",
  "user",
  "password",
  // TLS (checked against the node's `ssl` in tls.ts).
  "ssl",
  "sslmode",
  "sslrootcert",
  "sslcert",
  "sslkey",
  "sslnegotiation",
  "uselibpqcompat",
  // Session: startup parameters pg sends (`options` is merged with `session`).
  "application_name",
  "fallback_application_name",
  "options",
  "client_encoding",
  "statement_timeout",
  "lock_timeout",
  "idle_in_transaction_session_timeout",
  "query_timeout",
];

/** Where a parameter pg ignores from a URL goes instead. */
const INSTEAD: Readonly<Record<string, string>> = {
  connect_timeout: "use the 'pool.connectTimeoutMs' setting: pg ignores it in a URL",
  dbname: "put the database in the path (postgres://host/dbname): pg ignores it in a URL",
  database: "put the database in the path (postgres://host/dbname): pg ignores it in a URL",
};

/** Fails without showing the URL: it may hold a password in a place a redaction misses. */
function refuse(field: string, problem: string): never {
  throw new ConfigError(
    field,
    `Cannot connect: '${field}' ${problem} (the connection string is not shown: it may hold a password)`,
  );
}

/**
 * Which part of a connection string's scheme is malformed, said without
 * echoing it.
 *
 * @param url A connection string.
 * @returns The problem, or undefined when it starts with a scheme.
 */
export function schemeProblem(url: string): string | undefined {
  const lower = url.trimStart().toLowerCase();
  if (/^postgres(ql)?\/\//.test(lower)) {
    return "must start with postgres:// ('postgres' is followed by '//' without the ':')";
  }
  if (/^postgres(ql)?:\/?[^/]/.test(lower)) {
    return "must start with postgres:// (two slashes after 'postgres:')";
  }
  if (!/^[a-z][a-z0-9+.-]*:/.test(lower)) {
    return "must start with postgres:// or postgresql:// (no scheme found)";
  }
  return undefined;
}

/** Whether `text` decodes: every `%` starts two hex digits, and the bytes are UTF-8. */
function wellEncoded(text: string): boolean {
  if (/%(?![0-9a-fA-F]{2})/.test(text)) return false;
  try {
    decodeURIComponent(text);
    return true;
  } catch {
    return false;
  }
}

const ENCODING = "has malformed percent-encoding in";
const ENCODING_RULE = "(a '%' must start two hex digits: write a literal '%' as %25)";

/** Host and port of one `host[:port]` / `[v6][:port]` entry, as written. */
function hostAndPort(entry: string): { host: string; port: string | undefined } {
  if (entry.startsWith("[")) {
    const close = entry.indexOf("]");
    const rest = close === -1 ? "" : entry.slice(close + 1);
    return {
      host: close === -1 ? entry.slice(1) : entry.slice(1, close),
      port: rest.startsWith(":") ? rest.slice(1) : undefined,
    };
  }
  const colon = entry.indexOf(":");
  return colon === -1
    ? { host: entry, port: undefined }
    : { host: entry.slice(0, colon), port: entry.slice(colon + 1) };
}

function decoded(text: string): string {
  return decodeURIComponent(text.replaceAll("+", " "));
}

/**
 * Checks a connection string's structure, encoding and query parameters.
 *
 * @param field The config field the URL came from, for errors.
 * @param url The connection string (single- or multi-host).
 * @throws {ConfigError} naming the field and the problem, never the URL or its password.
 */
export function checkUrl(field: string, url: string): void {
  const scheme = schemeProblem(url);
  if (scheme !== undefined) refuse(field, scheme);
  const parts = splitAuthority(url);
  if (parts === undefined) return;
  const { head, hosts, tail } = parts;
  if (tail.includes("@")) {
    refuse(
      field,
      "has an '@' after the host: a user name or password holding '/', '?' or '#' must percent-encode it (%2F, %3F, %23), else the URL reads as another host (an '@' in the database or a parameter value: %40)",
    );
  }
  const userinfo = head.slice(head.indexOf("//") + 2, -1);
  const colon = userinfo.indexOf(":");
  const user = colon === -1 ? userinfo : userinfo.slice(0, colon);
  const password = colon === -1 ? "" : userinfo.slice(colon + 1);
  if (!wellEncoded(user)) refuse(field, `${ENCODING} the user name ${ENCODING_RULE}`);
  if (!wellEncoded(password)) refuse(field, `${ENCODING} the password ${ENCODING_RULE}`);
  for (const [i, entry] of hosts.split(",").entries()) {
    const where = hosts.includes(",") ? `host ${i + 1}` : "the host";
    if (!wellEncoded(entry)) refuse(field, `${ENCODING} ${where} ${ENCODING_RULE}`);
    if (entry.startsWith("[") && entry.includes("%")) {
      refuse(field, `has an IPv6 zone ('%25...') in ${where}, which pg cannot connect with`);
    }
  }
  const hashAt = tail.indexOf("#");
  const beforeHash = hashAt === -1 ? tail : tail.slice(0, hashAt);
  const queryAt = beforeHash.indexOf("?");
  const path = queryAt === -1 ? beforeHash : beforeHash.slice(0, queryAt);
  if (!wellEncoded(path)) refuse(field, `${ENCODING} the database name ${ENCODING_RULE}`);
  const pairs = queryAt === -1 ? [] : beforeHash.slice(queryAt + 1).split("&");
  const params = new Map<string, string>();
  for (const pair of pairs.filter((p) => p !== "")) {
    const eq = pair.indexOf("=");
    const rawKey = eq === -1 ? pair : pair.slice(0, eq);
    if (!wellEncoded(rawKey)) refuse(field, `${ENCODING} a query parameter name ${ENCODING_RULE}`);
    const key = decoded(rawKey);
    const name = /^[A-Za-z_][A-Za-z0-9_.-]*$/.test(key) ? `'${key}'` : undefined;
    const rawValue = eq === -1 ? "" : pair.slice(eq + 1);
    if (!wellEncoded(rawValue)) {
      refuse(field, `${ENCODING} the value of ${name ?? "a query parameter"} ${ENCODING_RULE}`);
    }
    if (name === undefined) refuse(field, "has a query parameter whose name is not a word");
    if (!URL_PARAMS.includes(key)) {
      const hint = INSTEAD[key] ??
        "a PostgreSQL setting goes in the 'session' setting or in 'options=-c name=value'";
      refuse(
        field,
        `has query parameter ${name}, which pg and dbx ignore (${hint}; accepted: ${
          URL_PARAMS.join(", ")
        })`,
      );
    }
    params.set(key, decoded(rawValue));
  }
  if (!hosts.includes(",")) checkHostParams(field, hosts, params);
}

/**
 * `host=`, `hostaddr=` and `port=` may fill in what the URL's authority
 * leaves out, never contradict it: pg would connect to the parameter's
 * server while dbx names (and routes to) the authority's.
 */
function checkHostParams(field: string, entry: string, params: Map<string, string>): void {
  const written = hostAndPort(entry);
  const host = decodeURIComponent(written.host);
  const hostParam = params.get("host");
  const target = host === "" ? hostParam ?? "" : host;
  if (hostParam !== undefined && host !== "" && hostParam.toLowerCase() !== host.toLowerCase()) {
    refuse(
      field,
      `has parameter 'host' (${hostParam}) that disagrees with the URL's host (${host}): pg would connect to ${hostParam}; give the host once`,
    );
  }
  const hostaddr = params.get("hostaddr");
  if (hostaddr !== undefined && hostaddr.toLowerCase() !== target.toLowerCase()) {
    refuse(
      field,
      `has parameter 'hostaddr' (${hostaddr}) that disagrees with the URL's host (${
        target || "none"
      }): pg ignores 'hostaddr' and would connect to the host; give the address as the host`,
    );
  }
  const portParam = params.get("port");
  if (portParam === undefined) return;
  const portNumber = Number(portParam);
  if (!/^\d{1,5}$/.test(portParam) || portNumber < 1 || portNumber > 65535) {
    refuse(field, `has parameter 'port' (${portParam}) that is not a port from 1 to 65535`);
  }
  if (written.port !== undefined && written.port !== "" && Number(written.port) !== portNumber) {
    refuse(
      field,
      `has parameter 'port' (${portParam}) that disagrees with the URL's port (${written.port}): pg would connect to port ${portParam}; give the port once`,
    );
  }
}
