/**
 * What `connect()` waits for before it resolves (a primary; a replica with
 * `target_session_attrs=standby`; any node with `requirePrimary: false`;
 * every node with `requireAllNodes`), probing every node with retry and
 * backoff, and why it gives up: the nodes that did not answer and what they
 * said. Failures no retry can fix (a certificate that does not verify, a
 * refused login, a database that does not exist) stop it at once. A start on
 * part of the cluster is reported: without a logger, by `console.warn`.
 *
 * @module
 */

import type { ResolvedConfig } from "../config/config.ts";
import { DbxError, NoHealthyNodeError } from "../errors.ts";
import { pgErrorCode, walk } from "../failure.ts";
import type { HealthChecker, Topology } from "../node/health.ts";
import type { Node } from "../node/node.ts";
import { backoffDelay, delay } from "../call/retry.ts";

/**
 * Probes every node until what `connect()` needs has answered, with the
 * retry policy's attempts and backoff.
 *
 * @param checker The cluster's health checker (not started yet).
 * @param nodes Every node.
 * @param config Retry policy, what must answer, whether to warn on the console.
 * @param assertOpen Throws when the cluster was closed meanwhile.
 * @throws {DbxError} at once when every node that did not answer refused for a
 * reason no retry fixes (see {@linkcode refusedNodes}).
 * @throws {NoHealthyNodeError} after the last attempt.
 */
export async function waitForStartup(
  checker: HealthChecker,
  nodes: readonly Node[],
  config: Pick<
    ResolvedConfig,
    "retry" | "requirePrimary" | "requireStandby" | "requireAllNodes" | "consoleWarnings"
  >,
  assertOpen: () => void,
): Promise<void> {
  const { maxAttempts, baseDelayMs, maxDelayMs } = config.retry;
  const { requirePrimary, requireStandby, requireAllNodes } = config;
  for (let attempt = 1;; attempt++) {
    await checker.checkAll();
    assertOpen();
    const topology = checker.topology;
    if (ready(nodes, topology, config) && (!requireAllNodes || nodes.every(answered))) break;
    // A certificate that does not verify or a refused login: no retry helps.
    const refused = refusedNodes(nodes);
    if (refused !== undefined) throw refused;
    if (attempt >= maxAttempts) {
      throw unreachable(
        nodes,
        topology,
        requireAllNodes ? "all" : requireStandby ? "standby" : requirePrimary ? "primary" : "any",
      );
    }
    await delay(backoffDelay(attempt, { baseDelayMs, maxDelayMs }));
  }
  if (!config.consoleWarnings) return;
  // With a logger, the checker's "dbx: node is down" says it; without one,
  // nothing would, and every read would quietly go to the primary.
  for (const n of nodes.filter((n) => !answered(n))) {
    const role = n.configuredRole === "unknown" ? "node" : n.configuredRole;
    console.warn(
      `dbx: ${role} ${n.name} did not answer at startup (${errorOf(n)}); the cluster started ` +
        "without it and keeps probing it. Pass a logger to get this as a log entry, " +
        "logger: noopLogger to silence it, or requireAllNodes: true to make connect() fail instead",
    );
  }
}

/** Whether a node answered its last probe. */
function answered(n: Node): boolean {
  return n.healthy && n.state.probe !== undefined;
}

/** Whether what `connect()` waits for by role has answered. */
function ready(
  nodes: readonly Node[],
  topology: Topology,
  config: Pick<ResolvedConfig, "requirePrimary" | "requireStandby">,
): boolean {
  // target_session_attrs=standby: a replica must answer; writes may wait.
  if (config.requireStandby) return nodes.some((n) => answered(n) && n.role === "replica");
  if (topology.primary?.state.probe !== undefined) return true;
  // Replicas only, on purpose: reads can start; writes wait for a primary.
  return !config.requirePrimary && nodes.some(answered);
}

/** `node:tls` / OpenSSL error codes of a certificate that does not verify, or TLS refused. */
const TLS_CODE = /CERT|SELF_SIGNED|UNABLE_TO_(VERIFY|GET)|^ERR_TLS|^ERR_SSL|^HOSTNAME_MISMATCH/;

