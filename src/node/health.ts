/**
 * The background health checker: probes every node each `intervalMs` on a
 * dedicated connection (so a saturated pool cannot make a healthy node look
 * dead), learns each node's role from `pg_is_in_recovery()` and its WAL
 * position, replaces each node's state snapshot and swaps an immutable
 * {@linkcode Topology} after each round. The query path marks a node down at
 * once on a lost connection; a node only comes back after a successful probe.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import { discardClient, usePassword } from "./pg_internals.ts";
import type { HealthCheckConfig, WithDefaults } from "../config/config.ts";
import { DbxError } from "../errors.ts";
import { pgErrorCode } from "../failure.ts";
import type { Node, NodeState, ProbeSample } from "./node.ts";
import type { Observer } from "../observe/observe.ts";
import { parseLsn, type RouteTopology } from "../call/route.ts";

/** The nodes by role, as the last round saw them. Replaced whole, never edited. */
export interface Topology extends RouteTopology<Node> {
  /** Healthy nodes that all claim to be primary: writes are refused while there are two or more. */
  readonly primaries: readonly Node[];
}

/** One probe: role, WAL position and replay age in a single round trip. */
const PROBE_SQL = `select pg_is_in_recovery() as recovery,
  (case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end)::text as lsn,
  (extract(epoch from now() - pg_last_xact_replay_timestamp()) * 1000)::float8 as replay_age_ms`;

/** What {@linkcode PROBE_SQL} returns. */
type ProbeRow = { recovery: boolean; lsn: string | null; replay_age_ms: number | null };

/**
 * Consecutive unanswered probes after which a node's connections are cut.
 * One late answer is what a busy machine looks like; two in a row, each a
 * full `timeoutMs` long, is a hung host whose statements would never end.
 */
const TIMEOUTS_BEFORE_CUT = 2;

/**
 * How long a node that went down is probed every round, before the probes
 * back off: a restart or a short outage is noticed within one interval.
 */
const EAGER_PROBING_MS = 30_000;

/** A probe that got no answer in time: the host is hung or unreachable, not refusing. */
class ProbeTimeoutError extends DbxError {}

/** A dedicated, lazily (re)connected probe connection to one node. */
class Prober {
  readonly #node: Node;
  #client: pg.Client | undefined;
  #ending: Promise<void>[] = [];

  constructor(node: Node) {
    this.#node = node;
  }

  /** Probes once, bounded by `timeoutMs` from connect to answer. */
  async probe(timeoutMs: number, seq: number): Promise<ProbeSample> {
    let timedOut = false;
    let settled = false;
    let grace: ReturnType<typeof setTimeout> | undefined;
    const timer = setTimeout(() => {
      // A timer can fire late because this process was busy, with the
      // answer already waiting in the socket: one more turn of the event
      // loop lets it through before the probe is declared unanswered.
      grace = setTimeout(() => {
        if (settled) return;
        timedOut = true;
        // Destroying the socket makes the pending connect or query fail now.
        this.#discard();
      }, 0);
    }, timeoutMs);
    try {
      let client = this.#client;
      if (client === undefined) {
        // No connectionTimeoutMillis: the probe's own timer bounds the
        // connect too, so an unanswered connect counts as a timeout.
        const c = client = this.#client = new pg.Client({
          ...this.#node.target as pg.ClientConfig,
          fallback_application_name: "dbx-health",
        });
        usePassword(c, this.#node.target);
        // A probe connection that dies while idle is simply replaced next round.
        c.on("error", () => {
          if (this.#client === c) this.#discard();
        });
        await c.connect();
      }
      const start = performance.now(); // after connecting: the query's round trip alone
      const row = (await client.query(PROBE_SQL)).rows[0] as ProbeRow;
      const latencyMs = performance.now() - start;
      this.#node.latency.probe(latencyMs, start + latencyMs);
      return {
        role: row.recovery ? "replica" : "primary",
        latencyMs,
        lsn: parseLsn(row.lsn),
        replayAgeMs: row.recovery && row.replay_age_ms !== null
          ? Math.max(0, row.replay_age_ms)
          : undefined,
        at: performance.now(),
        seq,
      };
    } catch (err) {
      this.#discard();
      if (timedOut) {
        throw new ProbeTimeoutError(
          `health probe timed out after ${timeoutMs} ms (node ${this.#node.name})`,
          { kind: "connection", node: this.#node.name, cause: err },
        );
      }
      throw this.#node.wrap(err);
    } finally {
      settled = true;
      clearTimeout(timer);
      clearTimeout(grace);
    }
  }

  /** Drops the current connection without waiting on the server. */
  #discard(): void {
    const c = this.#client;
    if (c === undefined) return;
    this.#client = undefined;
    const ended = discardClient(c);
    if (ended !== undefined) this.#ending.push(ended);
  }

