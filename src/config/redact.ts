/**
 * {@linkcode redactUrl}: connection strings without their passwords, for
 * messages, logs and names. Re-exported by `config.ts`.
 *
 * @module
 */

import { splitAuthority } from "./multi_host.ts";

/**
 * Replaces the password of a connection string (userinfo and `password=`
 * query parameter) with `***`. Unparsable input is reduced to a marker
 * rather than echoed, since it may hold a password in an unexpected place.
 *
 * @param url A connection string.
 * @returns The same string without its password.
 *
 * @example
 * ```ts
 * import { redactUrl } from "@codelab/dbx";
 *
 * console.log(redactUrl("postgres://app:s3cret@db1:5432/app")); // "postgres://app:***@db1:5432/app"
 * ```
 */
export function redactUrl(url: string): string {
  // A host list (h1,h2:5433) is no URL to the parser: redact the first host's
  // form, then put the list back (hosts hold no secret).
  const parts = splitAuthority(url);
  if (parts !== undefined && parts.hosts.includes(",")) {
    const one = splitAuthority(redactUrl(`${parts.head}placeholder${parts.tail}`));
    if (one === undefined) return redactUrl(`${parts.head}placeholder${parts.tail}`);
    return `${one.head}${parts.hosts}${one.tail}`;
  }
  const scheme = /^[a-z][a-z0-9+.-]*:/i.exec(url)?.[0] ?? "";
  // Without an authority ("//"), where a password could sit is anyone's
  // guess: keep only the scheme rather than echo it.
  if (!url.startsWith("//", scheme.length)) return `${scheme}<redacted>`;
  // An '@' after the host is most likely a password's end, its unencoded
  // '/', '?' or '#' having ended the authority early: the parser would show
  // the password's start as the host.
  if (parts?.tail.includes("@")) return `${scheme}//<redacted>`;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return `${scheme}<unparsable url>`;
  }
  if (parsed.password !== "") parsed.password = "***";
  for (const key of [...parsed.searchParams.keys()]) {
    if (/password$/i.test(key)) parsed.searchParams.set(key, "***");
  }
  return parsed.href.replaceAll("%2A%2A%2A", "***");
}
