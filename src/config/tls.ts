/**
 * TLS per node: the `ssl` setting of a {@linkcode NodeConfig} (pg's `ssl`
 * option), its eager validation, and how it agrees with the URL's own TLS
 * parameters (`sslmode`, `sslrootcert`, ...). Certificates and keys are
 * never shown: errors name the field and the type of the bad value only.
 *
 * @module
 */

import type { NodeConfig } from "./config.ts";
import { sessionOptions } from "./session.ts";
import { ConfigError } from "../errors.ts";
import { queryParams, withoutParams } from "./multi_host.ts";
import { askPassword, type Password } from "./password.ts";

/** PEM text or bytes, or a list of them (pg and `node:tls` accept each form). */
export type Pem = string | Uint8Array | readonly (string | Uint8Array)[];

/**
 * TLS settings of a node: the part of pg's `ssl` option (`node:tls`
 * connect options) that dbx checks and passes on.
 *
 * @example Verify the server against a private CA
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * const ca = await Deno.readTextFile("/etc/db/ca.pem");
 * await using cluster = await connect({
 *   master: { url: "postgres://app@db1.internal:5432/app", ssl: { ca } },
 *   replicas: [{ url: "postgres://app@db2.internal:5432/app", ssl: { ca } }],
 * });
 * ```
 */
export interface SslConfig {
  /** Certificate authorities to trust instead of the system's (PEM). @default the system's */
  ca?: Pem | undefined;
  /** Client certificate chain, for certificate authentication (PEM). @default undefined */
  cert?: Pem | undefined;
  /** Private key of the client certificate (PEM). Never logged. @default undefined */
  key?: Pem | undefined;
  /** Refuse a server whose certificate does not verify. @default true */
  rejectUnauthorized?: boolean | undefined;
  /** Name checked against the server certificate (SNI), when the URL's host is not it. @default the URL's host */
  servername?: string | undefined;
}

/** The keys {@linkcode SslConfig} accepts. */
export const SSL_KEYS: readonly (keyof SslConfig)[] = [
  "ca",
  "cert",
  "key",
  "rejectUnauthorized",
  "servername",
];

/** The `sslmode` values pg understands (libpq's `allow` it does not). */
const SSL_MODES = ["disable", "prefer", "require", "verify-ca", "verify-full", "no-verify"];

/** URL parameters through which pg reads certificate files or turns TLS on. */
const URL_TLS_FILES = ["sslrootcert", "sslcert", "sslkey", "ssl"];

function fail(field: string, rule: string, shown: string): never {
  throw new ConfigError(field, `Cannot connect: '${field}' ${rule}: current value is ${shown}`);
}

/** The type of a value, never its content (a certificate or key must not reach a log). */
function typeOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  if (typeof value === "string") return `a string of ${value.length} characters`;
  return `a ${typeof value}`;
}

function pem(field: string, value: unknown): Pem | undefined {
  if (value === undefined) return undefined;
  const one = (v: unknown) => (typeof v === "string" && v.trim() !== "") || v instanceof Uint8Array;
  if (Array.isArray(value)) {
    const bad = value.findIndex((v) => !one(v));
    if (bad !== -1 || value.length === 0) {
      fail(
        bad === -1 ? field : `${field}[${bad}]`,
        "must be PEM text or bytes (a non-empty string or Uint8Array, or a non-empty array of them)",
        typeOf(bad === -1 ? value : value[bad]),
      );
    }
    return [...value] as (string | Uint8Array)[];
  }
  if (!one(value)) {
    fail(
      field,
      "must be PEM text or bytes (a non-empty string or Uint8Array, or a non-empty array of them)",
      typeOf(value),
    );
  }
  return value as Pem;
}

/**
 * Validates a node's `ssl` against the node's URL and returns what pg gets:
 * the `ssl` value (a fresh object whose `key` is not enumerable, as pg does,
 * so printing it does not show the key) and the URL to hand to pg. With
 * `ssl` set, the URL's `sslmode` must agree with it and is then removed (pg
 * would otherwise replace the `ssl` object with one built from the URL), and
 * certificate files in the URL (`sslrootcert`, `sslcert`, `sslkey`) are
 * refused: the certificates come from one place.
 *
 * @param field The node's field, e.g. `replicas[0]`.
 * @param value The `ssl` setting.
 * @param url The node's (single-host) URL.
 * @param urlField The URL's field, for errors about it.
 * @returns The checked `ssl` (undefined when not set) and the URL for pg.
 * @throws {ConfigError} naming the field (e.g. `replicas[0].ssl.ca`) and the type of the bad value.
 */
