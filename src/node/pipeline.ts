/**
 * Automatic pipelining: statements of concurrent callers that need no
 * session of their own (no transaction, no cancel signal) share a few
 * connections per node in pg's `pipeline` mode, each with its own Sync, so
 * one failure affects only its statement. A statement goes to the least
 * loaded pipe that is not stalled; when every pipe is full or stalled it
 * takes a pooled connection instead, so one slow statement never holds up
 * unrelated callers for its whole duration. Statements pipelined in one tick
 * leave in one socket write. (Named statements: `statement_cache.ts`.)
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import { clientEnd, corkForTick, destroySocket, pgQuery, usePassword } from "./pg_internals.ts";
import { lastRead, useRowParser } from "./pg_parser.ts";
import { DbxError } from "../errors.ts";
import { markNodeFine, markNotSent } from "../failure.ts";
import type { PgTarget } from "../config/tls.ts";
import { isConnectionError } from "../sqlstate.ts";

/** Pipelining settings of a node. */
export interface PipeSettings {
  /** Pipelined connections per node. */
  readonly connections: number;
  /** Statements in flight on one pipe before the next goes elsewhere. */
  readonly maxDepth: number;
}

/**
 * A pipe with statements in flight and no answer for this long takes no more
 * (head-of-line), and a statement text whose recent runs all took this long is sent
 * on a pooled connection: on a pipe it would hold up every statement behind it. At
 * least this many milliseconds...
 */
const SLOW_MS = 2;

/**
 * ... and at least this many times the node's typical statement: when this process
 * is busy (many callers, large results), every answer is handled late and every
 * statement's own time grows alike; that is no reason to leave the pipes, while a
 * statement slower than its peers by this factor is.
 */
const SLOW_FACTOR = 8;

/** ... but never more than this: a statement this slow always leaves the pipes. */
const SLOW_CAP_MS = 20;

/** Statement texts whose durations are remembered (the map is reset when full). */
const DURATIONS_MAX = 4_096;

/** Runs of a text per window of {@linkcode Runs}. */
const WINDOW = 4;

/**
 * A text found slow is tried on a pipe again after this long (its runs on
 * pooled connections can look slow for as long as this process is busy), and
 * after twice as long each time the trial finds it slow still...
 */
const TRIAL_MS = 1_000;

/** ... up to this. */
const TRIAL_MAX_MS = 60_000;

/**
 * The recent runs of one statement text. Its time is the fastest of its last
 * {@linkcode WINDOW} to 2 × {@linkcode WINDOW} runs: a text is slow when every
 * recent run was, not when one answer was handled late because this process
 * was busy (a full event loop delays whichever answer comes first).
 */
class Runs {
  #current: number;
  #previous: number;
  #n = 0;
  /** While slow: when it may be tried on a pipe again (`performance.now()`). */
  trialAt = 0;
  /** The wait before the next trial. */
  trialWait = TRIAL_MS;

  /**
   * @param ms The first run's time.
   * @param stuck Seen stuck (slow now), else one run: not enough to call it slow (a first
   * run also prepares the statement).
   */
  constructor(ms: number, stuck: boolean, now = 0) {
    this.#current = ms;
    this.#previous = stuck ? ms : 0;
    if (stuck) this.stuck(ms, now);
  }

