/**
 * Runs Kysely's own PostgreSQL test suite (`test/node` of its repository,
 * mocha on Node) against a throwaway local cluster three ways: on stock
 * `pg`, on `new PostgresDialect({ pool: cluster.pgPool() })` and on
 * `dbxDialect(cluster)`; prints each run's pass count and the failed tests.
 *
 * Needs a checkout of kysely-org/kysely and the npm registry (it installs
 * the suite's dev dependencies and the Kysely release dbx imports), so CI
 * does not run it. The suite's library is the npm release of `kysely` that
 * `deno.lock` resolves (the one dbx's dialect imports), its tests are the
 * checkout's:
 *
 * ```sh
 * deno run -A tools/orm_suites/kysely_suite.ts /tmp/kysely            # all three
 * deno run -A tools/orm_suites/kysely_suite.ts /tmp/kysely dialect    # one
 * ```
 *
 * @module
 */

import { join } from "node:path";
import { startLocalCluster } from "../../src/testing/local_cluster.ts";
import { lockedVersion, prepareCheckout, run, withLocalCluster } from "./suite_support.ts";

const MODES = ["pg", "pgpool", "dialect"] as const;
type Mode = typeof MODES[number];

const LABELS: Record<Mode, string> = {
  pg: "stock pg.Pool",
  pgpool: "PostgresDialect({ pool: cluster.pgPool() })",
  dialect: "dbxDialect(cluster)",
};

/** Dev dependencies of Kysely's package.json that its Node suite imports. */
const SUITE_DEPS = [
  "@electric-sql/pglite",
  "@types/better-sqlite3",
  "@types/chai",
  "@types/chai-as-promised",
  "@types/mocha",
  "@types/node",
  "@types/pg",
  "@types/pg-cursor",
  "@types/prototype-pollution-vulnerable-lodash.merge-dont-upgrade",
  "@types/sinon",
  "better-sqlite3",
  "chai",
  "chai-as-promised",
  "esbuild",
  "mocha",
  "mysql2",
  "pathe",
  "pg",
  "pg-cursor",
  "prototype-pollution-vulnerable-lodash.merge-dont-upgrade",
  "sinon",
  "std-env",
  "tarn",
  "tedious",
  "tsx",
  "typescript",
];

const SETUP = "test/node/src/test-setup.ts";

/** The stock `postgres` dialect of test-setup.ts, replaced by the harness's. */
const STOCK_DIALECT = `    dialect: new PostgresDialect({
      controlClient: Client,
      pool: async () =>
        new Pool(DIALECT_CONFIGS.postgres).on('error', (error) =>
          PG_ERRORS.push(error),
        ),
      cursor: Cursor,
    }),`;

const HARNESS_DIALECT = `    dialect: postgresDialect({
      PostgresDialect,
      Pool,
      Client,
      Cursor,
      config: POSTGRES_CONFIG,
      errors: PG_ERRORS,
    }),`;

/** Patches test-setup.ts: the local cluster's port, and the harness's dialect. */
async function patchSetup(dir: string): Promise<void> {
  const path = join(dir, SETUP);
  let text = await Deno.readTextFile(path);
  if (text.includes("postgresDialect(")) return;
  const replace = (from: string, to: string) => {
    if (!text.includes(from)) throw new Error(`${SETUP} has changed: no ${JSON.stringify(from)}`);
    text = text.replace(from, to);
  };
  replace(STOCK_DIALECT, HARNESS_DIALECT);
  replace("  host: 'localhost',\n  user: 'kysely',", "  host: '127.0.0.1',\n  user: 'kysely',");
  replace("  port: 5434,", "  port: Number(process.env.KYSELY_PG_PORT),");
  replace(
    "chai.use(chaiAsPromised)",
    "import { postgresDialect } from './dbx-harness.js'\n\nchai.use(chaiAsPromised)",
  );
  await Deno.writeTextFile(path, text);
  await Deno.writeTextFile(
    join(dir, "test/node/src/dbx-harness.d.ts"),
    "export function postgresDialect(parts: any): any\n",
  );
}

/** Installs, builds and patches the checkout once; bundles the harness every time. */
async function prepare(dir: string): Promise<void> {
  const version = await lockedVersion("kysely");
  await prepareCheckout(dir, {
    deps: SUITE_DEPS,
    extraDeps: { "pg-copy-streams": await lockedVersion("pg-copy-streams") },
    library: { name: "kysely", version, into: "dist" },
  });
  await patchSetup(dir);
  await run(join(dir, "node_modules/.bin/tsc"), ["-p", "test/node"], dir, { allowFail: true });
  await run(join(dir, "node_modules/.bin/esbuild"), [
    new URL("./kysely_harness.ts", import.meta.url).pathname,
    "--bundle",
    "--platform=node",
    "--format=esm",
    "--target=node20",
    "--packages=external",
    `--outfile=${join(dir, "test/node/dist/dbx-harness.js")}`,
  ], dir);
}

interface MochaReport {
  stats: { passes: number; failures: number; pending: number; tests: number };
  failures: { fullTitle: string; err: { message?: string } }[];
}

async function runMode(
  dir: string,
  mode: Mode,
  env: Record<string, string>,
): Promise<MochaReport> {
  const report = await Deno.makeTempFile({ prefix: `kysely-${mode}-`, suffix: ".json" });
  await run(
    "node",
    [
      "node_modules/.bin/mocha",
      "--timeout",
      "15000",
      "--exit",
      "--reporter",
      "json",
      "--reporter-option",
      `output=${report}`,
      "test/node/dist/**/*.test.js",
    ],
    dir,
    { env: { ...env, DIALECTS: "postgres", DBX_KYSELY_MODE: mode }, allowFail: true },
  );
  const parsed = JSON.parse(await Deno.readTextFile(report)) as MochaReport;
  await Deno.remove(report);
  return parsed;
}

async function main(): Promise<void> {
  const [dir, ...only] = Deno.args;
  if (dir === undefined) {
    console.error("usage: kysely_suite.ts <kysely checkout> [pg|pgpool|dialect ...]");
    Deno.exit(2);
  }
  const modes = only.length === 0 ? [...MODES] : only as Mode[];
  for (const m of modes) if (!MODES.includes(m)) throw new Error(`unknown mode ${m}`);
  await prepare(dir);
  const results: string[] = [];
  await withLocalCluster(startLocalCluster, "kysely", "kysely_test", async (urls) => {
    for (const mode of modes) {
      const { stats, failures } = await runMode(dir, mode, {
        KYSELY_PG_PORT: String(urls.port),
        DBX_MASTER_URL: urls.master,
        DBX_REPLICA_URLS: urls.replicas.join(","),
      });
      const line = `kysely ${mode} (${LABELS[mode]}): ${stats.passes} passed, ${stats.failures} ` +
        `failed, ${stats.pending} skipped`;
      results.push(line);
      console.log(line);
      for (const f of failures) {
        console.log(`  FAILED ${f.fullTitle}: ${(f.err.message ?? "").split("\n")[0]}`);
      }
    }
  });
  console.log(results.join("\n"));
}

if (import.meta.main) await main();
