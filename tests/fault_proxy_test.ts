import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { faultProxy, findPgBinDir, startLocalCluster } from "../src/testing/mod.ts";

const ignore = (await findPgBinDir()) === undefined;
const named = (name: string): string =>
  ignore ? `${name} [ignored: no PostgreSQL binaries; install PostgreSQL or set DBX_PG_BIN]` : name;

async function withClient<T>(
  url: string,
  fn: (c: pg.Client) => Promise<T>,
  connectTimeoutMs = 2_000,
): Promise<T> {
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: connectTimeoutMs,
  });
  client.on("error", () => {});
  try {
    await client.connect();
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

Deno.test("faultProxy() validates its target and options", async () => {
  await assert.rejects(faultProxy("not a url"), TypeError);
  await assert.rejects(faultProxy({ host: "127.0.0.1", port: 70_000 }), /port: 1-65535/);
  await assert.rejects(
    faultProxy({ host: "127.0.0.1", port: 5432 }, { port: -1 }),
    /'options.port'/,
  );
  await using proxy = await faultProxy("postgres://u:secret@127.0.0.1:5999/db?sslmode=disable");
  const url = new URL(proxy.url("postgres://u:secret@127.0.0.1:5999/db?sslmode=disable"));
  assert.equal(url.port, String(proxy.port));
  assert.equal(url.password, "secret");
  assert.equal(url.pathname, "/db");
  assert.equal(url.searchParams.get("sslmode"), "disable");
  assert.throws(() => proxy.delay(-1), RangeError);
  const first = proxy.close();
  assert.equal(proxy.close(), first);
  await first;
});

Deno.test({
  name: named("faultProxy() forwards, delays, blackholes, resets and heals real connections"),
  ignore,
  async fn(t) {
    await using local = await startLocalCluster({ replicas: 0 });
    await using proxy = await faultProxy(local.masterUrl);
    const url = proxy.url(local.masterUrl);

    await t.step("forwards queries", async () => {
      const rows = await withClient(url, async (c) => (await c.query("select 1 as one")).rows);
      assert.deepEqual(rows, [{ one: 1 }]);
    });

    await t.step("delay() adds latency to each round trip", async () => {
      await withClient(url, async (c) => {
        proxy.delay(150);
        const start = performance.now();
        await c.query("select 1");
        assert.ok(performance.now() - start >= 150, "at least the added latency");
        proxy.delay(0);
      });
    });

    await t.step(
      "blackhole() hangs statements and new connections; reset() fails them",
      async () => {
        await withClient(url, async (c) => {
          proxy.blackhole();
          const pending = c.query("select 1").then(() => "answered", (e: Error) => e);
          const raced = await Promise.race([
            pending,
            new Promise((r) => setTimeout(() => r("hung"), 300)),
          ]);
          assert.equal(raced, "hung");
          await assert.rejects(
            withClient(url, (c2) => c2.query("select 1"), 300),
            /timeout|terminated/i,
          );
          proxy.reset();
          const outcome = await pending;
          assert.ok(
            outcome instanceof Error,
            "the hung statement fails instead of hanging forever",
          );
        });
        proxy.heal();
        const rows = await withClient(url, async (c) => (await c.query("select 2 as two")).rows);
        assert.deepEqual(rows, [{ two: 2 }], "after heal() new connections work");
      },
    );

    await t.step("reset() drops a statement in flight", async () => {
      await withClient(url, async (c) => {
        const pending = c.query("select pg_sleep(5)").then(() => undefined, (e: Error) => e);
        await new Promise((r) => setTimeout(r, 100));
        const start = performance.now();
        proxy.reset();
        const err = await pending;
        assert.ok(err instanceof Error);
        assert.match(err.message, /terminated|ECONNRESET|closed/i);
        assert.ok(performance.now() - start < 4_000, "failed at once, not after the sleep");
      });
      assert.equal(proxy.connections, 0);
    });
  },
});
