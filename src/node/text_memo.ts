/**
 * Verdicts on statement texts, remembered: an app sends the same few texts
 * again and again, and the regular expressions that judge a text (does it
 * change the session, the schema?) cost 40–100 ns a call on every statement
 * where a lookup costs 2–3 ns.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

/** Texts remembered per verdict before the memory is cleared. */
const MAX_TEXTS = 4_096;

/** Longer texts are judged every time: a lookup would hash them, and holding them costs memory. */
const MAX_LENGTH = 4_096;

/** Stands for an undefined verdict in the map. */
const NONE = Symbol("none");

/**
 * `judge`, remembering its verdict per text (it must depend on the text alone).
 *
 * @param judge A pure function of a statement text.
 * @returns The same function, remembering.
 */
export function memoByText<T>(judge: (sql: string) => T): (sql: string) => T {
  const known = new Map<string, T | typeof NONE>();
  return (sql) => {
    if (sql.length > MAX_LENGTH) return judge(sql);
    const seen = known.get(sql);
    if (seen !== undefined) return seen === NONE ? undefined as T : seen;
    const verdict = judge(sql);
    if (known.size >= MAX_TEXTS) known.clear();
    known.set(sql, verdict === undefined ? NONE : verdict);
    return verdict;
  };
}
