/**
 * The lease: the one way anything in dbx holds a pooled connection —
 * pgxpool's Acquire → work → Release. Cluster statements that leave the
 * pipes, transactions, COPY, batches, streams, `withConnection`, the
 * `pgPool` facade's clients and the Kysely dialect all run on a lease, and
 * a lease knows its connection's state and applies one rule when it is
 * released:
 *
 * - **destroyed** when it is not idle: a statement still running or queued,
 *   an open, failed or unknown transaction, a cancel in flight, a lost or
 *   broken connection;
 * - **reset** (`DISCARD ALL`, then pooled) when a statement on it changed
 *   session state (`session_state.ts`), or the lease was taken for a
 *   session of its own (`withConnection`); destroyed if the reset fails;
 * - **pooled** as it is otherwise.
 *
 * `release()` is idempotent; nothing runs on a lease once it is released.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { DbxError } from "../errors.ts";
import { isConnectionError, markNodeFine, pgErrorCode } from "../failure.ts";
import {
  cancelBackend,
  cancellable,
  clientEnd,
  clientEnded,
  connectionIdle,
  destroySocket,
  forgetAllStatements,
} from "./pg_internals.ts";
import { sessionEffect } from "./session_state.ts";
import { sendCached, type StatementCache, statementConfig } from "./statement_cache.ts";
import { sendQuery } from "./pg_query.ts";

/** The node a lease belongs to, as the lease sees it. */
export interface LeaseNode {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  /** Told when a connection dies after its holder released it (as an idle one would). */
  connectionLost?(err: Error): void;
}

/** A server's FATAL ending the session: its socket closes right after. */
const SESSION_ENDED = new Set(["57P01", "57P02", "57P03"]);

/** A pooled connection held by one caller until {@linkcode Lease.release}. */
export class Lease<N extends LeaseNode = LeaseNode> {
  /** The node the connection belongs to. */
  readonly node: N;
  readonly #client: pg.PoolClient;
  readonly #statements: StatementCache | undefined;
  #sessionModified = false;
  #broken = false;
  /** The server ended the session (a FATAL): the socket closes next. */
  #serverEnded = false;
  /** Its loss was asked for (a session killed on purpose): it says nothing of the node. */
  #lossExpected = false;
  /** Work running on it now. */
  #busy = 0;
  #released = false;

  /**
   * @param node The node the connection belongs to.
   * @param client The connection, just taken from the node's pool.
   * @param statements The cluster's statement names; undefined when the cache is off.
   */
  constructor(node: N, client: pg.PoolClient, statements: StatementCache | undefined) {
    this.node = node;
    this.#client = client;
    this.#statements = statements;
  }