export function resolveSsl(
  field: string,
  value: NodeConfig["ssl"] | undefined,
  url: string,
  urlField: string,
): { ssl: boolean | SslConfig | undefined; url: string } {
  const params = queryParams(url);
  const mode = params.get("sslmode");
  if (mode !== undefined && !SSL_MODES.includes(mode)) {
    fail(
      urlField,
      `parameter 'sslmode' must be one of ${
        SSL_MODES.join(", ")
      } (pg does not support libpq's 'allow')`,
      JSON.stringify(mode),
    );
  }
  if (value === undefined) return { ssl: undefined, url };
  const sslField = `${field}.ssl`;
  const fromUrl = URL_TLS_FILES.find((k) => params.has(k));
  if (fromUrl !== undefined) {
    fail(
      urlField,
      `must not set parameter '${fromUrl}' when '${sslField}' is given (TLS settings come from one place)`,
      `'${fromUrl}=' with '${sslField}'`,
    );
  }
  let ssl: boolean | SslConfig;
  if (typeof value === "boolean") {
    ssl = value;
  } else {
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      fail(sslField, "must be a boolean or an object (pg's ssl options)", typeOf(value));
    }
    const raw = value as Record<string, unknown>;
    for (const key of Object.keys(raw)) {
      if (!(SSL_KEYS as readonly string[]).includes(key)) {
        throw new ConfigError(
          `${sslField}.${key}`,
          `Cannot connect: '${sslField}.${key}' is not a known setting (known settings: ${
            SSL_KEYS.join(", ")
          })`,
        );
      }
    }
    const { rejectUnauthorized, servername } = raw;
    if (rejectUnauthorized !== undefined && typeof rejectUnauthorized !== "boolean") {
      fail(`${sslField}.rejectUnauthorized`, "must be a boolean", typeOf(rejectUnauthorized));
    }
    if (servername !== undefined && (typeof servername !== "string" || servername === "")) {
      fail(`${sslField}.servername`, "must be a non-empty string", typeOf(servername));
    }
    const out: SslConfig = {};
    const ca = pem(`${sslField}.ca`, raw.ca);
    const cert = pem(`${sslField}.cert`, raw.cert);
    const key = pem(`${sslField}.key`, raw.key);
    if ((cert === undefined) !== (key === undefined)) {
      fail(
        `${sslField}.${cert === undefined ? "cert" : "key"}`,
        `must be given with '${sslField}.${
          cert === undefined ? "key" : "cert"
        }' (a client certificate needs its key)`,
        "undefined",
      );
    }
    if (ca !== undefined) out.ca = ca;
    if (cert !== undefined) out.cert = cert;
    if (rejectUnauthorized !== undefined) out.rejectUnauthorized = rejectUnauthorized as boolean;
    if (servername !== undefined) out.servername = servername as string;
    if (key !== undefined) Object.defineProperty(out, "key", { value: key, enumerable: false });
    ssl = out;
  }
  if (mode !== undefined) {
    const on = ssl !== false;
    if ((mode === "disable") === on) {
      fail(
        urlField,
        `parameter 'sslmode=${mode}' contradicts '${sslField}' (${on ? "TLS on" : "false"})`,
        JSON.stringify(mode),
      );
    }
    if (mode === "no-verify" && (typeof ssl !== "object" || ssl.rejectUnauthorized !== false)) {
      fail(
        urlField,
        `parameter 'sslmode=no-verify' needs '${sslField}.rejectUnauthorized: false'`,
        JSON.stringify(mode),
      );
    }
    const verifying = mode === "require" || mode === "verify-ca" || mode === "verify-full";
    if (verifying && typeof ssl === "object" && ssl.rejectUnauthorized === false) {
      fail(
        urlField,
        `parameter 'sslmode=${mode}' contradicts '${sslField}.rejectUnauthorized: false' (the URL asks for a verified server, the setting turns verification off; use 'sslmode=no-verify' to mean it)`,
        JSON.stringify(mode),
      );
    }
  }
  return { ssl, url: withoutParams(url, ["sslmode"]) };
}

/**
 * What pg needs to reach a node: its URL and, when set, its TLS settings,
 * session settings and password.
 */
export interface PgTarget {
  /** The connection string handed to pg (no password is ever shown from it). */
  readonly connectionString: string;
  /** pg's `ssl` option, when the node has one. */
  readonly ssl?: boolean | SslConfig | undefined;
  /** pg's `options` startup parameter (`-c name=value ...`), when the node has session settings. */
  readonly options?: string | undefined;
  /**
   * Asks the node's configured password, when it has one (winning over the
   * URL's). Not enumerable: spreading a target into pg's options leaves it
   * out, since pg lets the URL's password replace that option; it is given
   * to each client once built (`usePassword` in `node/pg_internals.ts`).
   */
  readonly password?: (() => Promise<string>) | undefined;
}

/**
 * The pg options every connection to a node starts from (pool, pipelined
 * connections, health probes, LISTEN), so TLS, session settings and the
 * password apply to each of them. pg lets a connection string's `options` replace the `options`
 * field, so with session settings (which already hold the URL's) the URL
 * loses its `options` and the field carries them all.
 *
 * @param node The node's name and resolved URL, TLS, session settings and password.
 * @returns `connectionString` and, when set, `ssl`, `options` and `password`.
 */
export function pgTarget(
  node: {
    readonly name: string;
    readonly url: string;
    readonly ssl: boolean | SslConfig | undefined;
    readonly session?: Readonly<Record<string, string>>;
    readonly password?: Password | undefined;
  },
): PgTarget {
  const options = node.session === undefined ? "" : sessionOptions(node.session);
  const target: PgTarget = {
    connectionString: options === "" ? node.url : withoutParams(node.url, ["options"]),
    ...(node.ssl === undefined ? {} : { ssl: node.ssl }),
    ...(options === "" ? {} : { options }),
  };
  if (node.password === undefined) return target;
  return Object.defineProperty(target, "password", {
    value: askPassword(node.name, node.password),
    enumerable: false,
  });
}
