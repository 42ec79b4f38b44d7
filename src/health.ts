/**
 * The background health checker: probes every node each `intervalMs` on a
 * dedicated connection (so a saturated pool cannot make a healthy node look
 * dead), learns each node's role from `pg_is_in_recovery()` and its WAL
 * position, and swaps an immutable {@linkcode Topology} snapshot after each
 * round. The query path marks a node down at once on a connection error; a
 * node only comes back after a successful probe.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import type { HealthCheckConfig } from "./config.ts";
import { DbxError } from "./errors.ts";
import type { Node, ProbeSample } from "./node.ts";
import { callHook, type Logger, type MetricsHook } from "./observe.ts";

/**
 * Who is primary and who is a replica, as of the last check round.
 * Replaced whole, never mutated, so a routing decision sees one consistent
 * view.
 */
export interface Topology {
  /** The one node reporting primary, when exactly one healthy node does. */
  readonly primary: Node | undefined;
  /** Nodes reporting recovery (read replicas), in config order. */
  readonly replicas: readonly Node[];
  /** Healthy nodes that all claim to be primary: writes are refused while there are two or more. */
  readonly primaries: readonly Node[];
}

/** One probe: role, WAL position and replay age in a single round trip. */
const PROBE_SQL = `select pg_is_in_recovery() as recovery,
  (case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end)::text as lsn,
  (extract(epoch from now() - pg_last_xact_replay_timestamp()) * 1000)::float8 as replay_age_ms`;

/** Parses a `pg_lsn` text (`16/B374D848`) into a comparable number. */
export function parseLsn(text: string | null | undefined): bigint | undefined {
  if (typeof text !== "string") return undefined;
  const slash = text.indexOf("/");
  if (slash < 0) return undefined;
  try {
    return (BigInt(`0x${text.slice(0, slash)}`) << 32n) | BigInt(`0x${text.slice(slash + 1)}`);
  } catch {
    return undefined;
  }
}

/** A probe that got no answer in time: the host is hung or unreachable, not refusing. */
class ProbeTimeoutError extends DbxError {}

/** The protocol's Terminate message ('X', length 4). */
const TERMINATE = new Uint8Array([0x58, 0, 0, 0, 4]);

/** The parts of pg's Client that a forced close needs and its types leave out. */
interface RawClient {
  _ended: boolean;
  _connected: boolean;
  _queryable: boolean;
  readyForQuery: boolean;
  connection: {
    once(event: "end", listener: () => void): void;
    stream: { write(data: Uint8Array, cb: () => void): void; destroy(): void };
  };
}

/** A dedicated, lazily (re)connected probe connection to one node. */
class Prober {
  readonly #node: Node;
  #client: pg.Client | undefined;

  constructor(node: Node) {
    this.#node = node;
  }

  /** Probes once, bounded by `timeoutMs` from connect to answer. */
  async probe(timeoutMs: number): Promise<ProbeSample> {
    const start = performance.now();
    let client = this.#client;
    let timedOut = false;
    let settled = false;
    let grace: ReturnType<typeof setTimeout> | undefined;
    const timer = setTimeout(() => {
      // A timer can fire late because this process was busy (a long
      // synchronous loop), with the answer already waiting in the socket.
      // One more turn of the event loop lets that answer through before the
      // host is declared hung.
      grace = setTimeout(() => {
        if (settled) return;
        timedOut = true;
        // Destroying the socket makes the pending connect or query fail now.
        this.#discard();
      }, 0);
    }, timeoutMs);
    try {
      if (client === undefined) {
        client = new pg.Client({
          connectionString: this.#node.url,
          connectionTimeoutMillis: timeoutMs,
          fallback_application_name: "dbx-health",
        });
        const c = client;
        this.#client = c;
        // A probe connection that dies while idle is simply replaced next round.
        c.on("error", () => {
          if (this.#client === c) this.#discard();
        });
        await c.connect();
      }
      const { rows } = await client.query(PROBE_SQL);
      const row = rows[0] as {
        recovery: boolean;
        lsn: string | null;
        replay_age_ms: number | null;
      };
      return {
        role: row.recovery ? "replica" : "primary",
        latencyMs: performance.now() - start,
        lsn: parseLsn(row.lsn),
        replayAgeMs: row.recovery && row.replay_age_ms !== null
          ? Math.max(0, row.replay_age_ms)
          : undefined,
        at: performance.now(),
      };
    } catch (err) {
      this.#discard();
      if (timedOut) {
        throw new ProbeTimeoutError(
          `health probe timed out after ${timeoutMs} ms (node ${this.#node.name})`,
          {
            kind: "connection",
            node: this.#node.name,
            cause: err,
          },
        );
      }
      throw this.#node.wrap(err);
    } finally {
      settled = true;
      clearTimeout(timer);
      clearTimeout(grace);
    }
  }

  #ending: Promise<void>[] = [];

  /**
   * Drops the current connection. The socket is cut rather than ended:
   * pg's `end()` during a pending connect leaves that connect unsettled
   * forever, and a graceful close waits for a server that may never answer.
   * An idle connection still gets a Terminate message first.
   */
  #discard(): void {
    const c = this.#client as unknown as RawClient | undefined;
    if (c === undefined) return;
    this.#client = undefined;
    if (c._ended) return;
    const conn = c.connection;
    this.#ending.push(new Promise<void>((resolve) => conn.once("end", resolve)));
    const idle = c._connected && c._queryable && c.readyForQuery === true;
    if (idle) conn.stream.write(TERMINATE, () => conn.stream.destroy());
    else conn.stream.destroy();
  }

