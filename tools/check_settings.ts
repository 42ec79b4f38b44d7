/**
 * `deno task check:settings`: dbx's sources are type-checked inside the
 * user's project, with the user's compiler settings. This checks `mod.ts`
 * and `src/` under the settings users commonly have: `strict: false`,
 * Deno's defaults, and strict with `exactOptionalPropertyTypes` (the
 * repository's own `deno.json` adds `noUncheckedIndexedAccess` and more,
 * checked by `deno task check`).
 *
 * @module
 */

const VARIANTS: Record<string, Record<string, boolean>> = {
  "strict: false": { strict: false },
  "Deno's defaults": {},
  "exactOptionalPropertyTypes": { strict: true, exactOptionalPropertyTypes: true },
};

const root = new URL("..", import.meta.url).pathname;
const base = JSON.parse(await Deno.readTextFile(`${root}deno.json`));
const config = `${root}deno.check-settings.json`;
let failed = 0;
try {
  for (const [name, compilerOptions] of Object.entries(VARIANTS)) {
    await Deno.writeTextFile(config, JSON.stringify({ ...base, compilerOptions }));
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["check", "--no-lock", "--config", config, "mod.ts", "src/"],
      cwd: root,
      stdout: "null",
      stderr: "piped",
    }).output();
    const errors = new TextDecoder().decode(stderr).split("\n").filter((l) => l.includes("ERROR"));
    console.log(`check:settings: ${name}: ${code === 0 ? "ok" : `${errors.length} errors`}`);
    if (code !== 0) {
      failed++;
      console.error(new TextDecoder().decode(stderr));
    }
  }
} finally {
  await Deno.remove(config).catch(() => {});
}
if (failed > 0) Deno.exit(1);
