/**
 * Every optional option field accepts `undefined` (issue #22 item 2): a value
 * typed `T | undefined` can be passed as it is, under
 * `exactOptionalPropertyTypes` (checked by `deno task check`) and at run time
 * (an explicit `undefined` means the default).
 */

import assert from "node:assert/strict";
import { type ClusterConfig, resolveConfig } from "../mod.ts";
import type {
  ConnectionOptions,
  ListenOptions,
  PgPoolOptions,
  ReadOptions,
  ReadStreamOptions,
  RunTxOptions,
  SessionOptions,
} from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";

/** What a caller's optional inputs look like: maybe there, maybe not. */
function maybe<T>(value: T | undefined = undefined): T | undefined {
  return value;
}

dbTest(
  "every option field accepts an explicit undefined, meaning its default",
  async (cluster) => {
    const read: ReadOptions = {
      signal: maybe<AbortSignal>(),
      timeoutMs: maybe<number>(),
      maxLagMs: maybe<number>(),
      consistentWith: maybe<string>(),
    };
    assert.deepEqual(await cluster.readQuery("select 1 as one", [], read), [{ one: 1 }]);
    assert.deepEqual(await cluster.query("select 1 as one", [], read), [{ one: 1 }]);
    const session: SessionOptions = { consistentWith: maybe<string>() };
    assert.equal(await cluster.session(() => Promise.resolve(7), session), 7);
    const tx: RunTxOptions = {
      isolation: maybe<"serializable">(),
      readOnly: maybe<boolean>(),
      deferrable: maybe<boolean>(),
      retries: maybe<number>(),
      signal: maybe<AbortSignal>(),
      timeoutMs: maybe<number>(),
    };
    assert.equal(
      await cluster.runTx((t) => t.queryRow<{ n: number }>("select 2 as n"), tx).then((r) => r.n),
      2,
    );
    const batch = await cluster.sendBatch([{ sql: "select 3 as n" }], {
      atomic: maybe<true>(),
      signal: maybe<AbortSignal>(),
      timeoutMs: maybe<number>(),
    });
    assert.deepEqual(batch[0]?.rows, [{ n: 3 }]);
    const stream: ReadStreamOptions = { ...read, batchSize: maybe<number>() };
    const streamed: unknown[] = [];
    for await (const row of cluster.readStream("select 4 as n", [], stream)) streamed.push(row);
    assert.deepEqual(streamed, [{ n: 4 }]);
    const conn: ConnectionOptions = {
      route: maybe<"replica">(),
      signal: maybe<AbortSignal>(),
      timeoutMs: maybe<number>(),
    };
    assert.equal(
      await cluster.withConnection((c) => c.queryRow<{ n: number }>("select 5 as n"), conn).then((
        r,
      ) => r.n),
      5,
    );
    const listen: ListenOptions = {
      onReconnect: maybe<ListenOptions["onReconnect"]>(),
      signal: maybe<AbortSignal>(),
      timeoutMs: maybe<number>(),
    };
    const sub = await cluster.listen("options_undefined", () => {}, listen);
    await sub.unlisten();
    const pool: PgPoolOptions = { route: maybe<"replica">() };
    assert.deepEqual((await cluster.pgPool(pool).query("select 6 as n")).rows, [{ n: 6 }]);
  },
);

Deno.test("every config field accepts an explicit undefined, meaning its default", () => {
  const url = "postgres://app@db1:5432/app";
  const config: ClusterConfig = {
    master: { url, name: maybe(), pool: maybe(), tracer: maybe(), ssl: maybe(), session: maybe() },
    replicas: maybe(),
    pool: {
      max: maybe(),
      min: maybe(),
      idleTimeoutMs: maybe(),
      maxLifetimeMs: maybe(),
      connectTimeoutMs: maybe(),
    },
    retry: {
      maxAttempts: maybe(),
      baseDelayMs: maybe(),
      maxDelayMs: maybe(),
      waitForPrimaryMs: maybe(),
      retryable: maybe(),
    },
    healthCheck: { intervalMs: maybe(), timeoutMs: maybe(), failuresBeforeDown: maybe() },
    balancer: maybe(),
    session: maybe(),
    logger: maybe(),
    metrics: maybe(),
    tracer: maybe(),
    slowQueryThresholdMs: maybe(),
    maxLagMs: maybe(),
    pipeline: { connections: maybe(), maxDepth: maybe() },
    types: maybe(),
    statementCache: maybe(),
    requirePrimary: maybe(),
    requireAllNodes: maybe(),
  };
  const resolved = resolveConfig(config);
  const plain = resolveConfig({ master: url });
  assert.deepEqual(resolved.nodes[0]!.pool, plain.nodes[0]!.pool);
  assert.deepEqual(resolved.retry.maxAttempts, plain.retry.maxAttempts);
  assert.deepEqual(resolved.healthCheck, plain.healthCheck);
  assert.deepEqual(resolved.pipeline, plain.pipeline);
  assert.equal(resolved.statementCache, plain.statementCache);
  assert.equal(resolved.requirePrimary, plain.requirePrimary);
  assert.equal(resolved.nodes[0]!.name, plain.nodes[0]!.name);
});
