/**
 * The README's install recipe, as written: a scratch app outside the
 * repository made of the snippets the README marks `<!-- readme-app: file -->`
 * (its `deno.json`, its `package.json`, its `main.ts`), with this repository
 * as `../dbx`, run against the test database on Deno without a
 * `package.json`, on Bun after `bun install`, and on Deno again with Bun's
 * `package.json` and `node_modules` beside it.
 */

import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { named, noPostgres } from "./helpers.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** The README's snippets marked for the scratch app, by file name. */
async function snippets(): Promise<Map<string, string>> {
  const readme = await Deno.readTextFile(join(ROOT, "README.md"));
  const found = new Map<string, string>();
  for (const m of readme.matchAll(/<!-- readme-app: (\S+) -->\s*```\w*\n([\s\S]*?)```/g)) {
    found.set(m[1]!, m[2]!);
  }
  return found;
}

/** Where a command is on PATH, or undefined. */
function which(command: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    const path = join(dir, command);
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Runs a command in `cwd`; returns its output, failing the test with it when it fails. */
async function run(cmd: string[], cwd: string, env: Record<string, string>): Promise<string> {
  const { code, stdout, stderr } = await new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    cwd,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(stdout);
  const err = new TextDecoder().decode(stderr);
  assert.equal(code, 0, `${cmd.join(" ")} failed (${code}):\n${out}\n${err}`);
  return out;
}

/** The JSON line main.ts prints, checked. */
function checkOutput(runtime: string, out: string): void {
  const last = out.trim().split("\n").at(-1) ?? "";
  const result = JSON.parse(last);
  assert.deepEqual(
    result,
    { body: "hello again", kysely: "hello again", drizzle: 1, onePg: true },
    `${runtime}: ${last}`,
  );
}

const bun = which("bun");

Deno.test({
  name: named(
    `the README's install recipe runs as written on Deno and on Bun${
      bun === undefined ? " [Bun part ignored: no bun on PATH]" : ""
    }`,
  ),
  ignore: noPostgres,
  async fn() {
    const urls = testDatabaseUrls();
    if (urls === undefined) return; // `deno task test` sets them when PostgreSQL is there
    const files = await snippets();
    assert.deepEqual([...files.keys()].sort(), ["deno.json", "main.ts", "package.json"]);
    const scratch = await Deno.makeTempDir({ prefix: "dbx-readme-app-" });
    try {
      await Deno.symlink(ROOT, join(scratch, "dbx"));
      const app = join(scratch, "app");
      await Deno.mkdir(app);
      await Deno.writeTextFile(join(app, "deno.json"), files.get("deno.json")!);
      await Deno.writeTextFile(join(app, "main.ts"), files.get("main.ts")!);
      const env = {
        DATABASE_URL: urls.master,
        REPLICA_URLS: urls.replicas.join(","),
        NO_COLOR: "1",
      };
      const deno = Deno.execPath();
      // Deno, no package.json: type-checked under the app's settings (Deno's defaults), then run.
      await run([deno, "check", "main.ts"], app, env);
      checkOutput("deno", await run([deno, "run", "-A", "main.ts"], app, env));
      if (bun === undefined) return;
      await Deno.writeTextFile(join(app, "package.json"), files.get("package.json")!);
      await run([bun, "install"], app, env);
      checkOutput("bun", await run([bun, "main.ts"], app, env));
      // Deno again, with Bun's package.json and node_modules beside it.
      checkOutput("deno beside package.json", await run([deno, "run", "-A", "main.ts"], app, env));
    } finally {
      await Deno.remove(scratch, { recursive: true });
    }
  },
});