  /** The backend's process id, once connected. */
  get processID(): number | null {
    return (this.#client as unknown as { processID: number | null }).processID;
  }

  /**
   * Forwards errors the connection emits while leased (node-postgres
   * clients of the `pgPool` facade re-emit them).
   *
   * @param listener Called with each error.
   * @returns Stops forwarding.
   */
  watchErrors(listener: (err: Error) => void): () => void {
    this.#client.on("error", listener);
    return () => void this.#client.removeListener("error", listener);
  }

  /** Whether {@linkcode release} was called. */
  get released(): boolean {
    return this.#released;
  }

  /**
   * Runs one statement, named through the statement cache when it has
   * parameters; aborting `signal` cancels it on the server.
   *
   * @param sql Statement text.
   * @param args Bind parameters.
   * @param signal Cancels the statement.
   * @returns The driver's result.
   */
  run(
    sql: string,
    args: readonly unknown[] | undefined,
    signal: AbortSignal | undefined,
  ): Promise<pg.QueryResult> {
    return this.send(statementConfig(sql, args), signal);
  }

  /**
   * Sends a node-postgres query config (`rowMode` and `types` as they are;
   * named through the statement cache, see `sendCached`); aborting `signal`
   * cancels it on the server.
   *
   * @param config The query config.
   * @param signal Cancels the statement.
   * @returns The driver's result.
   */
  send(config: pg.QueryConfig, signal: AbortSignal | undefined): Promise<pg.QueryResult> {
    return this.use(signal, (client) => {
      this.noteStatement(config.text);
      return sendCached(
        client,
        this.#statements,
        config,
        (c, failed) => sendQuery(client, c, failed),
      );
    });
  }

  /** Whether work runs on the connection now. */
  get busy(): boolean {
    return this.#busy > 0;
  }

  /**
   * Cancels what runs on the connection now, on the server (a
   * CancelRequest); nothing when it is idle. The connection is destroyed
   * when released: the cancel could reach a later statement.
   *
   * @returns Resolves once the cancel request was delivered.
   */
  cancel(): Promise<void> {
    if (this.#busy === 0 || this.#released) return Promise.resolve();
    return cancelBackend(this.#client, this.node);
  }

  /**
   * Says the connection is about to be lost on purpose (its backend
   * terminated by the holder): the loss is not the node's.
   */
  expectLoss(): void {
    this.#lossExpected = true;
  }

  /**
   * Runs work on the connection itself (COPY, a batch, a cursor): aborting
   * `signal` cancels what runs on the server; a lost connection marks the
   * lease broken. Statements the work sends itself must be told with
   * {@linkcode noteStatement}.
   *
   * @param signal Cancels the work on the server.
   * @param work The work.
   * @returns What `work` returned.
   * @throws {DbxError} when the lease was released.
   */
  async use<R>(
    signal: AbortSignal | undefined,
    work: (client: pg.PoolClient) => Promise<R>,
  ): Promise<R> {
    if (this.#released) {
      throw new DbxError("Cannot run a statement on a connection that was released", {
        kind: "other",
        node: this.node.name,
      });
    }
    this.#busy++;
    try {
      return await cancellable(this.#client, this.node, signal, () => work(this.#client));
    } catch (err) {
      if (isConnectionError(err)) {
        this.#broken = true;
        if (SESSION_ENDED.has(pgErrorCode(err) ?? "")) this.#serverEnded = true;
        if (this.#lossExpected) markNodeFine(err);
      }
      throw err;
    } finally {
      this.#busy--;
    }
  }

  /**
   * Tells the lease what a statement on its connection does to the session.
   *
   * @param sql The statement text.
   */
  noteStatement(sql: string): void {
    const effect = sessionEffect(sql);
    if (effect === undefined) return;
    this.#sessionModified = true;
    // Later statements of this lease (a transaction) must prepare again.
    if (effect === "statements") this.#forgetStatements();
  }

  /** Resets the connection when it is released, whatever ran on it (`withConnection`). */
  resetOnRelease(): void {
    this.#sessionModified = true;
  }

  /**
   * Hands the connection back by the one rule (see the module doc). Idempotent.
   *
   * @param destroy Destroy it whatever its state (the caller saw it fail).
   */
  release(destroy = false): void {
    if (this.#released) return;
    this.#released = true;
    const client = this.#client;
    if (this.#serverEnded && !clientEnded(client)) {
      this.#dropEnded(client);
      return;
    }
    if (destroy || this.#broken || !connectionIdle(client)) {
      client.release(true);
      return;
    }
    if (!this.#sessionModified) {
      client.release();
      return;
    }
    // DISCARD ALL restores the settings the connection started with (the
    // `session` setting, `options=-c ...`), drops temporary objects, prepared
    // statements, LISTENs and session advisory locks.
    client.query("discard all").then(
      () => {
        this.#forgetStatements();
        client.release();
      },
      () => client.release(true),
    );
  }

  /**
   * Drops a connection whose session the server ended: its socket is cut
   * now rather than closed gracefully, so pg reports the end as it does for
   * an idle connection ("Connection terminated unexpectedly"), and the node
   * hears of it as of any idle connection lost (the `pgPool` facade's
   * "error" event), as pg.Pool does for a client released before its
   * socket closed.
   */
  #dropEnded(client: pg.PoolClient): void {
    const report = (err: Error) => this.node.connectionLost?.(err);
    client.once("error", report);
    clientEnd(client).then(() => {
      client.removeListener("error", report);
      client.release(true);
    });
    destroySocket(client);
  }

  #forgetStatements(): void {
    this.#statements?.forget(this.#client);
    forgetAllStatements(this.#client);
  }
}
