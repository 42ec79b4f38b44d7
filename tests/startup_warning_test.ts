/**
 * A configured node that does not answer at startup is visible: one
 * `console.warn` per such node when no logger was given, a warn log to a
 * given logger, nothing with `noopLogger`; `requireAllNodes` makes
 * `connect()` fail instead, naming each node that did not answer.
 */

import assert from "node:assert/strict";
import { connect, NoHealthyNodeError, noopLogger } from "../mod.ts";
import { testLogger } from "../src/testing/mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { configError } from "./helpers.ts";

const urls = testDatabaseUrls();
/** Appended to the names of tests that need the database, when it is not configured. */
const why = urls === undefined ? " (ignored: DBX_TEST_MASTER_URL is not set)" : "";

/** A loopback port nothing listens on (it was free a moment ago): connections are refused. */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Runs `fn` with `console.warn` recording its calls, each joined into one line. */
async function capturingWarnings(fn: () => Promise<void>): Promise<string[]> {
  const warnings: string[] = [];
  const original = console.warn;
  console.warn = (...args: unknown[]) => void warnings.push(args.map(String).join(" "));
  try {
    await fn();
  } finally {
    console.warn = original;
  }
  return warnings;
}

Deno.test({
  name: "connect() without a logger warns on the console about each replica it cannot reach" + why,
  ignore: urls === undefined,
  async fn() {
    const port = closedPort();
    const dead = `postgres://postgres:s3cret@127.0.0.1:${port}/postgres`;
    const warnings = await capturingWarnings(async () => {
      await using cluster = await connect({ master: urls!.master, replicas: [dead] });
      // It started on the rest of the cluster: reads go to the primary meanwhile.
      assert.deepEqual(await cluster.readQuery("select 1 as one"), [{ one: 1 }]);
    });
    assert.equal(warnings.length, 1, warnings.join("\n"));
    const [warning] = warnings as [string];
    assert.ok(warning.includes(`127.0.0.1:${port}`), `names the node: ${warning}`);
    assert.match(warning, /ECONNREFUSED/);
    assert.match(warning, /startup/);
    assert.doesNotMatch(warning, /s3cret/);
  },
});

Deno.test({
  name: "connect() with a logger logs an unreachable replica there, not on the console" + why,
  ignore: urls === undefined,
  async fn() {
    const port = closedPort();
    const logger = testLogger();
    const warnings = await capturingWarnings(async () => {
      await using _cluster = await connect({
        master: urls!.master,
        replicas: [`postgres://postgres@127.0.0.1:${port}/postgres`],
        logger,
      });
    });
    assert.deepEqual(warnings, []);
    const logged = logger.entries.filter((e) => e.level === "warn");
    assert.equal(logged.length, 1);
    assert.equal(logged[0]!.attrs?.node, `127.0.0.1:${port}`);
    assert.match(String(logged[0]!.attrs?.error), /ECONNREFUSED/);
  },
});

Deno.test({
  name: "connect() with noopLogger says nothing about an unreachable replica" + why,
  ignore: urls === undefined,
  async fn() {
    const port = closedPort();
    const warnings = await capturingWarnings(async () => {
      await using _cluster = await connect({
        master: urls!.master,
        replicas: [`postgres://postgres@127.0.0.1:${port}/postgres`],
        logger: noopLogger,
      });
    });
    assert.deepEqual(warnings, []);
  },
});

Deno.test({
  name: "connect() with requireAllNodes fails naming each node that did not answer" + why,
  ignore: urls === undefined,
  async fn() {
    const ports = [closedPort(), closedPort()];
    const warnings = await capturingWarnings(async () => {
      await assert.rejects(
        connect({
          master: urls!.master,
          replicas: ports.map((p) => `postgres://postgres:s3cret@127.0.0.1:${p}/postgres`),
          requireAllNodes: true,
          retry: { maxAttempts: 2, baseDelayMs: 10, maxDelayMs: 20 },
        }),
        (err: unknown) => {
          assert.ok(err instanceof NoHealthyNodeError, `got ${err}`);
          for (const p of ports) assert.ok(err.message.includes(`127.0.0.1:${p}`), err.message);
          assert.match(err.message, /requireAllNodes/);
          assert.match(err.message, /ECONNREFUSED/);
          assert.doesNotMatch(err.message, /s3cret/);
          assert.equal(err.kind, "connection");
          return true;
        },
      );
    });
    assert.deepEqual(warnings, [], "the error says it all: no warning besides");
  },
});

Deno.test({
  name: "connect() with requireAllNodes starts when every node answers" + why,
  ignore: urls === undefined,
  async fn() {
    const warnings = await capturingWarnings(async () => {
      await using cluster = await connect({
        master: urls!.master,
        replicas: urls!.replicas,
        requireAllNodes: true,
      });
      assert.ok(cluster.stats().nodes.every((n) => n.healthy));
    });
    assert.deepEqual(warnings, []);
  },
});

Deno.test("requireAllNodes must be a boolean", () => {
  const err = configError({ master: "postgres://app@db1/app", requireAllNodes: "yes" });
  assert.equal(err.field, "requireAllNodes");
  assert.match(err.message, /'requireAllNodes' must be a boolean/);
});