  /** Closes the probe connection and waits for every discarded one to be gone. */
  async close(): Promise<void> {
    this.#discard();
    const ending = this.#ending;
    this.#ending = [];
    await Promise.all(ending);
  }
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

/** Probes every node on a timer and keeps the node states and the topology current. */
export class HealthChecker {
  readonly #nodes: readonly Node[];
  readonly #probers: Map<Node, Prober>;
  readonly #config: WithDefaults<HealthCheckConfig>;
  readonly #observer: Observer;
  #topology: Topology;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #round: Promise<void> | undefined;
  #pending = new Set<Promise<void>>();
  /** The probe in flight per node: concurrent re-checks share it (one failure, one probe). */
  readonly #probing = new Map<Node, Promise<void>>();
  #stopped = false;
  #seq = 0;

  /**
   * Creates a checker; nothing runs until {@linkcode start} or {@linkcode checkAll}.
   *
   * @param nodes Every node of the cluster.
   * @param config Interval, timeout and failure threshold.
   * @param observer Logger and hooks.
   */
  constructor(nodes: readonly Node[], config: WithDefaults<HealthCheckConfig>, observer: Observer) {
    this.#nodes = nodes;
    this.#config = config;
    this.#observer = observer;
    this.#probers = new Map(nodes.map((n) => [n, new Prober(n)]));
    this.#topology = topologyOf(nodes);
  }

  /** The snapshot of the last round. */
  get topology(): Topology {
    return this.#topology;
  }

  /**
   * The sequence number of the last probe started. A node's
   * `state.probe.seq` greater than a value read here means that probe
   * started (its query was sent) after the read.
   */
  get probeSeq(): number {
    return this.#seq;
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
    }, this.#config.intervalMs);
  }

  #track(p: Promise<void>): void {
    const tracked = p.catch((error) => {
      this.#observer.log("error", "dbx: health check round failed", { error });
    }).finally(() => this.#pending.delete(tracked));
    this.#pending.add(tracked);
  }