  /** The text's time (ms). */
  get ms(): number {
    return Math.min(this.#current, this.#previous);
  }

  /** One more run. */
  add(ms: number): void {
    if (this.#n === WINDOW) {
      this.#previous = this.#current;
      this.#current = ms;
      this.#n = 1;
    } else {
      if (ms < this.#current) this.#current = ms;
      this.#n++;
    }
  }

  /** Seen stuck for `ms` at `now`: slow now; its next run alone decides again. */
  stuck(ms: number, now: number): void {
    this.#current = this.#previous = ms;
    this.#n = WINDOW;
    this.trialAt = now + this.trialWait;
  }
}

/** One pipelined connection. */
class Pipe {
  readonly client: pg.Client;
  readonly ready: Promise<void>;
  readonly ended: Promise<void>;
  connected = false;
  /** Cut on purpose because a statement left it inside a transaction. */
  poisoned = false;
  /** Start times of the statements in flight, oldest first (answers come in order). */
  readonly heads: number[] = [];
  /** Their texts, in the same order. */
  readonly texts: string[] = [];
  /** When the last answer arrived: the next statement's own time starts there at the latest. */
  lastDone = 0;
  /** The read that brought the last answer (`lastRead()`). */
  lastRead = -1;

  constructor(
    target: PgTarget,
    connectTimeoutMs: number,
    types: pg.CustomTypesConfig | undefined,
    onBroken: (pipe: Pipe) => void,
  ) {
    this.client = new pg.Client({
      ...target as pg.ClientConfig,
      pipeline: true,
      connectionTimeoutMillis: connectTimeoutMs,
      fallback_application_name: "dbx",
      ...(types === undefined ? {} : { types }),
    } as pg.ClientConfig);
    usePassword(this.client, target);
    useRowParser(this.client);
    this.client.on("error", () => onBroken(this));
    this.ended = clientEnd(this.client).then(() => onBroken(this));
    this.ready = this.client.connect().then(() => {
      this.connected = true;
      // Statements' own times start here at the earliest: connecting is not theirs.
      this.lastDone = performance.now();
    });
    this.ready.catch(() => {});
  }
}

/** The pipelined connections of one node. */
export class Pipes {
  readonly #target: PgTarget;
  readonly #connectTimeoutMs: number;
  readonly #settings: PipeSettings;
  readonly #types: pg.CustomTypesConfig | undefined;
  #pipes: Pipe[] = [];
  #all = new Set<Pipe>();
  /** Statements accepted and not yet answered, on every pipe. */
  #inFlight = 0;
  /** Told when the last statement in flight was answered (while closing). */
  #drained: (() => void) | undefined;
  /** Recent runs per statement text, on a pipe or a pooled connection. */
  readonly #durations = new Map<string, Runs>();
  /** Recent duration (ms, moving average) of every statement, whatever its text. */
  #typical = 0;
  #closed = false;

  /**
   * @param target The node's connection string and TLS settings.
   * @param connectTimeoutMs Bound on opening a pipe.
   * @param settings Connections and depth.
   * @param types Value parsers, when not pg's.
   */
  constructor(
    target: PgTarget,
    connectTimeoutMs: number,
    settings: PipeSettings,
    types?: pg.CustomTypesConfig,
  ) {
    this.#target = target;
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
   * A pipe to send `sql` on now: the least loaded one that is neither full
   * nor stalled, a new one while there is room; when every pipe is full, the
   * least loaded one anyway if `poolBusy` (a statement waiting for a pooled
   * connection would wait longer than behind answering pipes); undefined
   * (use the pool) otherwise, when every pipe is stalled, or when `sql` is
   * known to be slow.
   *
   * @param sql The statement text.
   * @param poolBusy The node's pool has no connection free, nor room for one.
   * @returns The pipe, or undefined.
   */
  pick(sql: string, poolBusy = false): Pipe | undefined {
    if (this.#closed) return undefined;
    const slow = this.#slowMs();
    const durations = this.#durations;
    const now = performance.now();
    const runs = durations.get(sql);
    if (runs !== undefined && runs.ms > slow) {
      // Slow: the pool, but now and then one goes to a pipe, so that a text slow only
      // while this process was busy comes back (its answer on the pipe decides).
      if (now < runs.trialAt) return undefined;
      runs.trialAt = now + runs.trialWait;
      runs.trialWait = Math.min(TRIAL_MAX_MS, runs.trialWait * 2);
    }
    const { connections, maxDepth } = this.#settings;
    let best: Pipe | undefined;
    /** The least loaded of the full pipes that are not stalled. */
    let full: Pipe | undefined;
    let idle: Pipe | undefined;
    let busy = 0;
    let marked = false;
    const read = lastRead(now);
    // Every pipe is looked at, an idle one found first or not: a stalled pipe's
    // oldest text is marked slow on the first pick after it stalled.
    for (const pipe of this.#pipes) {
      const depth = pipe.heads.length;
      if (depth === 0) {
        idle ??= pipe;
        continue;
      }
      busy++;
      if (!pipe.connected) {
        // Still connecting: nothing of it is a statement's time yet.
        if (depth < maxDepth && (best === undefined || depth < best.heads.length)) best = pipe;
        continue;
      }
      // Stalled: no answer for a while although statements are in flight
      // (a busy pipe answers all the time, however deep its queue), while
      // other connections' answers were read: one waiting unread because this
      // process is busy is no stall. New statements go around it. Stuck for
      // longer than SLOW_CAP_MS, its oldest statement is slow: more of the
      // same text go to the pool now, not once the first has ended. (Between
      // the two, a loaded server or host answers one pipe late now and then:
      // a text slow on every run is found by its runs instead.)
      const since = Math.max(pipe.heads[0]!, pipe.lastDone);
      const waited = now - since;
      if (waited > slow && read - since > slow) {
        const text = pipe.texts[0]!;
        const stuck = durations.get(text);
        if (waited > SLOW_CAP_MS && (stuck === undefined || stuck.ms < waited)) {
          if (stuck === undefined) this.#remember(text, new Runs(waited, true, now));
          else stuck.stuck(waited, now);
          marked = true;
        }
        continue;
      }
      if (depth >= maxDepth) {
        if (full === undefined || depth < full.heads.length) full = pipe;
        continue;
      }
      if (best === undefined || depth < best.heads.length) best = pipe;
    }
    // The statement at hand may be of the text just found stuck.
    if (marked && (durations.get(sql)?.ms ?? 0) > slow) return undefined;
    if (idle !== undefined) return idle;
    if (busy < connections && this.#pipes.length < connections) return this.#open();
    return best ?? (poolBusy ? full : undefined);
  }

  #open(): Pipe {
    const pipe = new Pipe(this.#target, this.#connectTimeoutMs, this.#types, (p) => this.#drop(p));
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
   * @returns The driver's result.
   */
  run(pipe: Pipe, config: pg.QueryConfig): Promise<pg.QueryResult> {
    this.#inFlight++;
    // Counted at once, connected or not: `maxDepth` holds for a pipe still connecting.
    const started = performance.now();
    pipe.heads.push(started);
    pipe.texts.push(config.text);
    if (pipe.connected) return this.#send(pipe, config, started);
    return pipe.ready.then(
      () => this.#send(pipe, config, started),
      (err) => {
        this.#settled();
        pipe.heads.shift();
        pipe.texts.shift();
        // The pipe never opened: nothing was sent.
        throw markNotSent(err);
      },
    );
  }

  /** One statement accepted by {@linkcode run} has its answer (or failed). */
  #settled(): void {
    if (--this.#inFlight === 0) this.#drained?.();
  }

  #send(pipe: Pipe, config: pg.QueryConfig, started: number): Promise<pg.QueryResult> {
    corkForTick(pipe.client);
    return new Promise<pg.QueryResult>((resolve, reject) => {
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
        // In order, its entry is the oldest; an early answer removes its own.
        const i = pipe.heads[0] === started ? 0 : pipe.heads.lastIndexOf(started);
        if (i >= 0) {
          pipe.heads.splice(i, 1);
          pipe.texts.splice(i, 1);
        }
        if (i === 0) {
          // Its own time, not the time spent queued behind earlier statements.
          const now = performance.now();
          // The node's typical time counts the first answer of each read only: the
          // answers read with it are handled at once, and would count as taking no time.
          const read = lastRead(now);
          this.took(config.text, now - Math.max(started, pipe.lastDone), read !== pipe.lastRead);
          pipe.lastRead = read;
          pipe.lastDone = now;
        }
        if (pipe.poisoned) {
          // Pipelined behind a statement that opened a transaction: it ran
          // inside that transaction, which the server rolls back as the pipe
          // is cut -- unless another caller's COMMIT followed it. Treated as
          // a lost connection (a read is retried, a write is not re-sent),
          // but the node is fine.
          reject(markNodeFine(err ?? new Error("Connection terminated: the pipe was cut")));
          return;
        }
        if (err) {
          // The connection is ending (57P01 from pg_terminate_backend, a lost socket):
          // nothing more goes on it, even before pg reports its end.
          if (isConnectionError(err)) this.#drop(pipe);
          reject(err);
          return;
        }
        if (pipe.client.getTransactionStatus() !== "I") {
          // BEGIN through exec: what is pipelined behind it would run inside
          // its transaction. Cut the pipe; the server rolls it back.
          pipe.poisoned = true;
          this.#drop(pipe);
          destroySocket(pipe.client);
          reject(
            new DbxError(
              "the statement left its connection inside a transaction: use begin() or runTx() for transactions",
              { kind: "other" },
            ),
          );
          return;
        }
        resolve(result);
      };
      try {
        const query = pgQuery(config, answered);
        if (query === undefined) pipe.client.query(config, answered);
        else pipe.client.query(query);
      } catch (err) {
        // Refused before anything was queued (pg throws only for a missing config).
        this.#settled();
        const i = pipe.heads.lastIndexOf(started);
        pipe.heads.splice(i, 1);
        pipe.texts.splice(i, 1);
        reject(err);
      }
    });
  }

  /**
   * Remembers how long a statement text took on a pipe: a text found slow
   * comes back to the pipes when a run is fast again.
   *
   * @param text The statement text.
   * @param ms Its own time.
   * @param typical Whether it counts toward the node's typical time: not when it was
   * read together with the answer before it.
   */
  took(text: string, ms: number, typical = true): void {
    const runs = this.#durations.get(text);
    if (runs === undefined) this.#remember(text, new Runs(ms, false));
    else {
      runs.add(ms);
      if (runs.ms <= this.#slowMs()) runs.trialWait = TRIAL_MS;
    }
    if (typical) this.#typical = this.#typical * 0.95 + ms * 0.05;
  }

  /** How long a statement may take before it counts as slow, now. */
  #slowMs(): number {
    return Math.min(SLOW_CAP_MS, Math.max(SLOW_MS, SLOW_FACTOR * this.#typical));
  }

  /**
   * Remembers how long a statement sent on a pooled connection took (because
   * its text was slow, or every pipe was full): it keeps a slow text slow or
   * brings it back to the pipes, but never makes one slow. Its time includes
   * however late this process handled the answer, which under load is most of
   * it; only a pipe's view (a stall, every run slow there) tells a slow
   * statement from a busy process. It counts toward the node's typical time.
   *
   * @param text The statement text.
   * @param ms Its time.
   */
  tookPooled(text: string, ms: number): void {
    const runs = this.#durations.get(text);
    if (runs !== undefined && runs.ms > this.#slowMs()) runs.add(ms);
    // The node's typical time follows what runs on the pool too: with every
    // statement of a kind there, no pipe would tell it otherwise.
    this.#typical = this.#typical * 0.95 + ms * 0.05;
  }

  #remember(text: string, runs: Runs): void {
    if (this.#durations.size >= DURATIONS_MAX) this.#durations.clear();
    this.#durations.set(text, runs);
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
