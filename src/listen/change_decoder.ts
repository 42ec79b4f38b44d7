/**
 * Turns decoded `pgoutput` messages of one replication connection into
 * {@linkcode Change}s: it remembers the relations the server described (a
 * server describes each before its first change on a connection) and the
 * transaction being received, and parses values with the cluster's type
 * parsers. One decoder per connection: a new connection starts empty.
 *
 * @module
 */

import { formatLsn } from "../call/route.ts";
import type { Row } from "../executor.ts";
import {
  decodePgOutput,
  decodeReplication,
  type PgOutputMessage,
  type Relation,
  type TupleValue,
  UNCHANGED,
} from "./pgoutput.ts";
import type { Change } from "./subscribe.ts";

/** Parses a column's text by its type OID (the cluster's `types`, else pg's). */
export type ParserOf = (typeOid: number) => (text: string) => unknown;

/** What a message means for the stream. */
export type Decoded =
  | { readonly kind: "changes"; readonly changes: readonly Change[] }
  | { readonly kind: "commit"; readonly endLsn: bigint }
  | { readonly kind: "none" };

const NONE: Decoded = { kind: "none" };

/** What one CopyData message of the replication stream means for the stream. */
export interface StreamStep {
  /** The WAL position the server shows it has reached (0n: none). */
  readonly at: bigint;
  /** Changes to hand over, in order. */
  readonly changes: readonly Change[];
  /** Then a position to acknowledge once everything before it was handled. */
  readonly ack: bigint | undefined;
  /** The server asks for a status update now. */
  readonly replyRequested: boolean;
}

const NO_CHANGES: readonly Change[] = [];

/** The transaction being received. */
interface OpenTx {
  readonly xid: number;
  readonly commitLsn: string;
  readonly commitTime: Date;
}

/** Decoder state of one replication connection. */
export class ChangeDecoder {
  readonly #parserOf: ParserOf;
  readonly #relations = new Map<number, Relation>();
  #open: OpenTx | undefined;

  /**
   * @param parserOf The value parser of a type OID.
   */
  constructor(parserOf: ParserOf) {
    this.#parserOf = parserOf;
  }

  /** Whether a transaction has begun and not committed yet. */
  get inTransaction(): boolean {
    return this.#open !== undefined;
  }

  /**
   * Reads one CopyData message of the replication stream: an XLogData's
   * changes, or its commit's end to acknowledge; a keepalive's position, to
   * acknowledge when no transaction is open (the server has sent everything
   * before it, so WAL is not held forever by changes outside the publication).
   *
   * @param chunk The CopyData payload.
   * @returns What it means for the stream.
   * @throws {RangeError} When the message cannot be read ({@linkcode apply}).
   */
  read(chunk: Uint8Array): StreamStep {
    const message = decodeReplication(chunk);
    if (message.tag === "xlog") {
      const decoded = this.apply(decodePgOutput(message.data), message.start);
      return {
        at: message.start,
        changes: decoded.kind === "changes" ? decoded.changes : NO_CHANGES,
        ack: decoded.kind === "commit" ? decoded.endLsn : undefined,
        replyRequested: false,
      };
    }
    if (message.tag === "keepalive") {
      return {
        at: message.walEnd,
        changes: NO_CHANGES,
        ack: this.inTransaction ? undefined : message.walEnd,
        replyRequested: message.replyRequested,
      };
    }
    return { at: 0n, changes: NO_CHANGES, ack: undefined, replyRequested: false };
  }

  /**
   * Applies one message.
   *
   * @param message The pgoutput message.
   * @param lsn The WAL position it was sent at (XLogData's start).
   * @returns Changes to hand over, a commit to acknowledge once they are handled, or nothing.
   * @throws {RangeError} When a change names a relation never described, or comes outside
   * a transaction.
   */
  apply(message: PgOutputMessage, lsn: bigint): Decoded {
    switch (message.tag) {
      case "begin":
        this.#open = {
          xid: message.xid,
          commitLsn: formatLsn(message.finalLsn),
          commitTime: message.commitTime,
        };
        return NONE;
      case "commit":
        this.#open = undefined;
        return { kind: "commit", endLsn: message.endLsn };
      case "relation":
        this.#relations.set(message.relation.oid, message.relation);
        return NONE;
      case "insert": {
        const rel = this.#relation(message.relation);
        const row = this.#row(rel, message.new, undefined);
        return this.#one(rel, lsn, { op: "insert", new: row, key: keyOf(rel, row) });
      }
      case "update": {
        const rel = this.#relation(message.relation);
        const old = message.old === undefined ? undefined : this.#row(rel, message.old.values);
        const full = message.old?.full === true ? message.old.values : undefined;
        const row = this.#row(rel, message.new, full);
        return this.#one(rel, lsn, {
          op: "update",
          new: row,
          ...(message.old?.full === true ? { old } : {}),
          key: keyOf(rel, old ?? row),
        });
      }
      case "delete": {
        const rel = this.#relation(message.relation);
        const old = this.#row(rel, message.old.values);
        return this.#one(rel, lsn, {
          op: "delete",
          ...(message.old.full ? { old } : {}),
          key: keyOf(rel, old),
        });
      }
      case "truncate": {
        const tx = this.#tx();
        const changes = message.relations.map((oid): Change => {
          const rel = this.#relation(oid);
          return { op: "truncate", ...where(rel), lsn: formatLsn(lsn), ...tx };
        });
        return { kind: "changes", changes };
      }
      default:
        return NONE;
    }
  }

  #one(
    rel: Relation,
    lsn: bigint,
    what: Pick<Change, "op" | "new" | "old" | "key">,
  ): Decoded {
    const { op, ...row } = what;
    const change: Change = { op, ...where(rel), ...row, lsn: formatLsn(lsn), ...this.#tx() };
    if (change.key === undefined) delete (change as { key?: unknown }).key;
    return { kind: "changes", changes: [change] };
  }

  #tx(): { xid: number; commitLsn: string; commitTime: Date } {
    const open = this.#open;
    if (open === undefined) throw new RangeError("a change arrived outside a transaction");
    return { xid: open.xid, commitLsn: open.commitLsn, commitTime: open.commitTime };
  }

  #relation(oid: number): Relation {
    const rel = this.#relations.get(oid);
    if (rel === undefined) throw new RangeError(`a change names relation ${oid}, never described`);
    return rel;
  }

  /** A row from a tuple; an unchanged TOAST value is taken from `old` (a full old row) or left out. */
  #row(rel: Relation, values: readonly TupleValue[], old?: readonly TupleValue[]): Row {
    const row: Row = {};
    rel.columns.forEach((column, i) => {
      let value: TupleValue | undefined = values[i];
      if (value === UNCHANGED) value = old?.[i];
      if (value === UNCHANGED || value === undefined) return;
      row[column.name] = value === null ? null : this.#parserOf(column.typeOid)(value);
    });
    return row;
  }
}

function where(rel: Relation): { schema: string; table: string } {
  return { schema: rel.schema === "" ? "pg_catalog" : rel.schema, table: rel.table };
}

/** The replica identity columns of a row, or undefined when the table has none. */
function keyOf(rel: Relation, row: Row): Row | undefined {
  let key: Row | undefined;
  for (const column of rel.columns) {
    if (column.key && column.name in row) (key ??= {})[column.name] = row[column.name];
  }
  return key;
}
