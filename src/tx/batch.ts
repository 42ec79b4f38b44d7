/**
 * Pipelined batches for `cluster.sendBatch`: every statement is written to
 * one connection before any answer is read (one round trip), using
 * node-postgres' pipeline mode on the pinned connection for the duration of
 * the batch.
 *
 * Why toggling `client.pipeline` is safe (pg 8.23, `client.js`): the flag is
 * read when a query is queued (`_pulseQueryQueue` picks the pipelined or the
 * one-at-a-time path) and by `end()`. It is switched on only on an idle
 * client fresh from the pool (ReadyForQuery seen, nothing queued or in
 * flight), and switched off only once the batch's last ReadyForQuery has
 * been processed: every statement is followed by an empty sentinel query,
 * whose callback runs at that last ReadyForQuery. (A failing statement's
 * callback runs at its ErrorResponse, before its ReadyForQuery; switching
 * off then would leave the answer to a pipelined Sync to the one-at-a-time
 * path, and the transaction status the pool checks would be stale.) If the
 * connection dies instead, pg fails every queued query and marks the client
 * unqueryable, and the pool discards it on release.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { DbxError } from "../errors.ts";
import type { Row } from "../executor.ts";
import type { AttemptInfo } from "../call/attempt.ts";
import type { Lease } from "../node/lease.ts";

/**
 * One statement of a batch. Each entry must be a single SQL statement (it
 * is sent with the extended protocol, so `"a; b"` fails with 42601).
 *
 * @example
 * ```ts
 * import type { BatchQuery } from "@codelab/dbx";
 *
 * const batch: BatchQuery[] = [
 *   { sql: "insert into audit(kind) values ($1)", args: ["login"] },
 *   { sql: "select count(*) from audit" },
 * ];
 * ```
 */
export interface BatchQuery {
  /** Statement text with `$1`, `$2` ... placeholders. */
  readonly sql: string;
  /** Values for the placeholders. @default [] */
  readonly args?: readonly unknown[] | undefined;
}

/**
 * What one statement of a batch returned.
 *
 * @example
 * ```ts
 * import { connect, type BatchResult } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const results: BatchResult[] = await cluster.sendBatch([{ sql: "select 1 as one" }]);
 * console.log(results[0]?.rows); // [{ one: 1 }]
 * ```
 */
export interface BatchResult<T = Row> {
  /** The command tag's verb: `"INSERT"`, `"SELECT"`, ... */
  readonly command: string;
  /** Rows affected or returned. */
  readonly rowCount: number;
  /** Rows returned (empty for statements without a result set). */
  readonly rows: T[];
}

/**
 * Options of `sendBatch`.
 *
 * @example
 * ```ts
 * import { connect } from "@codelab/dbx";
 *
 * await using cluster = await connect({ master: "postgres://app@db1:5432/app" });
 * const settled = await cluster.sendBatch([{ sql: "select 1" }, { sql: "select broken" }], { atomic: false });
 * console.log(settled.map((r) => r.status)); // ["fulfilled", "rejected"]
 * ```
 */
export interface BatchOptions {
  /**
   * Run the batch in one transaction: a failure rolls every statement back
   * and rejects with that statement's error (index in `batchIndex`).
   * `false` runs each statement on its own (each commits by itself) and
   * settles each separately. An atomic batch must not contain transaction
   * control (`begin`, `commit`, `rollback`): a `commit` inside it would end
   * the batch's transaction early.
   * @default true
   */
  atomic?: boolean | undefined;
  /** Cancels the batch (on the server, where a statement runs). @default undefined */
  signal?: AbortSignal | undefined;
  /** Deadline for the whole batch, in ms. @default undefined */
  timeoutMs?: number | undefined;
}

/**
 * The error of one statement of a batch: a {@linkcode DbxError} with the
 * statement's position. When an atomic batch fails at COMMIT (a deferred
 * constraint, a serialization failure), `batchIndex` equals the number of
 * statements.
 *
 * @example
 * ```ts
 * import { BatchError } from "@codelab/dbx";
 *
 * function failedAt(err: unknown): number | undefined {
 *   return err instanceof BatchError ? err.batchIndex : undefined;
 * }
 * ```
 */
export class BatchError extends DbxError {
  /** Index of the failing statement in the batch. */
  readonly batchIndex: number;