  /** Closes the probe connection and waits for every discarded one to be gone. */
  async close(): Promise<void> {
    this.#discard();
    const ending = this.#ending;
    this.#ending = [];
    await Promise.all(ending);
  }
}

/** Settings the checker needs from the cluster. */
export interface CheckerOptions {
  readonly healthCheck: Required<HealthCheckConfig>;
  readonly logger: Logger;
  readonly metrics: MetricsHook | undefined;
}

/**
 * Computes a topology from the nodes' current roles and health.
 *
 * @param nodes Every node, config order.
 * @returns A fresh snapshot.
 */
export function topologyOf(nodes: readonly Node[]): Topology {
  const primaries = nodes.filter((n) => n.role === "primary" && n.healthy);
  return {
    primary: primaries.length === 1 ? primaries[0] : undefined,
    replicas: nodes.filter((n) => n.role === "replica"),
    primaries,
  };
}

/** Probes every node on a timer and keeps the topology snapshot current. */
export class HealthChecker {
  readonly #nodes: readonly Node[];
  readonly #probers: Map<Node, Prober>;
  readonly #options: CheckerOptions;
  #topology: Topology;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #round: Promise<void> | undefined;
  #pending = new Set<Promise<void>>();
  #stopped = false;

  /**
   * Creates a checker; nothing runs until {@linkcode start} or {@linkcode checkAll}.
   *
   * @param nodes Every node of the cluster.
   * @param options Interval, timeout, failure threshold and hooks.
   */
  constructor(nodes: readonly Node[], options: CheckerOptions) {
    this.#nodes = nodes;
    this.#options = options;
    this.#probers = new Map(nodes.map((n) => [n, new Prober(n)]));
    this.#topology = topologyOf(nodes);
  }

  /** The snapshot of the last round. */
  get topology(): Topology {
    return this.#topology;
  }

  /** Starts probing every `intervalMs` (the first round after one interval). */
  start(): void {
    if (this.#stopped || this.#timer !== undefined) return;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#track(this.checkAll().then(() => this.#schedule()));
    }, this.#options.healthCheck.intervalMs);
  }

  #track(p: Promise<void>): void {
    const tracked = p.catch((err) => {
      this.#options.logger.error("dbx: health check round failed", { error: err });
    }).finally(() => this.#pending.delete(tracked));
    this.#pending.add(tracked);
  }

