/**
 * One pipelined connection (`pipeline.ts`): pg's client in `pipeline` mode,
 * reading rows with dbx's parser, and what the pipe's picking rules need of
 * it: the statements in flight, oldest first, and when it last answered.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import pg from "pg";
import { clientEnd, keepQueues, tickGatherer, usePassword } from "./pg_internals.ts";
import { Fifo } from "./fifo.ts";
import { useRowParser } from "./pg_parser.ts";
import type { PgTarget } from "../config/tls.ts";
import type { Failed } from "../failure.ts";

/** One pipelined connection. */
export class Pipe {
  readonly client: pg.Client;
  readonly ready: Promise<void>;
  readonly ended: Promise<void>;
  connected = false;
  /** Cut on purpose because a statement left it inside a transaction. */
  poisoned = false;
  /** Start times of the statements in flight, oldest first (answers come in order). */
  readonly heads = new Fifo<number>();
  /** Their texts, in the same order. */
  readonly texts = new Fifo<string>();
  /**
   * How many of them are of a text not yet seen fast on a pipe: it may take
   * long (a lock, a large scan), so more statements are not gathered behind it.
   */
  unproven = 0;
  /** When the last answer arrived: the next statement's own time starts there at the latest. */
  lastDone = 0;
  /** The read that brought the last answer (`lastRead()`). */
  lastRead = -1;
  /** Gathers the client's writes of this tick into one (`tickGatherer`); set once connected. */
  gather: () => void = () => {};
  /**
   * Sends one statement here (`Pipes.run`, bound to this pipe once, so that
   * a statement's send allocates no closure of its own).
   */
  readonly send: (config: pg.QueryConfig, failed: Failed) => Promise<pg.QueryResult>;

  /**
   * @param target Where to connect.
   * @param connectTimeoutMs Bound on connecting.
   * @param types The node's type parsers, if any.
   * @param onBroken Told when the connection fails or ends.
   * @param run Sends one statement on a pipe (`Pipes.run`).
   */
  constructor(
    target: PgTarget,
    connectTimeoutMs: number,
    types: pg.CustomTypesConfig | undefined,
    onBroken: (pipe: Pipe, err?: Error) => void,
    run: (pipe: Pipe, config: pg.QueryConfig, failed: Failed) => Promise<pg.QueryResult>,
  ) {
    this.send = (config, failed) => run(this, config, failed);
    this.client = new pg.Client({
      ...target as pg.ClientConfig,
      pipeline: true,
      connectionTimeoutMillis: connectTimeoutMs,
      fallback_application_name: "dbx",
      ...(types === undefined ? {} : { types }),
    } as pg.ClientConfig);
    usePassword(this.client, target);
    keepQueues(this.client);
    useRowParser(this.client);
    this.client.on("error", (err: Error) => onBroken(this, err));
    this.ended = clientEnd(this.client).then(() => onBroken(this));
    this.ready = this.client.connect().then(() => {
      this.gather = tickGatherer(this.client);
      this.connected = true;
      // Statements' own times start here at the earliest: connecting is not theirs.
      this.lastDone = performance.now();
    });
    this.ready.catch(() => {});
  }
}
