/**
 * One node's probe: a dedicated, lazily (re)connected connection on which the health
 * checker asks for the node's role, WAL position and replay age in one round trip.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import { discardClient, usePassword } from "./pg_internals.ts";
import { DbxError } from "../errors.ts";
import type { Node, ProbeSample } from "./node.ts";
import { parseLsn } from "../call/route.ts";
import { isConnectionError } from "../sqlstate.ts";

/** One probe: role, WAL position and replay age in a single round trip. */
const PROBE_SQL = `select pg_is_in_recovery() as recovery,
  (case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end)::text as lsn,
  (extract(epoch from now() - pg_last_xact_replay_timestamp()) * 1000)::float8 as replay_age_ms`;

/** What {@linkcode PROBE_SQL} returns. */
type ProbeRow = { recovery: boolean; lsn: string | null; replay_age_ms: number | null };

/** A probe that got no answer in time: the host is hung or unreachable, not refusing. */
export class ProbeTimeoutError extends DbxError {}

/** A dedicated, lazily (re)connected probe connection to one node. */
export class Prober {
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
      const kept = this.#client !== undefined;
      let answer: { row: ProbeRow; latencyMs: number };
      try {
        answer = await this.#query();
      } catch (err) {
        // A connection kept from an earlier round may have been ended meanwhile
        // (pg_terminate_backend, a pooler, an idle timeout): only a fresh one's
        // failure says something about the node. The same timer bounds both.
        if (!kept || timedOut || !isConnectionError(err)) throw err;
        this.#discard();
        answer = await this.#query();
      }
      const { row, latencyMs } = answer;
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

  /**
   * Runs the probe query on the kept connection, or on a new one it keeps, and tells
   * the node's latency the query's round trip (connecting excluded).
   */
  async #query(): Promise<{ row: ProbeRow; latencyMs: number }> {
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
    const start = performance.now();
    const row = (await client.query(PROBE_SQL)).rows[0] as ProbeRow;
    const latencyMs = performance.now() - start;
    this.#node.latency.probe(latencyMs, start + latencyMs);
    return { row, latencyMs };
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