  /**
   * Creates a BatchError.
   *
   * @param batchIndex Index of the failing statement.
   * @param cause The statement's error.
   * @param node Node name.
   */
  constructor(batchIndex: number, cause: unknown, node: string) {
    const message = cause instanceof Error ? cause.message : String(cause);
    super(`batch statement ${batchIndex} failed: ${message} (node ${node})`, { cause, node });
    this.name = "BatchError";
    this.batchIndex = batchIndex;
  }
}

/**
 * How a batch shows in hooks and traces: its statements, one per line.
 *
 * @param queries The statements.
 * @returns The attempt's description.
 */
export function batchInfo(queries: readonly BatchQuery[]): AttemptInfo {
  return {
    sql: queries.map((q) => q.sql).join(";\n"),
    argCount: queries.reduce((n, q) => n + (q.args?.length ?? 0), 0),
    attempt: 1,
  };
}

/** How one query ended. */
type Outcome =
  | { readonly ok: true; readonly result: pg.QueryResult }
  | { readonly ok: false; readonly error: unknown };

/** A query written to the connection. */
interface Sent {
  /** Set as soon as the query ended, synchronously for a client-side failure. */
  outcome: Outcome | undefined;
  /** Settles (never rejects) when the query ended. */
  readonly done: Promise<Outcome>;
}

/** The parts of pg's client the batch uses beyond its typings. */
interface PipelineClient {
  pipeline: boolean;
  readonly connection: { readonly stream: { cork?(): void; uncork?(): void } };
}

/**
 * Queues one query. With `extended`, the extended protocol is used even
 * without parameters: one statement per entry, like pgx's batches.
 */
function send(
  client: pg.PoolClient,
  text: string,
  values: readonly unknown[] | undefined,
  extended: boolean,
): Sent {
  const sent: { outcome: Outcome | undefined; done?: Promise<Outcome> } = { outcome: undefined };
  sent.done = new Promise<Outcome>((resolve) => {
    const settle = (outcome: Outcome): void => {
      // pg may call back twice for one query (a value it failed to
      // serialise, then that query's ReadyForQuery): the first call counts.
      if (sent.outcome !== undefined) return;
      sent.outcome = outcome;
      resolve(outcome);
    };
    // `queryMode` is pg's, missing from its typings.
    const config: pg.QueryConfig & { queryMode?: "extended" } = { text };
    if (values !== undefined) config.values = values as unknown[];
    if (extended) config.queryMode = "extended";
    try {
      client.query(config, (error: Error | null, result: pg.QueryResult) => {
        settle(error ? { ok: false, error } : { ok: true, result });
      });
    } catch (error) {
      settle({ ok: false, error });
    }
  });
  return sent as Sent;
}

function toResult(r: pg.QueryResult): BatchResult {
  return { command: r.command ?? "", rowCount: r.rowCount ?? 0, rows: r.rows ?? [] };
}

/**
 * Writes every statement before reading any answer and waits until the
 * connection is idle again.
 *
 * @param client An idle pooled connection.
 * @param write Queues the batch's queries with `send`.
 * @returns What `write` returned, once every query (and the sentinel) ended.
 */
async function pipelined<T>(client: pg.PoolClient, write: () => T): Promise<T> {
  const raw = client as unknown as PipelineClient;
  const stream = raw.connection.stream;
  raw.pipeline = true;
  let sentinel: Sent | undefined;
  let written: T;
  // Corked, the whole batch leaves in as few packets as the socket allows.
  stream.cork?.();
  try {
    written = write();
    // Answered right after the batch's last ReadyForQuery: once it settled,
    // nothing is in flight and the transaction status is current.
    sentinel = send(client, "", undefined, false);
  } finally {
    stream.uncork?.();
    // Whatever was queued must be answered before the mode is switched back.
    if (sentinel === undefined) sentinel = send(client, "", undefined, false);
    await sentinel.done;
    raw.pipeline = false;
  }
  return written;
}

async function all(sent: readonly Sent[]): Promise<Outcome[]> {
  return await Promise.all(sent.map((s) => s.done));
}