/** Messages of a TLS setting the server cannot meet, or a login that cannot succeed. */
const SETUP_MESSAGES = [
  "The server does not support SSL connections",
  "password required",
  "self-signed certificate",
  "unable to verify",
  "certificate",
];

/**
 * Whether a node's failure is one of configuration or authentication, which
 * trying again cannot fix: TLS verification, SQLSTATE class 28 (login
 * refused), 3D000 (no such database).
 *
 * @param err A probe's failure.
 * @returns True when retrying is pointless.
 */
export function isSetupFailure(err: unknown): boolean {
  const code = pgErrorCode(err);
  if (code !== undefined) return code.startsWith("28") || code === "3D000";
  for (const e of walk(err)) {
    const sys = (e as { code?: unknown }).code;
    if (typeof sys === "string" && TLS_CODE.test(sys)) return true;
    const message = (e as { message?: unknown }).message;
    if (typeof message === "string" && SETUP_MESSAGES.some((m) => message.includes(m))) {
      return true;
    }
  }
  return false;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Why a node did not answer, as its last probe failure said. */
function errorOf(n: Node): string {
  return n.state.error === undefined ? "no answer" : messageOf(n.state.error);
}

/**
 * The error `connect()` stops with at once, when every node that did not
 * answer was refused for a reason no retry can fix; undefined otherwise.
 * A `DbxError` (kind `other`, the server's SQLSTATE when it sent one, so
 * `isRetryable` is false) naming each such node and its problem.
 *
 * @param nodes Every node, after a probe round.
 * @returns The error, or undefined when trying again may help.
 */
export function refusedNodes(nodes: readonly Node[]): DbxError | undefined {
  const down = nodes.filter((n) => !n.healthy);
  if (down.length === 0 || !down.every((n) => isSetupFailure(n.state.error))) return undefined;
  const errors = down.map((n) => n.state.error);
  return new DbxError(
    `Cannot connect: ${
      down.map((n) => {
        // Probe errors name their node already.
        const message = messageOf(n.state.error);
        return message.includes(n.name) ? message : `${n.name}: ${message}`;
      }).join("; ")
    }`,
    {
      kind: "other",
      code: pgErrorCode(errors[0]),
      ...(down.length === 1 ? { node: down[0]!.name } : {}),
      cause: down.length === 1 ? errors[0] : new AggregateError(errors),
    },
  );
}

/**
 * The error `connect()` gives up with after every attempt: which role no
 * node reported, and what each node that did not answer said.
 *
 * @param nodes Every node.
 * @param topology The last round's snapshot.
 * @param wanted The role `connect()` waited for, or `"all"` (`requireAllNodes`).
 * @returns A NoHealthyNodeError naming the nodes.
 */
export function unreachable(
  nodes: readonly Node[],
  topology: Topology,
  wanted: "primary" | "standby" | "any" | "all",
): NoHealthyNodeError {
  if (topology.primaries.length > 1) {
    return new NoHealthyNodeError(
      `refusing writes: ${topology.primaries.length} nodes report primary (${
        topology.primaries.map((n) => n.name).join(", ")
      })`,
    );
  }
  if (wanted === "all") {
    const silent = nodes.filter((n) => !answered(n));
    const causes = silent.flatMap((n) => n.state.error === undefined ? [] : [n.state.error]);
    return new NoHealthyNodeError(
      `not every node answered (requireAllNodes): ${
        silent.map((n) => `${n.name} did not answer (${errorOf(n)})`).join("; ")
      }`,
      causes.length === 0
        ? {}
        : { cause: causes.length === 1 ? causes[0] : new AggregateError(causes) },
    );
  }
  const down = nodes.filter((n) => !n.healthy);
  const what = wanted === "any" ? "no node answered" : `no node reports ${wanted}`;
  const causes = down.map((n) => n.state.error);
  return new NoHealthyNodeError(
    down.length === 0
      ? what
      : `${what}: ${down.map((n) => `${n.name} is down (${messageOf(n.state.error)})`).join("; ")}`,
    causes.length === 0
      ? {}
      : { cause: causes.length === 1 ? causes[0] : new AggregateError(causes) },
  );
}
