/**
 * The session behind a `pgPool` facade client and a Kysely dialect
 * connection: a connection is taken only when a statement needs one of its
 * own, so everything else takes the cluster's shared statement path (the
 * pipes, the statement cache) like `cluster.query`.
 *
 * - A statement that opens a transaction (`BEGIN`, `START TRANSACTION`) pins
 *   a connection: on the primary, taking it and BEGIN are retried together
 *   as for `cluster.begin()`; what follows runs there, once, never retried.
 * - A statement that changes session state (`session_state.ts`: `SET`,
 *   temporary tables, session advisory locks, ...) or reads it
 *   (`pg_backend_pid()`, `lastval()`, `currval()`) pins one too; the
 *   lease's rule resets it (`DISCARD ALL`) when the session is released.
 *   (`lastval()` after an INSERT that ran on the shared path sees a fresh
 *   session: use `RETURNING`.)
 * - A statement that may be cancelled (Kysely's `inflightQueryAbortStrategy`)
 *   runs alone on a leased connection, so a cancel or a terminated backend
 *   reaches it and nothing else; one that has not started yet is not sent.
 * - Anything else goes through the routed, retried, pipelined path.
 *
 * Once pinned, the session keeps its connection until it is released.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import type { ClusterCore } from "../cluster/core.ts";
import { asIs, routedWork } from "../call/dispatch.ts";
import { pin } from "../call/pinned.ts";
import { currentSession, type SessionState } from "../call/session.ts";
import type { Lease } from "../node/lease.ts";
import type { Node } from "../node/node.ts";
import { sessionEffect, startsTransaction } from "../node/session_state.ts";
import { infoOf, type PgRoute, pinFor, runConfig, runPinned } from "./pg_run.ts";

/** A text that is only a BEGIN: opened by `pin()` with its retries. */
const PLAIN_BEGIN = /^\s*(?:begin|start\s+transaction)\b[^;]*;?\s*$/i;

