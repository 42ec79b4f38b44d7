/**
 * The base backup a replica of a local cluster starts from: `pg_basebackup`, or, where
 * the binaries lack it (the npm ones do), `pg_backup_start` / a file copy /
 * `pg_backup_stop`. Internal to `startLocalCluster`.
 *
 * @module
 */

import { execFile } from "node:child_process";
import { copyFile, mkdir, readdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
// @ts-types="@types/pg"
import pg from "pg";
import type { LocalNode } from "./local_cluster.ts";
import type { Runner } from "./pg_process.ts";

const execFileAsync = promisify(execFile);

/** What pg_basebackup leaves out of a base backup: runtime state, not data. */
const CLONE_EMPTIED = [
  "pg_wal",
  "pg_replslot",
  "pg_stat_tmp",
  "pg_dynshmem",
  "pg_notify",
  "pg_serial",
  "pg_snapshots",
  "pg_subtrans",
];

/** Files of a running server that a base backup leaves out. */
const CLONE_SKIPPED = ["postmaster.pid", "postmaster.opts"];

/**
 * Fills a replica's data directory with a base backup of the running primary, ready to
 * start in standby mode. The caller still has to set the replica's port and
 * `primary_conninfo`.
 *
 * @param runner Runs the binaries.
 * @param primary The running primary.
 * @param replica The replica, whose data directory must not exist yet.
 * @param password The `postgres` user's password, if the cluster has one.
 * @returns A promise that resolves once the copy is complete.
 */
export async function copyPrimary(
  runner: Runner,
  primary: LocalNode,
  replica: LocalNode,
  password: string | undefined,
): Promise<void> {
  if (await runner.has("pg_basebackup")) {
    await runner.run(
      "pg_basebackup",
      [
        ...["-h", "127.0.0.1", "-p", String(primary.port), "-U", "postgres"],
        ...["-D", replica.dataDir, "-R", "-X", "stream", "-c", "fast"],
      ],
      password === undefined ? {} : { PGPASSWORD: password },
    );
  } else {
    await cloneReplica(primary, replica);
  }
}

/**
 * A base backup without pg_basebackup (the embedded binaries lack it): a
 * non-exclusive `pg_backup_start` / file copy / `pg_backup_stop` on one
 * session, then `backup_label` and `standby.signal` in the copy. The replica
 * streams the WAL from the backup's start (the primary keeps `wal_keep_size`).
 */
async function cloneReplica(primary: LocalNode, replica: LocalNode): Promise<void> {
  const client = new pg.Client({ connectionString: primary.url, connectionTimeoutMillis: 10_000 });
  client.on("error", () => {});
  await client.connect();
  try {
    await client.query("select pg_backup_start('dbx clone', true)");
    await copyDataDir(primary.dataDir, replica.dataDir);
    const { rows } = await client.query<{ labelfile: string; spcmapfile: string }>(
      "select labelfile, spcmapfile from pg_backup_stop(true)",
    );
    const { labelfile, spcmapfile } = rows[0]!;
    await writeFile(join(replica.dataDir, "backup_label"), labelfile);
    if (spcmapfile) await writeFile(join(replica.dataDir, "tablespace_map"), spcmapfile);
    await writeFile(join(replica.dataDir, "standby.signal"), "");
    // Owned like the primary's (the postgres OS user when we are root).
    const owner = await stat(primary.dataDir);
    await execFileAsync("chown", ["-R", `${owner.uid}:${owner.gid}`, replica.dataDir]);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Copies a live data directory for a base backup, as pg_basebackup would:
 * runtime directories are recreated empty, the postmaster's files are left
 * out, and files that vanish while copying (WAL segments being recycled,
 * temporary files) are skipped — the backup's WAL replay covers them.
 */
async function copyDataDir(from: string, to: string, rel = ""): Promise<void> {
  await mkdir(to, { mode: 0o700 });
  for (const entry of await readdir(from, { withFileTypes: true })) {
    const path = rel === "" ? entry.name : `${rel}/${entry.name}`;
    const source = join(from, entry.name);
    const target = join(to, entry.name);
    if (entry.isDirectory()) {
      if (CLONE_EMPTIED.includes(path)) {
        await mkdir(target, { mode: 0o700 });
        // Recovery needs pg_wal/archive_status to exist.
        if (path === "pg_wal") await mkdir(join(target, "archive_status"), { mode: 0o700 });
      } else {
        await copyDataDir(source, target, path);
      }
    } else if (entry.isFile() && !(rel === "" && CLONE_SKIPPED.includes(entry.name))) {
      await copyFile(source, target).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== "ENOENT") throw error;
      });
    }
  }
}
