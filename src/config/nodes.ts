/**
 * The servers of a config: `master` + `replicas` or `nodes` (exactly one
 * form), each entry expanded into one node per host of its (multi-host) URL,
 * checked for duplicates, and libpq's `target_session_attrs` /
 * `load_balance_hosts` turned into what `connect()` waits for and how reads
 * are spread.
 *
 * @module
 */

import { type Balancer, latencyAware, random } from "../call/balancer.ts";
import type {
  ClusterConfig,
  NodeConfig,
  PoolConfig,
  ResolvedNode,
  WithDefaults,
} from "./config.ts";
import { redactUrl } from "./redact.ts";
import { checkMethods, checkTracer, fail, flag, plainObject, resolvePool } from "./check.ts";
import { KNOWN, onlyKnownKeys } from "./keys.ts";
import { parseOptions, resolveSession } from "./session.ts";
import { checkUrl } from "./url.ts";
import { ConfigError } from "../errors.ts";
import {
  type LoadBalanceHosts,
  parseMultiHostUrl,
  queryParams,
  type TargetSessionAttrs,
} from "./multi_host.ts";
import type { NodeRole, Tracer } from "../observe/observe.ts";
import { resolveSsl } from "./tls.ts";
import { checkPassword, type Password } from "./password.ts";

/** libpq's cluster-wide parameters, as found in the URLs, with the field each came from. */
interface LibpqParams {
  targetSessionAttrs?: { value: TargetSessionAttrs; field: string };
  loadBalanceHosts?: { value: LoadBalanceHosts; field: string };
}

function collect<K extends keyof LibpqParams>(
  params: LibpqParams,
  key: K,
  name: string,
  value: NonNullable<LibpqParams[K]>["value"] | undefined,
  field: string,
): void {
  if (value === undefined) return;
  const seen = params[key];
  if (seen !== undefined && seen.value !== value) {
    fail(field, `parameter '${name}' must agree with '${seen.field}' (${seen.value})`, value);
  }
  params[key] = { value, field } as LibpqParams[K];
}

/** What a node takes from the cluster-wide settings unless it sets its own. */
interface ClusterWide {
  readonly pool: WithDefaults<PoolConfig>;
  readonly tracer: Tracer | undefined;
  readonly session: Readonly<Record<string, string>>;
  readonly password: Password | undefined;
}

/** One config entry (a URL or a NodeConfig), as one node per host of its URL. */
function resolveNode(
  field: string,
  raw: unknown,
  role: NodeRole,
  cluster: ClusterWide,
  params: LibpqParams,
): ResolvedNode[] {
  const spec: Record<string, unknown> = typeof raw === "string"
    ? { url: raw }
    : plainObject(field, raw);
  if (raw === undefined || raw === null) {
    fail(field, "must be a connection string or a NodeConfig", raw);
  }
  if (typeof raw !== "string") onlyKnownKeys(field, spec, KNOWN.node);
  const urlField = typeof raw === "string" ? field : `${field}.url`;
  const url = spec.url;
  if (typeof url !== "string" || url.trim() === "") {
    fail(urlField, "must be a non-empty postgres:// connection string", url);
  }
  checkUrl(urlField, url);
  const multi = parseMultiHostUrl(url, urlField);
  collect(params, "targetSessionAttrs", "target_session_attrs", multi.targetSessionAttrs, urlField);
  collect(params, "loadBalanceHosts", "load_balance_hosts", multi.loadBalanceHosts, urlField);
  const many = multi.hosts.length > 1;
  if (many && spec.name !== undefined) {
    fail(
      `${field}.name`,
      "cannot name the nodes of a multi-host URL (each is named host:port)",
      spec.name,
    );
  }
  const nodeTracer = spec.tracer;
  if (nodeTracer !== undefined) checkTracer(`${field}.tracer`, nodeTracer);
  const nodePool = resolvePool(`${field}.pool`, spec.pool, cluster.pool);
  const password = checkPassword(`${field}.password`, spec.password) ?? cluster.password;
  const nodeSession = resolveSession(`${field}.session`, spec.session);
  const options = queryParams(url).get("options");
  // The URL's settings first, then the cluster's, then the node's: the config wins.
  const merged = Object.freeze({
    ...(options === undefined ? {} : parseOptions(urlField, options)),
    ...cluster.session,
    ...nodeSession,
  });
  return multi.hosts.map((h) => {
    const { ssl, url: pgUrl } = resolveSsl(field, spec.ssl as NodeConfig["ssl"], h.url, urlField);
    let parsed: URL;
    try {
      parsed = new URL(pgUrl);
    } catch {
      fail(
        urlField,
        "must be a valid postgres:// connection string (check the port: digits only; percent-encode '@', ':' and '/' in the user and password)",
        redactUrl(url),
      );
    }
    if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
      fail(urlField, "must use the postgres:// or postgresql:// scheme", redactUrl(url));
    }
    // URL keeps the brackets of an IPv6 literal; sockets want the bare address.
    const host = decodeURIComponent(parsed.hostname).replace(/^\[(.*)\]$/, "$1") ||
      parsed.searchParams.get("host") || "";
    if (host === "") fail(urlField, "must name a host", redactUrl(url));
    // A URL without a port may give it as a parameter (checked in url.ts).
    const port = Number(parsed.port || parsed.searchParams.get("port") || 5432);
    const name = spec.name ?? `${host.includes(":") ? `[${host}]` : host}:${port}`;
    if (typeof name !== "string" || name.trim() === "") {
      fail(`${field}.name`, "must be a non-empty string", name);
    }
    const node = {
      name,
      url: pgUrl,
      redactedUrl: redactUrl(pgUrl),
      host,
      port,
      configuredRole: many ? "unknown" : role,
      pool: nodePool,
      tracer: (nodeTracer as Tracer | undefined) ?? cluster.tracer,
      ssl,
      session: merged,
    } as const;
    // Not enumerable, as pg does: printing or serialising a node shows no password.
    return Object.defineProperty(node, "password", { value: password, enumerable: false }) as
      & typeof node
      & Pick<ResolvedNode, "password">;
  });
}