/** Functions that read the session's own state: they must run where the client's session is. */
const SESSION_READS =
  /\b(?:pg_backend_pid|lastval|currval|pg_my_temp_schema|pg_listening_channels)\s*\(/i;

/** Whether a statement must run on the client's own connection. */
function needsSession(text: string): boolean {
  return startsTransaction(text) || sessionEffect(text) !== undefined || SESSION_READS.test(text);
}

/** How a backend is terminated for Kysely's "kill session". */
const TERMINATE = "select pg_terminate_backend($1)";

const BEGIN_RESULT = {
  command: "BEGIN",
  rowCount: null,
  oid: 0,
  rows: [],
  fields: [],
} as unknown as pg.QueryResult;

/** A cancellable statement running alone on a leased connection. */
interface Alone {
  /** Its connection, once taken. */
  lease: Lease<Node> | undefined;
  /** Ends the wait for a connection and the retries (never the statement itself). */
  readonly stop: AbortController;
  /** A kill asked for before it was sent: its backend is terminated as soon as it is. */
  kill: boolean;
}

/** A client's session on the cluster, pinned to a connection only when needed. */
export class LazySession {
  readonly #core: ClusterCore;
  readonly #route: PgRoute;
  /** The read-your-writes session that took it: what ran on the primary may have written. */
  readonly #session: SessionState | undefined;
  readonly #onError: ((err: Error) => void) | undefined;
  #lease: Lease<Node> | undefined;
  #pinning: Promise<Lease<Node>> | undefined;
  #unwatch: (() => void) | undefined;
  /** A cancellable statement running alone (see {@linkcode Alone}). */
  #alone: Alone | undefined;
  #released = false;

  /**
   * @param core The cluster's core.
   * @param route Which rules its statements and its connection follow.
   * @param onError Told of errors its pinned connection emits.
   */
  constructor(core: ClusterCore, route: PgRoute, onError?: (err: Error) => void) {
    this.#core = core;
    this.#route = route;
    this.#onError = onError;
    this.#session = currentSession(core.d.sessions);
  }

  /** The backend's process id while pinned. */
  get processID(): number | null {
    return this.#lease?.processID ?? null;
  }

  /** Whether it has (or is taking) a connection of its own. */
  get connected(): boolean {
    return this.#lease !== undefined || this.#pinning !== undefined;
  }

  /** Whether {@linkcode release} was called. */
  get released(): boolean {
    return this.#released;
  }

  /**
   * Runs one statement where it must run (see the module doc).
   *
   * @param config The statement.
   * @param cancellable A cancel or a kill may be asked for while it runs.
   * @param route Where it goes on the shared path (the Kysely dialect's plain reads).
   * @returns pg's result.
   */
  run(
    config: pg.QueryConfig,
    cancellable: boolean,
    route: PgRoute = this.#route,
  ): Promise<pg.QueryResult> {
    // The common case, without a detour: no connection of its own, none needed.
    if (this.#lease === undefined && this.#pinning === undefined && !needsSession(config.text)) {
      return cancellable
        ? this.#runAlone(config, route)
        : runConfig(this.#core, route, config, undefined, true);
    }
    return this.#runInSession(config);
  }

  async #runInSession(config: pg.QueryConfig): Promise<pg.QueryResult> {
    const lease = this.#lease ?? (this.#pinning && await this.#pinning);
    if (lease !== undefined) return await runPinned(this.#core, lease, config, undefined);
    if (startsTransaction(config.text)) return await this.#begin(config);
    return await runPinned(this.#core, await this.pinned(), config, undefined);
  }

  /**
   * The session's connection, taken now if it has none yet.
   *
   * @returns The lease.
   */
  pinned(): Promise<Lease<Node>> {
    if (this.#lease !== undefined) return Promise.resolve(this.#lease);
    return this.#pinning ?? this.#pin(pinFor(this.#core, this.#route));
  }

  /** Holds the connection being taken (only one at a time: callers check `#pinning` first). */
  #pin(taking: Promise<Lease<Node>>): Promise<Lease<Node>> {
    return this.#pinning = taking.then((lease) => {
      this.#pinning = undefined;
      if (this.#released) {
        lease.release();
        throw new Error("Cannot query() as the client was released");
      }
      this.#lease = lease;
      const onError = this.#onError;
      if (onError !== undefined) this.#unwatch = lease.watchErrors(onError);
      return lease;
    }, (err) => {
      this.#pinning = undefined;
      throw err;
    });
  }

  async #begin(config: pg.QueryConfig): Promise<pg.QueryResult> {
    if (this.#route === "primary" && PLAIN_BEGIN.test(config.text) && !config.values?.length) {
      await this.#pin(pin(this.#core.d, config.text, undefined));
      return BEGIN_RESULT;
    }
    return await runPinned(this.#core, await this.pinned(), config, undefined);
  }

  async #runAlone(config: pg.QueryConfig, route: PgRoute): Promise<pg.QueryResult> {
    const stop = new AbortController();
    const alone: Alone = { lease: undefined, stop, kill: false };
    this.#alone = alone;
    try {
      // The stop signal bounds the wait for a connection and the retries,
      // never the statement: only cancel() and kill() reach the server.
      return await routedWork(
        this.#core.d,
        route === "replica",
        infoOf(config),
        stop.signal,
        {
          send: (node) =>
            node.leased(stop.signal, (lease) => {
              alone.lease = lease;
              const sent = lease.send(config, undefined);
              // As on pg, where the statement was on its way before the kill.
              if (alone.kill) this.#terminate(lease, alone).catch(() => {});
              return sent;
            }),
        },
        undefined,
        currentSession(this.#core.d.sessions),
        false,
        asIs,
      );
    } finally {
      if (this.#alone === alone) this.#alone = undefined;
    }
  }

  /**
   * Cancels the statement running now on the server (Kysely's "cancel
   * query"); one not sent yet is not sent at all.
   */
  async cancel(): Promise<void> {
    const lease = this.#lease ?? this.#alone?.lease;
    if (lease?.busy) return await lease.cancel();
    this.#alone?.stop.abort();
  }

  /**
   * Terminates the backend running the statement now (Kysely's "kill
   * session"); a statement not sent yet is terminated as soon as it is.
   */
  async kill(): Promise<void> {
    const alone = this.#alone;
    const lease = this.#lease ?? alone?.lease;
    if (lease?.busy) return await this.#terminate(lease, alone);
    if (alone !== undefined) alone.kill = true;
  }

  async #terminate(lease: Lease<Node>, alone: Alone | undefined): Promise<void> {
    const pid = lease.processID;
    if (pid === null) return;
    // Asked for: neither the node's failure nor a statement to retry.
    lease.expectLoss();
    alone?.stop.abort();
    const node = lease.node;
    await this.#core.d.runner.run(
      node,
      { sql: TERMINATE, argCount: 1, attempt: 1 },
      undefined,
      () => node.send({ text: TERMINATE, values: [pid] }, undefined),
    );
  }

  /**
   * Hands the connection back, if it took one, by the lease's rule. Idempotent.
   *
   * @param destroy Destroy the connection whatever its state.
   */
  release(destroy: boolean): void {
    if (this.#released) return;
    this.#released = true;
    const lease = this.#lease;
    this.#lease = undefined;
    if (lease === undefined) return;
    this.#unwatch?.();
    lease.release(destroy);
    if (lease.node.role === "primary") this.#session?.noteWrite();
  }
}
