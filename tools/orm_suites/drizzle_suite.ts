/**
 * Runs Drizzle's node-postgres integration test (`integration-tests/tests/pg/
 * node-postgres.test.ts` of its repository, vitest on Node) against a
 * throwaway local cluster two ways: on the test's own `pg.Client` and on
 * `drizzle(cluster.pgPool())`; prints each run's pass count and the failed
 * tests. Needs a checkout of drizzle-team/drizzle-orm and the npm registry
 * (it installs the test's dependencies and the `drizzle-orm` release that
 * `deno.lock` resolves), so CI does not run it:
 *
 * ```sh
 * deno run -A tools/orm_suites/drizzle_suite.ts /tmp/drizzle-orm/integration-tests
 * ```
 *
 * @module
 */

import { join } from "node:path";
import { startLocalCluster } from "../../src/testing/local_cluster.ts";
import { lockedVersion, prepareCheckout, run, withLocalCluster } from "./suite_support.ts";

const MODES = ["pg", "pgpool"] as const;
type Mode = typeof MODES[number];

const LABELS: Record<Mode, string> = {
  pg: "stock pg.Client",
  pgpool: "drizzle(cluster.pgPool())",
};

const TEST = "tests/pg/node-postgres.test.ts";

const STOCK_CLIENT = `\t\tclient = new Client(connectionString);
\t\tawait client.connect();
\t\treturn client;`;

const HARNESS_CLIENT = `\t\tclient = (await suiteClient(() => new Client(connectionString))) as any;
\t\treturn client;`;

const VITEST_CONFIG = `import { resolve } from 'node:path';
import { defineConfig } from 'vitest/config';

export default defineConfig({
\tresolve: { alias: { '~': resolve(import.meta.dirname, 'tests') } },
\ttest: {
\t\tinclude: ['${TEST}'],
\t\ttestTimeout: 100000,
\t\thookTimeout: 200000,
\t\tisolate: true,
\t\tpoolOptions: { threads: { singleThread: true } },
\t\tmaxWorkers: 1,
\t\tfileParallelism: false,
\t},
});
`;

async function patchTest(dir: string): Promise<void> {
  const path = join(dir, TEST);
  let text = await Deno.readTextFile(path);
  if (!text.includes("suiteClient(")) {
    if (!text.includes(STOCK_CLIENT)) throw new Error(`${TEST} has changed: no stock client`);
    text = text.replace(STOCK_CLIENT, HARNESS_CLIENT);
    text = `import { suiteClient } from './dbx-harness.js';\n${text}`;
    await Deno.writeTextFile(path, text);
  }
  await Deno.writeTextFile(join(dir, "vitest.dbx.config.ts"), VITEST_CONFIG);
}

async function prepare(dir: string): Promise<void> {
  await prepareCheckout(dir, {
    deps: ["vitest", "pg", "async-retry", "dockerode", "get-port", "uuid", "keyv"],
    extraDeps: {
      "drizzle-orm": await lockedVersion("drizzle-orm"),
      "pg-copy-streams": await lockedVersion("pg-copy-streams"),
      "esbuild": "^0.25.0",
    },
  });
  await patchTest(dir);
  await run(join(dir, "node_modules/.bin/esbuild"), [
    new URL("./drizzle_harness.ts", import.meta.url).pathname,
    "--bundle",
    "--platform=node",
    "--format=esm",
    "--target=node20",
    "--packages=external",
    `--outfile=${join(dir, "tests/pg/dbx-harness.js")}`,
  ], dir);
}

interface VitestReport {
  numPassedTests: number;
  numFailedTests: number;
  numPendingTests: number;
  testResults: {
    assertionResults: { fullName: string; status: string; failureMessages: string[] }[];
  }[];
}

async function main(): Promise<void> {
  const [dir, ...only] = Deno.args;
  if (dir === undefined) {
    console.error("usage: drizzle_suite.ts <drizzle-orm checkout>/integration-tests [pg|pgpool]");
    Deno.exit(2);
  }
  const modes = only.length === 0 ? [...MODES] : only as Mode[];
  await prepare(dir);
  const results: string[] = [];
  await withLocalCluster(startLocalCluster, "drizzle_it", "drizzle", async (urls) => {
    for (const mode of modes) {
      const report = await Deno.makeTempFile({ prefix: `drizzle-${mode}-`, suffix: ".json" });
      await run(
        "node",
        [
          "node_modules/.bin/vitest",
          "run",
          "--config",
          "vitest.dbx.config.ts",
          "--reporter=json",
          `--outputFile=${report}`,
        ],
        dir,
        {
          env: {
            PG_CONNECTION_STRING: urls.master,
            DBX_DRIZZLE_MODE: mode,
            DBX_MASTER_URL: urls.master,
            DBX_REPLICA_URLS: urls.replicas.join(","),
          },
          allowFail: true,
        },
      );
      const parsed = JSON.parse(await Deno.readTextFile(report)) as VitestReport;
      await Deno.remove(report);
      const line = `drizzle ${mode} (${LABELS[mode]}): ${parsed.numPassedTests} passed, ` +
        `${parsed.numFailedTests} failed, ${parsed.numPendingTests} skipped`;
      results.push(line);
      console.log(line);
      for (const file of parsed.testResults) {
        for (const a of file.assertionResults) {
          if (a.status !== "failed") continue;
          // Drizzle's "Failed query: <sql> params: ..." says why in its cause, further down.
          const why = (a.failureMessages[0] ?? "").split("\n").filter((l) => l.trim() !== "")
            .slice(0, 12).join(" | ");
          console.log(`  FAILED ${a.fullName}: ${why.slice(0, 1200)}`);
        }
      }
    }
  });
  console.log(results.join("\n"));
}

if (import.meta.main) await main();