  /**
   * Probes every node now. Concurrent callers share one round.
   *
   * @returns Resolves when the round is done and the snapshot swapped.
   */
  checkAll(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    const now = performance.now();
    // A node that keeps failing is probed less and less often (circuit
    // breaking): no hammering of a dead host every interval.
    this.#round ??= Promise.all(
      this.#nodes.map((n) => n.healthy || now >= n.nextProbeAt ? this.#check(n) : undefined),
    ).then(() => {
      this.#round = undefined;
      this.#refresh();
    });
    return this.#round;
  }

  /**
   * Probes one node now, in the background (used right after the query path
   * marked it down, so a transient failure does not keep it out a whole
   * interval).
   *
   * @param node The node to re-probe.
   */
  recheck(node: Node): void {
    if (this.#stopped) return;
    this.#track(this.#check(node).then(() => this.#refresh()));
  }

  async #check(node: Node): Promise<void> {
    const { timeoutMs, failuresBeforeDown } = this.#options.healthCheck;
    try {
      const sample = await this.#probers.get(node)!.probe(timeoutMs);
      if (this.#stopped) return;
      node.lastProbe = sample;
      node.probeFailures = 0;
      if (node.role !== sample.role) {
        const from = node.role;
        node.role = sample.role;
        this.#options.logger.info("dbx: node changed role", {
          node: node.name,
          from,
          to: sample.role,
        });
        callHook(this.#options.logger, this.#options.metrics, "onRoleChange", {
          node: node.name,
          from,
          to: sample.role,
        });
      }
      if (!node.healthy) {
        node.healthy = true;
        node.lastError = undefined;
        this.#options.logger.info("dbx: node is up", { node: node.name, role: node.role });
        callHook(this.#options.logger, this.#options.metrics, "onNodeUp", {
          node: node.name,
          role: node.role,
        });
      }
    } catch (err) {
      if (this.#stopped) return;
      node.probeFailures++;
      node.nextProbeAt = performance.now() + this.#probeBackoff(node.probeFailures);
      if (node.probeFailures < failuresBeforeDown) return;
      this.markDown(node, err, false);
      // A hung host never answers the statements already sent to it either:
      // cut them, so reads move on to another node instead of waiting.
      if (err instanceof ProbeTimeoutError) node.cutConnections();
    }
  }

  /**
   * Delay before probing a failing node again: doubling per consecutive
   * failure from one interval, capped at ten intervals (and 30 s), with
   * equal jitter so many clients do not probe in step.
   */
  #probeBackoff(failures: number): number {
    const { intervalMs } = this.#options.healthCheck;
    const cap = Math.max(intervalMs, Math.min(intervalMs * 10, 30_000));
    const ceiling = Math.min(cap, intervalMs * 2 ** Math.min(failures - 1, 30));
    return ceiling / 2 + (Math.random() * ceiling) / 2;
  }

  /**
   * Marks a node down at once (query path or probe). Does nothing if it is
   * already down. It comes back only after a successful probe.
   *
   * @param node The failing node.
   * @param err Why.
   * @param recheck Schedule an immediate re-probe. @default true
   */
  markDown(node: Node, err: unknown, recheck = true): void {
    if (!node.healthy) return;
    node.healthy = false;
    node.lastError = err;
    this.#options.logger.warn("dbx: node is down", {
      node: node.name,
      role: node.role,
      error: err instanceof Error ? err.message : String(err),
    });
    callHook(this.#options.logger, this.#options.metrics, "onNodeDown", {
      node: node.name,
      role: node.role,
      error: err,
    });
    this.#refresh();
    if (!recheck || this.#stopped) return;
    // Losing the primary may mean a failover: learn every node's role now.
    if (node.role === "primary") this.#track(this.checkAll());
    else this.recheck(node);
  }

  /** Swaps the snapshot if roles or primary health changed. */
  #refresh(): void {
    const next = topologyOf(this.#nodes);
    const cur = this.#topology;
    if (
      next.primary !== cur.primary || next.primaries.length !== cur.primaries.length ||
      next.replicas.length !== cur.replicas.length ||
      next.replicas.some((n, i) => cur.replicas[i] !== n)
    ) {
      if (next.primaries.length > 1) {
        this.#options.logger.error("dbx: more than one node reports primary; refusing writes", {
          nodes: next.primaries.map((n) => n.name),
        });
      }
      this.#topology = next;
    }
  }

  /**
   * Stops the timer, waits for running probes and closes probe connections.
   * Idempotent.
   */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    // Closing the probers first makes a probe stuck on a dead host fail now.
    await Promise.all([...this.#probers.values()].map((p) => p.close()));
    while (this.#pending.size > 0 || this.#round !== undefined) {
      await Promise.all([...this.#pending, this.#round]);
    }
    await Promise.all([...this.#probers.values()].map((p) => p.close()));
  }
}
