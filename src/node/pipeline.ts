/**
 * Automatic pipelining: statements of concurrent callers that need no
 * session of their own (no transaction, no cancel signal) share a few
 * connections per node in pg's `pipeline` mode, each with its own Sync, so
 * one failure affects only its statement. Statements pipelined in one tick
 * leave in one socket write, so they are gathered on as few pipes as the
 * load needs: more open as it grows, and close when it goes (`Pipes.pick`).
 * When every pipe is stalled, or full while a pooled connection is free, or
 * a statement's text is slow (`slow_texts.ts`), it takes a pooled connection
 * instead, so one slow statement never holds up unrelated callers for its
 * whole duration. (Named statements: `statement_cache.ts`.)
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { destroySocket } from "./pg_internals.ts";
import { Pipe } from "./pipe.ts";
import { pgQuery } from "./pg_query.ts";
import { answerTime, lastRead } from "./pg_frames.ts";
import { DbxError } from "../errors.ts";
import { type Failed, markNodeFine, markNotSent, settleFailed } from "../failure.ts";
import type { PgTarget } from "../config/tls.ts";
import { isConnectionError } from "../sqlstate.ts";
import { SlowTexts } from "./slow_texts.ts";

/**
 * In flight on a pipe before the next statement goes to another one (opened
 * if need be, up to `connections`): deep enough that a tick's statements
 * share a write, shallow enough that load spreads over server backends.
 */
const GROW_AT = 16;

/** Pipelining settings of a node. */
export interface PipeSettings {
  /** Pipelined connections per node. */
  readonly connections: number;
  /** Statements in flight on one pipe before the next goes elsewhere. */
  readonly maxDepth: number;
}

/** The pipelined connections of one node. */
export class Pipes {
  readonly #target: PgTarget;
  readonly #connectTimeoutMs: number;
  readonly #settings: PipeSettings;
  readonly #types: pg.CustomTypesConfig;
  /** An idle pipe beyond the first is closed after this long. */
  readonly #idleMs: number;
  /** Told when a pipe with nothing in flight loses its connection. */
  readonly #onIdleLoss: (err: Error) => void;
  #pipes: Pipe[] = [];
  #all = new Set<Pipe>();
  /** Statements accepted and not yet answered, on every pipe. */
  #inFlight = 0;
  /** Told when the last statement in flight was answered (while closing). */
  #drained: (() => void) | undefined;
  /** How long statement texts take here. */
  readonly #times = new SlowTexts();
  #closed = false;

  /**
   * @param target The node's connection string and TLS settings.
   * @param connectTimeoutMs Bound on opening a pipe.
   * @param settings Connections and depth.
   * @param types Value parsers.
   * @param idleMs An idle pipe beyond the first is closed after this long (0: never).
   * @param onIdleLoss Told when a pipe with nothing in flight loses its
   *   connection (a statement in flight reports its own loss): as for an idle
   *   pooled connection, the node is probed now rather than at the next round.
   */
  constructor(
    target: PgTarget,
    connectTimeoutMs: number,
    settings: PipeSettings,
    types: pg.CustomTypesConfig,
    idleMs: number,
    onIdleLoss: (err: Error) => void = () => {},
  ) {
    this.#target = target;
    this.#onIdleLoss = onIdleLoss;
    this.#idleMs = idleMs > 0 ? idleMs : Infinity;
    this.#connectTimeoutMs = connectTimeoutMs;
    this.#settings = settings;
    this.#types = types;
  }

