import assert from "node:assert/strict";
import { connect, createServer, type Socket } from "node:net";
// @ts-types="@types/pg"
import pg from "pg";
import { faultProxy } from "../src/testing/fault_proxy.ts";
import { findPgBinDir, startLocalCluster } from "../src/testing/local_cluster.ts";

const noPostgres = (await findPgBinDir()) === undefined;
const named = (name: string): string =>
  noPostgres
    ? `${name} [ignored: no PostgreSQL binaries found; install PostgreSQL or set DBX_PG_BIN]`
    : name;

const SECRET = "hunter2";

/** Connects a pg client with an error listener; the caller ends it. */
async function connectPg(url: string, connectionTimeoutMillis = 5_000): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis });
  // A dropped connection emits 'error' on the client besides failing its query.
  client.on("error", () => {});
  await client.connect();
  return client;
}

async function withPg<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connectPg(url);
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Whether `promise` settles (either way) within `ms`; the timer never outlives the call. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The outcome of a promise as a value, so a rejection is never left unhandled. */
function outcome<T>(promise: Promise<T>): Promise<{ value: T } | { error: Error }> {
  return promise.then((value) => ({ value }), (error: Error) => ({ error }));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A port nothing listens on (the OS chose it and it was released again). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen({ host: "127.0.0.1", port: 0 }, resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  assert.ok(address !== null && typeof address === "object");
  return address.port;
}

/** Opens a raw TCP connection and resolves once it is connected. */
async function rawConnect(port: number): Promise<{ socket: Socket; closed: Promise<void> }> {
  const socket = connect({ host: "127.0.0.1", port });
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  return { socket, closed };
}

Deno.test("faultProxy() rejects a bad target or options, naming the field and value", async () => {
  const reject = async (
    target: unknown,
    options: unknown,
    kind: typeof TypeError | typeof RangeError,
    pattern: RegExp,
  ): Promise<void> => {
    const err = await faultProxy(target as string, options as object).then(
      () => assert.fail("expected a rejection"),
      (e: Error) => e,
    );
    assert.ok(err instanceof kind, `${err.name}: ${err.message} is a ${kind.name}`);
    assert.match(err.message, pattern);
    assert.doesNotMatch(err.message, new RegExp(SECRET), "never shows a password");
  };
  await reject("not a url", undefined, TypeError, /'target' must be a postgres:\/\/ URL/);
  await reject(
    `postgres://u:${SECRET}@h:99999/db`,
    undefined,
    TypeError,
    /'target' must be a postgres:\/\/ URL: current value is "postgres:<unparsable url>"/,
  );
  await reject(`http://u:${SECRET}@h/db`, undefined, TypeError, /'target'.*u:\*\*\*@h/);
  await reject(`postgres://u:${SECRET}@h:0/db`, undefined, RangeError, /port from 1 to 65535/);
  await reject("postgres://%2Fvar%2Frun/db", undefined, TypeError, /not a unix socket/);
  await reject("postgres:///db", undefined, TypeError, /'target' must name a host/);
  await reject(null, undefined, TypeError, /'target'.*current value is null/);
  await reject(5432, undefined, TypeError, /'target'.*current value is 5432/);
  await reject({ host: "", port: 5432 }, undefined, TypeError, /'target.host'.*""/);
  await reject({ host: "h", port: "5432" }, undefined, TypeError, /'target.port'.*"5432"/);
  await reject({ host: "h", port: 70_000 }, undefined, RangeError, /'target.port'.*70000/);
  const target = { host: "127.0.0.1", port: 5432 };
  await reject(target, null, TypeError, /'options' must be an object/);
  await reject(target, { port: -1 }, RangeError, /'options.port'.*from 0 to 65535.*-1/);
  await reject(target, { port: 1.5 }, RangeError, /'options.port'.*1\.5/);
  await reject(target, { host: "" }, TypeError, /'options.host'.*""/);
});

Deno.test("faultProxy() never shows a password from the target URL in its error", async () => {
  const message = async (target: string): Promise<string> => {
    const err = await faultProxy(target).then(
      () => assert.fail(`expected ${target} to be rejected`),
      (e: Error) => e,
    );
    assert.ok(err instanceof TypeError || err instanceof RangeError, `${err.name}: ${err.message}`);
    return err.message;
  };
  const cases: [target: string, shown: RegExp][] = [
    // Userinfo form: out of range (unparsable) and zero (parsable) ports.
    ["postgres://app:s3cret@db1:99999/app", /'target' must be a postgres:\/\/ URL/],
    ["postgres://app:s3cret@db1:0/app", /'target' must have a port from 1 to 65535/],
    // Query parameter form, also with another casing and the userinfo form at once.
    ["postgres://app@db1:0/app?password=s3cret", /'target' must have a port from 1 to 65535/],
    ["postgres://app@db1:0/app?sslmode=disable&PassWord=s3cret", /'target' must have a port/],
    ["postgres://app:s3cret@db1:0/app?password=s3cret", /'target' must have a port/],
    ["mysql://app@db1/app?password=s3cret", /'target' must be a postgres:\/\/ URL/],
  ];
  for (const [target, shown] of cases) {
    const text = await message(target);
    assert.match(text, shown);
    assert.ok(!text.includes("s3cret"), `${JSON.stringify(text)} shows the password`);
  }
  assert.match(
    await message("postgres://app@db1:0/app?password=s3cret"),
    /current value is "postgres:\/\/app@db1:0\/app\?password=\*\*\*"/,
  );
  await using proxy = await faultProxy({ host: "127.0.0.1", port: 5432 });
  assert.throws(
    () => proxy.url("mysql://app@db1/app?password=s3cret"),
    (err: Error) => err.message.includes("'base'") && !err.message.includes("s3cret"),
  );
});

Deno.test("faultProxy() rejects with an Error naming the address when the port is taken", async () => {
  await using first = await faultProxy({ host: "127.0.0.1", port: 5432 });
  await assert.rejects(
    faultProxy({ host: "127.0.0.1", port: 5432 }, { port: first.port }),
    (err: Error) => err.message.includes(`listening on 127.0.0.1:${first.port} failed`),
  );
});

Deno.test("url() keeps user, password, database and parameters; rejects non-postgres URLs", async () => {
  await using proxy = await faultProxy(`postgres://u:${SECRET}@db.example:5433/app`);
  assert.equal(proxy.host, "127.0.0.1");
  assert.ok(proxy.port > 0, "the OS chose a port");
  assert.equal(
    proxy.url(`postgres://u:p%40ss@db.example:5433/app?sslmode=disable&application_name=x`),
    `postgres://u:p%40ss@127.0.0.1:${proxy.port}/app?sslmode=disable&application_name=x`,
  );
  assert.equal(
    proxy.url("postgresql://db.example/app"),
    `postgresql://127.0.0.1:${proxy.port}/app`,
  );
  for (const bad of [`mysql://u:${SECRET}@h/db`, `postgres:u:${SECRET}@h`, "no url"]) {
    assert.throws(
      () => proxy.url(bad),
      (err: Error) =>
        err instanceof TypeError && err.message.includes("'base'") &&
        !err.message.includes(SECRET),
    );
  }
});

Deno.test("delay() rejects a negative, infinite or non-numeric latency", async () => {
  await using proxy = await faultProxy({ host: "127.0.0.1", port: 5432 });
  for (const ms of [-1, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31]) {
    assert.throws(() => proxy.delay(ms), RangeError, `delay(${ms})`);
  }
  assert.throws(() => proxy.delay("5" as unknown as number), /'ms'.*"5"/);
  proxy.delay(0);
});

Deno.test("close() returns the same promise every time and stops listening", async () => {
  const proxy = await faultProxy({ host: "127.0.0.1", port: 5432 });
  const first = proxy.close();
  assert.equal(proxy.close(), first);
  assert.equal(proxy[Symbol.asyncDispose](), first);
  await first;
  assert.equal(proxy.connections, 0);
  const socket = connect({ host: "127.0.0.1", port: proxy.port });
  const refused = await new Promise<Error>((resolve) => socket.once("error", resolve));
  assert.match(refused.message, /ECONNREFUSED|refused/i);
  socket.destroy();
});

Deno.test("delay() never reorders bytes when the latency shrinks", async () => {
  const received: { text: string; at: number }[] = [];
  let ended!: () => void;
  const sinkDone = new Promise<void>((resolve) => ended = resolve);
  const sink = createServer((socket) => {
    socket.on("error", () => {});
    socket.on("data", (chunk: Uint8Array) => {
      received.push({ text: new TextDecoder().decode(chunk), at: performance.now() });
    });
    socket.on("close", () => ended());
  });
  await new Promise<void>((resolve) => sink.listen({ host: "127.0.0.1", port: 0 }, resolve));
  try {
    const address = sink.address();
    assert.ok(address !== null && typeof address === "object");
    await using proxy = await faultProxy({ host: "127.0.0.1", port: address.port });
    const { socket, closed } = await rawConnect(proxy.port);
    proxy.delay(300);
    const sent = performance.now();
    socket.write("first,");
    await sleep(50);
    proxy.delay(0);
    socket.write("second");
    socket.end();
    await sinkDone;
    await closed;
    assert.equal(received.map((r) => r.text).join(""), "first,second", "order and end kept");
    const last = received.at(-1);
    assert.ok(last !== undefined && last.at - sent >= 300, "the later bytes waited behind");
  } finally {
    await new Promise<void>((resolve) => sink.close(() => resolve()));
  }
});

Deno.test("faultProxy() closes a client's connection when the node refuses it", async () => {
  await using proxy = await faultProxy({ host: "127.0.0.1", port: await closedPort() });
  const { closed } = await rawConnect(proxy.port);
  await closed;
  assert.equal(proxy.connections, 0);
});

Deno.test({
  name: named("faultProxy() in front of a real PostgreSQL node"),
  ignore: noPostgres,
  async fn(t) {
    await using local = await startLocalCluster({ replicas: 0, password: SECRET });
    await using proxy = await faultProxy(local.masterUrl);
    const url = proxy.url(local.masterUrl);

    await t.step("forwards queries, keeping the URL's user, password and database", async () => {
      assert.equal(new URL(url).password, SECRET);
      await withPg(url, async (client) => {
        const { rows } = await client.query(
          "select current_user as u, current_database() as db, inet_server_port() as port",
        );
        assert.deepEqual(rows, [{ u: "postgres", db: "postgres", port: local.nodes[0]!.port }]);
        assert.equal(proxy.connections, 1);
      });
    });

    await t.step("delay(200) makes a round trip take at least 200 ms", async () => {
      await withPg(url, async (client) => {
        proxy.delay(200);
        try {
          const start = performance.now();
          await client.query("select 1");
          const elapsed = performance.now() - start;
          assert.ok(elapsed >= 200, `select 1 took ${elapsed.toFixed(0)} ms`);
        } finally {
          proxy.delay(0);
        }
      });
    });

    await t.step("delay() keeps a large result intact", async () => {
      await withPg(url, async (client) => {
        proxy.delay(5);
        try {
          const { rows } = await client.query<{ s: string }>(
            "select string_agg(i::text, ',' order by i) as s from generate_series(1, 200000) i",
          );
          const expected = Array.from({ length: 200_000 }, (_, i) => i + 1).join(",");
          assert.ok(rows[0]?.s === expected, "every byte arrives once, in order");
        } finally {
          proxy.delay(0);
        }
      });
    });

    await t.step("blackhole() hangs statements and new connections; heal() ends them", async () => {
      const client = await connectPg(url);
      try {
        proxy.blackhole();
        const pending = outcome(client.query("select 1"));
        assert.equal(await settlesWithin(pending, 300), false, "no answer while blackholed");
        await assert.rejects(connectPg(url, 300), /timeout/i, "a new connection times out");
        proxy.heal();
        const result = await pending;
        assert.ok("error" in result, "the hung statement fails instead of hanging forever");
        assert.match(result.error.message, /terminated|closed|ECONNRESET/i);
      } finally {
        await client.end().catch(() => {});
      }
      const rows = await withPg(url, async (c) => (await c.query("select 2 as two")).rows);
      assert.deepEqual(rows, [{ two: 2 }], "new connections work after heal()");
    });

    await t.step("reset() fails a statement hung by blackhole()", async () => {
      const client = await connectPg(url);
      try {
        proxy.blackhole();
        const pending = outcome(client.query("select 1"));
        assert.equal(await settlesWithin(pending, 300), false, "no answer while blackholed");
        proxy.reset();
        assert.equal(proxy.connections, 0);
        const result = await pending;
        assert.ok("error" in result, "the hung statement fails instead of hanging forever");
      } finally {
        await client.end().catch(() => {});
        proxy.heal();
      }
      const rows = await withPg(url, async (c) => (await c.query("select 3 as three")).rows);
      assert.deepEqual(rows, [{ three: 3 }]);
    });

    await t.step("reset() fails a statement in flight with a connection error", async () => {
      await withPg(url, async (client) => {
        const pending = outcome(client.query("select pg_sleep(5)"));
        await sleep(100);
        proxy.reset();
        assert.equal(proxy.connections, 0);
        const result = await pending;
        // pg_sleep(5) would have answered with a row: only the reset can fail it.
        assert.ok("error" in result, "the statement failed");
        assert.match(result.error.message, /terminated|closed|ECONNRESET/i);
      });
      const rows = await withPg(url, async (c) => (await c.query("select 4 as four")).rows);
      assert.deepEqual(rows, [{ four: 4 }], "new connections still work");
    });

    await t.step(
      "close() drops open connections; later calls return the same promise",
      async () => {
        const client = await connectPg(url);
        try {
          const pending = outcome(client.query("select pg_sleep(5)"));
          await sleep(50);
          const closing = proxy.close();
          assert.equal(proxy.close(), closing);
          await closing;
          assert.equal(proxy.connections, 0);
          assert.ok("error" in (await pending), "the statement in flight failed");
          await assert.rejects(connectPg(url), /ECONNREFUSED|refused/i);
        } finally {
          await client.end().catch(() => {});
        }
      },
    );
  },
});
