/**
 * The node-postgres internals behind logical replication: a replication command
 * that answers with CopyBoth (`START_REPLICATION`), driven on pg's connection, which
 * has no public API for it. With `pg_internals.ts`, the only place dbx casts into pg.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

// @ts-types="@types/pg"
import type pg from "pg";
import { Buffer } from "node:buffer";

/** A replication command running in CopyBoth mode on a client (`START_REPLICATION`). */
export interface CopyBoth {
  /** Resolves once the server switched to CopyBoth: the stream runs. */
  readonly started: Promise<void>;
  /**
   * Settles when the command ended: resolves when the server ended the copy (after
   * {@linkcode CopyBoth.end}), rejects with the server's error or the connection's loss.
   */
  readonly done: Promise<void>;
  /** Sends one CopyData message (a standby status update). */
  send(payload: Uint8Array): void;
  /** Sends CopyDone: the server ends the stream and the command completes. */
  end(): void;
  /** Stops reading from the socket (back pressure); the server's data waits in the kernel. */
  pause(): void;
  /** Reads from the socket again. */
  resume(): void;
}

/** The parts of pg's Connection a CopyBoth command drives. */
interface RawConnection {
  query(text: string): void;
  sendCopyFromChunk(chunk: Uint8Array): void;
  endCopyFrom(): void;
  once(event: "replicationStart", listener: () => void): void;
  removeListener(event: "replicationStart", listener: () => void): void;
  stream: { pause(): void; resume(): void };
}

/**
 * Runs a replication command that answers with CopyBoth (`START_REPLICATION ...
 * LOGICAL ...`) on a connected `replication: "database"` client. pg hands an
 * active query every CopyData message (`handleCopyData`) and accepts any object
 * with `submit()` as a query; the CopyBothResponse itself is an event of pg's
 * connection (`replicationStart`) that pg's client does not forward.
 *
 * @param client A connected client opened with `replication: "database"`.
 * @param sql The command (simple query protocol).
 * @param onData Called with each CopyData payload, in order, synchronously.
 * @returns The running command.
 */
export function startCopyBoth(
  client: pg.Client,
  sql: string,
  onData: (payload: Uint8Array) => void,
): CopyBoth {
  const connection = (client as unknown as { connection: RawConnection }).connection;
  let started!: () => void;
  let failed!: (err: unknown) => void;
  const startedP = new Promise<void>((resolve, reject) => {
    started = resolve;
    failed = reject;
  });
  let settle!: { resolve: () => void; reject: (err: unknown) => void };
  const done = new Promise<void>((resolve, reject) => settle = { resolve, reject });
  // Whoever awaits only one of the two still leaves no unhandled rejection.
  startedP.catch(() => {});
  done.catch(() => {});
  const onStart = () => started();
  const stop = (err: unknown) => {
    connection.removeListener("replicationStart", onStart);
    failed(err);
    settle.reject(err);
  };
  const command = {
    text: sql,
    submit(conn: RawConnection): void {
      conn.once("replicationStart", onStart);
      conn.query(sql);
    },
    handleCopyData(msg: { chunk: Uint8Array }): void {
      onData(msg.chunk);
    },
    handleError: stop,
    handleReadyForQuery(): void {
      connection.removeListener("replicationStart", onStart);
      failed(new Error(`${sql.split(" ")[0]} ended before streaming`));
      settle.resolve();
    },
    handleCommandComplete(): void {},
    handleRowDescription(): void {},
    handleDataRow(): void {},
    handleEmptyQuery(): void {},
    handlePortalSuspended(): void {},
    handleCopyInResponse(): void {},
  };
  client.query(command as unknown as pg.QueryConfig);
  return {
    started: startedP,
    done,
    // pg's serializer copies with Buffer#copy.
    send: (payload) =>
      connection.sendCopyFromChunk(
        Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
      ),
    end: () => connection.endCopyFrom(),
    pause: () => connection.stream.pause(),
    resume: () => connection.stream.resume(),
  };
}