  /** Open pipes and those of them with nothing in flight (for stats). */
  counts(): { total: number; idle: number } {
    let idle = 0;
    for (const p of this.#pipes) if (p.heads.length === 0) idle++;
    return { total: this.#pipes.length, idle };
  }

  /**
   * A pipe to send `sql` on now. Statements are gathered on as few pipes as
   * the load needs, since one socket write and one read carry all of a
   * pipe's statements of a tick: the first pipe (oldest first) with fewer
   * than {@linkcode GROW_AT} in flight, all of texts seen fast on a pipe,
   * that has answered within the slow threshold; else a new one while there
   * is room; else the least loaded one that is neither full nor late, else
   * the least loaded late one that is not stuck; when every pipe is full, the
   * least loaded one anyway if `poolBusy` (a statement waiting for a pooled
   * connection would wait longer than behind answering pipes); undefined (use
   * the pool) otherwise, when every pipe is stuck, or when `sql` is known to
   * be slow (but for a trial on a pipe now and then). A pipe other than the
   * first that has been idle for the pool's idle timeout is closed here:
   * pipes grow with load and shrink when it goes.
   *
   * @param sql The statement text.
   * @param poolBusy Whether the node's pool has no connection free, nor room for one
   *   (asked only when every pipe is full).
   * @param now `performance.now()`.
   * @returns The pipe, or undefined.
   */
  pick(
    sql: string,
    poolBusy: () => boolean = () => false,
    now = performance.now(),
  ): Pipe | undefined {
    if (this.#closed) return undefined;
    const times = this.#times;
    const slow = times.slowMs();
    if (times.verdict(sql, slow, now) === "pool") return undefined;
    const { connections, maxDepth } = this.#settings;
    const growAt = Math.min(GROW_AT, maxDepth);
    /** The first pipe with room below `growAt` that is not late. */
    let open: Pipe | undefined;
    /** The least loaded of the others that are neither full nor late. */
    let best: Pipe | undefined;
    /** The least loaded of the full pipes that are not late. */
    let full: Pipe | undefined;
    /** The least loaded of the late pipes that are not stuck, with room. */
    let late: Pipe | undefined;
    let spare: Pipe | undefined;
    let marked = false;
    const read = lastRead(now);
    // Every pipe is looked at, one with room found first or not: a stalled pipe's
    // oldest text is marked slow on the first pick after it stalled.
    for (const pipe of this.#pipes) {
      const depth = pipe.heads.length;
      if (depth === 0) {
        if (open !== undefined && pipe.connected && now - pipe.lastDone > this.#idleMs) {
          spare ??= pipe;
        } else open ??= pipe;
        continue;
      }
      /** No answer for a while, maybe only unread: it keeps its statements, not more. */
      let waiting = false;
      if (pipe.connected) {
        // Late: no answer for a while although statements are in flight (a
        // busy pipe answers all the time, however deep its queue), while other
        // connections' answers were read: one waiting unread because this
        // process is busy is not late. New statements go around a late pipe if
        // another has room. Stuck (20 ms, or twice the longest recent wait for a
        // fast answer, up to 200 ms: `SlowTexts.stuckMs`), it takes none, and its
        // oldest statement is slow: more of the same text go to the pool now, not
        // once the first has ended. (Between the two, a loaded server or host
        // answers one pipe late now and then: a text slow on every run is found
        // by its runs instead.)
        const since = Math.max(pipe.heads.at(0)!, pipe.lastDone);
        const waited = now - since;
        if (waited > slow) {
          if (read - since > slow) {
            if (times.stuck(pipe.texts.at(0)!, waited, now)) marked = true;
            else if (waited <= times.stuckMs(now) && depth < maxDepth) {
              if (late === undefined || depth < late.heads.length) late = pipe;
            }
            continue;
          }
          // Nothing else was read meanwhile either, so nothing shows whether
          // it is late: more statements are not gathered behind it while
          // another pipe can open.
          waiting = true;
        }
      }
      // A pipe still connecting counts as answering: nothing of it is a statement's time yet.
      if (depth >= maxDepth) {
        if (full === undefined || depth < full.heads.length) full = pipe;
      } else if (depth < growAt && !waiting && pipe.unproven === 0) open ??= pipe;
      else if (best === undefined || depth < best.heads.length) best = pipe;
    }
    if (spare !== undefined) {
      // An idle pipe the load no longer needs.
      this.#drop(spare);
      spare.client.end().catch(() => {});
    }
    // The statement at hand may be of the text just found stuck.
    if (marked && times.isSlow(sql, slow)) return undefined;
    if (open !== undefined) return open;
    if (this.#pipes.length < connections) return this.#open();
    return best ?? late ?? (full !== undefined && poolBusy() ? full : undefined);
  }

  #open(): Pipe {
    const pipe = new Pipe(
      this.#target,
      this.#connectTimeoutMs,
      this.#types,
      (p, err) => {
        this.#drop(p);
        // Not one cut on purpose, nor one with statements in flight (they report it).
        if (err !== undefined && !this.#closed && !p.poisoned && p.heads.length === 0) {
          this.#onIdleLoss(err);
        }
      },
      (p, config, failed) => this.run(p, config, failed),
    );
    this.#pipes.push(pipe);
    this.#all.add(pipe);
    pipe.ended.then(() => this.#all.delete(pipe));
    return pipe;
  }

  #drop(pipe: Pipe): void {
    const i = this.#pipes.indexOf(pipe);
    if (i >= 0) this.#pipes.splice(i, 1);
  }

  /**
   * Sends one statement on `pipe`.
   *
   * @param pipe From {@linkcode pick}.
   * @param config The statement (text, values, name).
   * @param failed What a failure becomes (`settleFailed` in `failure.ts`).
   * @returns The driver's result.
   */
  run(pipe: Pipe, config: pg.QueryConfig, failed: Failed): Promise<pg.QueryResult> {
    const started = performance.now();
    this.#inFlight++;
    // Counted at once, connected or not: `maxDepth` holds for a pipe still connecting.
    pipe.heads.push(started);
    pipe.texts.push(config.text);
    const unproven = !this.#times.isFast(config.text, this.#times.slowMs());
    if (unproven) pipe.unproven++;
    if (pipe.connected) return this.#send(pipe, config, failed, started, unproven);
    return pipe.ready.then(
      () => this.#send(pipe, config, failed, started, unproven),
      (err) => {
        this.#settled();
        if (unproven) pipe.unproven--;
        pipe.heads.shift();
        pipe.texts.shift();
        // The pipe never opened: nothing was sent.
        return failed(markNotSent(err));
      },
    );
  }

  /** One statement accepted by {@linkcode run} has its answer (or failed). */
  #settled(): void {
    if (--this.#inFlight === 0) this.#drained?.();
  }

  #send(
    pipe: Pipe,
    config: pg.QueryConfig,
    failed: Failed,
    started: number,
    unproven: boolean,
  ): Promise<pg.QueryResult> {
    pipe.gather();
    return new Promise<pg.QueryResult>((resolve) => {
      // The callback runs inside pg's handling of this statement's
      // ReadyForQuery, before any later answer is handled: the transaction
      // check below sees the status this statement left.
      //
      // pg answers twice a statement with a value it cannot serialise (a
      // BigInt in a JSON value): at once with the error, out of order, and
      // again at the ReadyForQuery of the Sync it sent. Only the first counts.
      let settled = false;
      const answered = (err: Error | null, result: pg.QueryResult) => {
        if (settled) return;
        settled = true;
        this.#settled();
        if (unproven) pipe.unproven--;
        // In order, its entry is the oldest; an early answer removes its own.
        const i = pipe.heads.at(0) === started ? 0 : pipe.heads.lastIndexOf(started);
        if (i === 0) {
          pipe.heads.shift();
          pipe.texts.shift();
        } else if (i > 0) {
          pipe.heads.splice(i, 1);
          pipe.texts.splice(i, 1);
        }
        if (i === 0) {
          // Its own time, not the time spent queued behind earlier statements.
          const now = answerTime();
          // The node's typical time counts the first answer of each read only: the
          // answers read with it are handled at once, and would count as taking no time.
          const read = lastRead(now);
          this.#times.took(
            config.text,
            now - Math.max(started, pipe.lastDone),
            read !== pipe.lastRead,
            now,
          );
          pipe.lastRead = read;
          pipe.lastDone = now;
        }
        if (pipe.poisoned) {
          // Pipelined behind a statement that opened a transaction: it ran
          // inside that transaction, which the server rolls back as the pipe
          // is cut -- unless another caller's COMMIT followed it. Treated as
          // a lost connection (a read is retried, a write is not re-sent),
          // but the node is fine.
          settleFailed(
            markNodeFine(err ?? new Error("Connection terminated: the pipe was cut")),
            failed,
            resolve,
          );
          return;
        }
        if (err) {
          // The connection is ending (57P01 from pg_terminate_backend, a lost socket):
          // nothing more goes on it, even before pg reports its end.
          if (isConnectionError(err)) this.#drop(pipe);
          settleFailed(err, failed, resolve);
          return;
        }
        if (pipe.client.getTransactionStatus() !== "I") {
          // BEGIN through exec: what is pipelined behind it would run inside
          // its transaction. Cut the pipe; the server rolls it back.
          pipe.poisoned = true;
          this.#drop(pipe);
          destroySocket(pipe.client);
          const left = new DbxError(
            "the statement left its connection inside a transaction: use begin() or runTx() for transactions",
            { kind: "other" },
          );
          settleFailed(left, failed, resolve);
          return;
        }
        resolve(result);
      };
      try {
        const query = pgQuery(pipe.client, config, answered);
        if (query === undefined) pipe.client.query(config, answered);
        else pipe.client.query(query);
      } catch (err) {
        // Refused before anything was queued (pg throws only for a missing config).
        this.#settled();
        if (unproven) pipe.unproven--;
        const i = pipe.heads.lastIndexOf(started);
        pipe.heads.splice(i, 1);
        pipe.texts.splice(i, 1);
        settleFailed(err, failed, resolve);
      }
    });
  }

  /**
   * Remembers how long a statement sent on a pooled connection took
   * ({@linkcode SlowTexts.tookPooled}).
   *
   * @param text The statement text.
   * @param ms Its time.
   */
  tookPooled(text: string, ms: number): void {
    this.#times.tookPooled(text, ms);
  }

  /**
   * Ends every pipe: statements already accepted are answered first.
   *
   * @returns Resolves when every pipe's connection ended.
   */
  async end(): Promise<void> {
    this.#closed = true;
    // Statements already accepted are sent and answered first (a pipe still
    // connecting included); a forced close cuts them instead (cut()).
    if (this.#inFlight > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
    const all = [...this.#all];
    this.#pipes = [];
    await Promise.all(all.map((p) => p.client.end().catch(() => {})));
    await Promise.all(all.map((p) => p.ended));
  }

  /** Cuts every pipe now (a hung host, or a forced close). */
  cut(): void {
    for (const p of this.#all) destroySocket(p.client);
    this.#pipes = [];
  }
}