/**
 * The servers of a config, from `master` + `replicas` or from `nodes`
 * (exactly one form), each with the field it came from.
 */
function resolveNodes(
  c: Partial<ClusterConfig>,
  pool: WithDefaults<PoolConfig>,
  tracer: Tracer | undefined,
  params: LibpqParams,
): { nodes: ResolvedNode[]; fields: string[] } {
  const nodes: ResolvedNode[] = [];
  const fields: string[] = [];
  const cluster: ClusterWide = {
    pool,
    tracer,
    session: resolveSession("session", c.session),
    password: checkPassword("password", c.password),
  };
  const add = (field: string, raw: unknown, role: NodeRole) => {
    for (const node of resolveNode(field, raw, role, cluster, params)) {
      nodes.push(node);
      fields.push(field);
    }
  };
  if (c.nodes !== undefined) {
    for (const other of ["master", "replicas"] as const) {
      if (c[other] !== undefined) {
        throw new ConfigError(
          other,
          `Cannot connect: give either 'nodes' or 'master' (with 'replicas'), not both: '${other}' is set next to 'nodes'`,
        );
      }
    }
    if (!Array.isArray(c.nodes) || c.nodes.length === 0) {
      fail("nodes", "must be a non-empty array of connection strings or NodeConfigs", c.nodes);
    }
    c.nodes.forEach((n, i) => add(`nodes[${i}]`, n, "unknown"));
    return { nodes, fields };
  }
  if (c.master === undefined || c.master === "") {
    const rule = "must be a non-empty postgres:// connection string";
    fail("master", c.master === undefined ? `${rule} (or give 'nodes')` : rule, c.master);
  }
  add("master", c.master, "primary");
  const replicas = c.replicas ?? [];
  if (!Array.isArray(replicas)) fail("replicas", "must be an array", replicas);
  replicas.forEach((r, i) => add(`replicas[${i}]`, r, "replica"));
  return { nodes, fields };
}

/**
 * What `connect()` waits for and how reads are spread, from the config and
 * libpq's `target_session_attrs` / `load_balance_hosts`; a URL contradicting
 * an explicit setting is an error, not a silent choice.
 */
function sessionTarget(
  c: Partial<ClusterConfig>,
  params: LibpqParams,
): { requirePrimary: boolean; requireStandby: boolean; balancer: Balancer } {
  const explicit = flag("requirePrimary", c.requirePrimary, true);
  const attrs = params.targetSessionAttrs;
  let requirePrimary = explicit;
  let requireStandby = false;
  if (attrs !== undefined) {
    requirePrimary = attrs.value === "read-write" || attrs.value === "primary";
    requireStandby = attrs.value === "standby" || attrs.value === "read-only";
    if (c.requirePrimary !== undefined && c.requirePrimary !== requirePrimary) {
      fail(
        "requirePrimary",
        `contradicts 'target_session_attrs=${attrs.value}' in '${attrs.field}'`,
        c.requirePrimary,
      );
    }
  }
  const lb = params.loadBalanceHosts;
  if (lb?.value === "random" && c.balancer !== undefined) {
    fail("balancer", `contradicts 'load_balance_hosts=random' in '${lb.field}'`, c.balancer);
  }
  if (c.balancer !== undefined) checkMethods("balancer", c.balancer, ["pick"]);
  const balancer = c.balancer ?? (lb?.value === "random" ? random() : latencyAware());
  return { requirePrimary, requireStandby, balancer };
}

/** Stable identity of a server for duplicate detection: host, port, database and user. */
function identity(node: ResolvedNode): string {
  const u = new URL(node.url);
  return `${node.host.toLowerCase()}:${node.port}/${decodeURIComponent(u.pathname.slice(1))}@${
    decodeURIComponent(u.username)
  }`;
}

/**
 * The nodes of a config, with what `connect()` waits for and the replica balancer.
 *
 * @param c The user's config.
 * @param pool Cluster-wide pool settings, with defaults.
 * @param tracer The cluster's tracer.
 * @returns Every node (config order), `requirePrimary`, `requireStandby` and the balancer.
 * @throws {ConfigError} naming the first invalid field.
 */
export function resolveTopology(
  c: Partial<ClusterConfig>,
  pool: WithDefaults<PoolConfig>,
  tracer: Tracer | undefined,
): {
  nodes: ResolvedNode[];
  requirePrimary: boolean;
  requireStandby: boolean;
  balancer: Balancer;
} {
  const params: LibpqParams = {};
  const { nodes, fields } = resolveNodes(c, pool, tracer, params);
  const names = new Map<string, number>();
  const ids = new Map<string, number>();
  nodes.forEach((node, i) => {
    const field = fields[i]!;
    const sameId = ids.get(identity(node));
    if (sameId !== undefined) {
      fail(field, `must not repeat node ${nodes[sameId]!.name}`, node.redactedUrl);
    }
    ids.set(identity(node), i);
    if (names.has(node.name)) fail(`${field}.name`, "must be unique across nodes", node.name);
    names.set(node.name, i);
  });
  return { nodes, ...sessionTarget(c, params) };
}