/**
 * Runs the statements pipelined on `client`: one round trip. Atomic:
 * `begin`, the statements and `commit` (or `rollback`, when a statement was
 * refused before it was sent) go out together; after a failure the server
 * answers the rest with 25P02 and the COMMIT with ROLLBACK, so nothing is
 * kept. Not atomic: each statement runs and commits on its own. Either way
 * the connection is idle when this returns, unless a non-atomic batch
 * opened a transaction and left it open (then the pool discards it).
 * Internal: the public entry is `cluster.sendBatch`.
 *
 * Inside a transaction (`mode.inTransaction`), an atomic batch sends no
 * `begin`/`commit`: the enclosing transaction is the unit. Aborting
 * `signal` cancels what runs on the server.
 *
 * @param lease A connection leased on the primary, idle, or a transaction's.
 * @param signal Cancels the batch.
 * @param queries The statements (validated by {@linkcode checkBatch}).
 * @param mode Atomic or not; inside a transaction or not.
 * @returns One result per statement, or one settled result per statement
 * when not atomic (rejected ones hold {@linkcode BatchError}s).
 * @throws {BatchError} when an atomic batch fails: `batchIndex` is the first
 * failing statement, or `queries.length` when COMMIT itself failed.
 */
export function runBatch(
  lease: Lease,
  signal: AbortSignal | undefined,
  queries: readonly BatchQuery[],
  mode: { readonly atomic: boolean; readonly inTransaction: boolean },
): Promise<BatchResult[] | PromiseSettledResult<BatchResult>[]> {
  for (const q of queries) lease.noteStatement(q.sql);
  return lease.use(signal, (client) => pipelineBatch(client, queries, mode, lease.node.name));
}

async function pipelineBatch(
  client: pg.PoolClient,
  queries: readonly BatchQuery[],
  mode: { readonly atomic: boolean; readonly inTransaction: boolean },
  node: string,
): Promise<BatchResult[] | PromiseSettledResult<BatchResult>[]> {
  if (queries.length === 0) return [];
  if (!mode.atomic) {
    const sent = await pipelined(
      client,
      () => queries.map((q) => send(client, q.sql, q.args, true)),
    );
    return (await all(sent)).map((o, i): PromiseSettledResult<BatchResult> =>
      o.ok === true
        ? { status: "fulfilled", value: toResult(o.result) }
        : { status: "rejected", reason: new BatchError(i, o.error, node) }
    );
  }
  if (mode.inTransaction) {
    // The enclosing transaction is the unit: the first failure leaves it
    // failed (its COMMIT is answered ROLLBACK), so nothing of it is kept.
    const sent = await pipelined(
      client,
      () => queries.map((q) => send(client, q.sql, q.args, true)),
    );
    const outcomes = await all(sent);
    const failed = outcomes.findIndex((o) => !o.ok);
    if (failed >= 0) {
      throw new BatchError(failed, (outcomes[failed] as { error: unknown }).error, node);
    }
    return outcomes.map((o) => toResult((o as { result: pg.QueryResult }).result));
  }
  const { begin, statements, end } = await pipelined(client, () => {
    const begin = send(client, "begin", undefined, false);
    const statements = queries.map((q) => send(client, q.sql, q.args, true));
    // A statement pg refused to send (a value it could not serialise) failed
    // synchronously, and the server's transaction knows nothing of it: roll
    // back instead of committing the rest.
    const refused = statements.some((s) => s.outcome?.ok === false);
    const end = send(client, refused ? "rollback" : "commit", undefined, false);
    return { begin, statements, end };
  });
  const outcomes = await all(statements);
  const failed = outcomes.findIndex((o) => !o.ok);
  const ended = await end.done;
  if (failed >= 0) {
    const error = (outcomes[failed] as { error: unknown }).error;
    if (ended.ok && ended.result.command === "COMMIT") {
      // The server ran the statement, but its answer could not be read
      // (a type parser threw): the transaction committed anyway.
      throw new BatchError(
        failed,
        new DbxError(
          `${
            error instanceof Error ? error.message : String(error)
          }; the server ran the statement and the batch was committed`,
          { cause: error, node },
        ),
        node,
      );
    }
    throw new BatchError(failed, error, node);
  }
  const opened = await begin.done;
  if (opened.ok === false) throw new BatchError(0, opened.error, node);
  if (ended.ok === false) throw new BatchError(queries.length, ended.error, node);
  if (ended.result.command !== "COMMIT") {
    throw new BatchError(
      queries.length,
      new DbxError(`the batch's transaction was not committed (${ended.result.command})`, {
        node,
      }),
      node,
    );
  }
  return outcomes.map((o) => toResult((o as { result: pg.QueryResult }).result));
}