  /**
   * Probes every node now. Concurrent callers share one round.
   *
   * @param force Probe nodes down for long too, whatever their backoff
   * (a write waiting for a primary).
   * @returns Resolves when the round is done and the snapshot swapped.
   */
  checkAll(force = false): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    const now = performance.now();
    // A node that keeps failing is probed less and less often (circuit
    // breaking): no hammering of a dead host every interval.
    this.#round ??= Promise.all(
      this.#nodes.map((n) =>
        force || n.healthy || now >= n.state.nextProbeAt ? this.#check(n) : undefined
      ),
    ).then(() => {
      this.#round = undefined;
      this.#refresh();
    });
    return this.#round;
  }

  /**
   * A connection of `node` died while idle: probe the node now, in the
   * background, unless it is already known down (the rounds probe it every
   * interval) or a probe of it is in flight (joined). However many of its
   * connections report the same outage, it costs one probe and counts one
   * failure.
   *
   * @param node The node to re-probe.
   */
  recheck(node: Node): void {
    if (node.healthy) this.#reprobe(node);
  }

  /** Probes one node now, in the background. */
  #reprobe(node: Node): void {
    if (this.#stopped) return;
    this.#track(this.#check(node).then(() => this.#refresh()));
  }

  #set(node: Node, patch: Partial<NodeState>): void {
    node.setState({ ...node.state, ...patch });
  }

  /** Probes `node`, or joins the probe of it already in flight. */
  #check(node: Node): Promise<void> {
    let probe = this.#probing.get(node);
    if (probe === undefined) {
      probe = this.#probe(node).finally(() => this.#probing.delete(node));
      this.#probing.set(node, probe);
    }
    return probe;
  }

  async #probe(node: Node): Promise<void> {
    const { timeoutMs, failuresBeforeDown } = this.#config;
    let sample: ProbeSample;
    try {
      sample = await this.#probers.get(node)!.probe(timeoutMs, ++this.#seq);
    } catch (err) {
      if (this.#stopped) return;
      if (node.healthy && pgErrorCode(err) === "53300") {
        // Full, not down: the server answered and refused a new connection.
        this.#observer.log("warn", "dbx: node refused a connection: too many clients", {
          node: node.name,
        });
        return;
      }
      const timeout = err instanceof ProbeTimeoutError;
      const failures = node.state.probeFailures + 1;
      const timeouts = timeout ? node.state.probeTimeouts + 1 : 0;
      const now = performance.now();
      // Probed every round while it has been down for a short while (a
      // restart comes back within one interval), then less and less often.
      const eager = node.healthy || now - node.state.downSince < EAGER_PROBING_MS;
      this.#set(node, {
        // Kept while still up too (below failuresBeforeDown): startup reports it.
        error: node.healthy ? err : node.state.error,
        probeFailures: failures,
        probeTimeouts: timeouts,
        nextProbeAt: eager ? 0 : now + this.#probeBackoff(failures),
      });
      this.#observer.log("debug", "dbx: probe failed", {
        node: node.name,
        failures,
        error: err instanceof Error ? err.message : String(err),
      });
      if (failures < failuresBeforeDown) return;
      this.markDown(node, err, false);
      // A hung host never answers the statements already sent to it either:
      // cut them, so reads move on to another node instead of waiting.
      // Ask again at once: a second unanswered probe tells a hung host from
      // a busy moment, and only then are its connections cut.
      if (timeouts >= TIMEOUTS_BEFORE_CUT) node.cutConnections();
      else if (timeout) this.#reprobe(node);
      return;
    }
    if (this.#stopped) return;
    const { role: from, healthy, downSince } = node.state;
    const to = sample.role;
    this.#set(node, {
      role: to,
      healthy: true,
      probe: sample,
      error: undefined,
      probeFailures: 0,
      probeTimeouts: 0,
    });
    if (from === "unknown") {
      // A node listed without a role (`nodes`, a multi-host URL): learning it is no change.
      this.#observer.log("debug", "dbx: node role learned", { node: node.name, role: to });
    } else if (from !== to) {
      this.#observer.log("info", "dbx: node changed role", { node: node.name, from, to });
      this.#observer.hook("onRoleChange", { node: node.name, from, to });
    }
    if (!healthy) {
      this.#observer.log("info", "dbx: node is up", {
        node: node.name,
        role: to,
        downMs: Math.round(performance.now() - downSince),
      });
      this.#observer.hook("onNodeUp", { node: node.name, role: to });
    }
  }

  /**
   * Delay before probing a node down for long again: doubling per
   * consecutive failure from one interval, capped at ten intervals (and
   * 30 s), with equal jitter so many clients do not probe in step.
   */
  #probeBackoff(failures: number): number {
    const { intervalMs } = this.#config;
    const cap = Math.max(intervalMs, Math.min(intervalMs * 10, 30_000));
    const ceiling = Math.min(cap, intervalMs * 2 ** Math.min(failures - 1, 30));
    return ceiling / 2 + (Math.random() * ceiling) / 2;
  }

  /**
   * Marks a node down at once (query path or probe). Does nothing if it is
   * already down. It comes back only after a successful probe.
   *
   * @param node The failing node.
   * @param err Why (a DbxError naming the node).
   * @param recheck Schedule an immediate re-probe. @default true
   */
  markDown(node: Node, err: unknown, recheck = true): void {
    if (!node.healthy) return;
    const { role } = node.state;
    this.#set(node, { healthy: false, error: err, downSince: performance.now() });
    this.#observer.log("warn", "dbx: node is down", {
      node: node.name,
      role,
      error: err instanceof Error ? err.message : String(err),
    });
    this.#observer.hook("onNodeDown", { node: node.name, role, error: err });
    this.#refresh();
    if (!recheck || this.#stopped) return;
    // Losing the primary may mean a failover: learn every node's role now.
    if (role === "primary") this.#track(this.checkAll());
    else this.#reprobe(node);
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
        this.#observer.log("error", "dbx: more than one node reports primary; refusing writes", {
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
