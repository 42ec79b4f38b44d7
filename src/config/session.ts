/**
 * Session settings: the `session` setting (cluster-wide and per node) and
 * the URL's `options=-c name=value`, checked, merged, and written as the
 * `options` startup parameter every connection dbx opens sends.
 *
 * @module
 */

import { fail, plainObject } from "./check.ts";

/** A PostgreSQL setting name: identifiers joined by dots (`search_path`, `app.tenant`). */
const GUC_NAME = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/;

/**
 * Checks a `session` setting.
 *
 * @param field The setting's path, e.g. `session` or `replicas[0].session`.
 * @param value The user's value.
 * @returns Setting names (lower-cased, as PostgreSQL compares them) to values.
 * @throws {ConfigError} naming `<field>.<name>` for a bad name or value.
 */
export function resolveSession(field: string, value: unknown): Record<string, string> {
  const raw = plainObject(field, value);
  const out: Record<string, string> = {};
  for (const [name, setting] of Object.entries(raw)) {
    if (!GUC_NAME.test(name)) {
      fail(
        `${field}.${name}`,
        "must be a PostgreSQL setting name (letters, digits and '_', parts joined by '.')",
        name,
      );
    }
    if (typeof setting !== "string") fail(`${field}.${name}`, "must be a string", setting);
    if (setting.includes("\0")) {
      fail(`${field}.${name}`, "must not contain a NUL character", `${setting.length} characters`);
    }
    out[name.toLowerCase()] = setting;
  }
  return out;
}

/** Splits an options string as PostgreSQL does: whitespace separates, a backslash escapes. */
function splitOptions(text: string): string[] {
  const words: string[] = [];
  let word: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (/\s/.test(ch)) {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else if (ch === "\\" && i + 1 < text.length) {
      word = (word ?? "") + text[++i];
    } else {
      word = (word ?? "") + ch;
    }
  }
  if (word !== undefined) words.push(word);
  return words;
}

/**
 * The settings of a URL's `options` parameter (`-c name=value`,
 * `-cname=value` or `--name=value`, as PostgreSQL reads them).
 *
 * @param field The URL's field, for errors.
 * @param options The decoded parameter value.
 * @returns Setting names (lower-cased) to values.
 * @throws {ConfigError} when it holds anything but settings.
 */
export function parseOptions(field: string, options: string): Record<string, string> {
  const out: Record<string, string> = {};
  const words = splitOptions(options);
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    let setting: string | undefined;
    if (word === "-c") setting = words[++i];
    else if (word.startsWith("--")) setting = word.slice(2);
    else if (word.startsWith("-c")) setting = word.slice(2);
    const eq = setting?.indexOf("=") ?? -1;
    const name = setting?.slice(0, eq).replaceAll("-", "_") ?? "";
    if (setting === undefined || eq < 1 || !GUC_NAME.test(name)) {
      fail(
        field,
        "parameter 'options' must hold only '-c name=value' settings (dbx sends them with 'session')",
        `${words.length} words`,
      );
    }
    out[name.toLowerCase()] = setting.slice(eq + 1);
  }
  return out;
}

/**
 * The `options` startup parameter for settings: `-c name=value` pairs joined
 * by spaces, with spaces and backslashes in values escaped by a backslash
 * (PostgreSQL's rule for this parameter).
 *
 * @param session Setting names to values.
 * @returns The parameter, empty when there are no settings.
 */
export function sessionOptions(session: Readonly<Record<string, string>>): string {
  return Object.entries(session)
    .map(([name, value]) => `-c ${name}=${value.replace(/[\s\\]/g, (c) => `\\${c}`)}`)
    .join(" ");
}
