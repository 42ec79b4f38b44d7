/**
 * When a pipe counts as stuck (`src/node/slow_texts.ts`): after 20 ms, or twice
 * the longest recent wait for a fast text's answer (halved every second), and
 * never after more than 200 ms; and when its wait makes its text slow. Times
 * are passed in: nothing here waits.
 */

import assert from "node:assert/strict";
import { SlowTexts } from "../src/node/slow_texts.ts";

/** `runs` answers of `text` after `ms` each, at `now`. */
function took(times: SlowTexts, text: string, ms: number, runs: number, now: number): void {
  for (let i = 0; i < runs; i++) times.took(text, ms, true, now);
}

Deno.test("a pipe is stuck after twice the longest recent wait for a fast text, 20 to 200 ms", () => {
  const times = new SlowTexts();
  assert.equal(times.stuckMs(0), 20);
  took(times, "select 1", 1, 8, 1_000);
  assert.equal(times.stuckMs(1_000), 20);
  // A loaded host: one answer of the fast text came 40 ms after the one before.
  times.took("select 1", 40, true, 1_000);
  assert.ok(times.isFast("select 1", times.slowMs()));
  assert.equal(times.stuckMs(1_000), 80);
  // Waiting 60 ms then does not make a text slow; 90 ms does.
  assert.equal(times.stuck("select 1", 60, 1_000), false);
  assert.equal(times.stuck("select 2", 60, 1_000), false);
  assert.equal(times.isSlow("select 2", times.slowMs()), false);
  assert.equal(times.stuck("select 2", 90, 1_000), true);
  assert.equal(times.isSlow("select 2", times.slowMs()), true);
  // Halved every second, back to 20 ms.
  assert.equal(times.stuckMs(2_000), 40);
  assert.equal(times.stuckMs(4_000), 20);
  // Never more than 200 ms.
  times.took("select 1", 500, true, 5_000);
  assert.equal(times.stuckMs(5_000), 200);
});

Deno.test("the waits of a slow text, and of a text's first runs, leave the stuck bound alone", () => {
  const times = new SlowTexts();
  took(times, "select 1", 1, 50, 1_000);
  // A new text's first runs read as fast (one run is no proof): they do not count.
  took(times, "select pg_sleep(0.1)", 100, 3, 1_000);
  assert.equal(times.stuckMs(1_000), 20);
  // From the fourth run on, it is known slow: its waits do not count either.
  took(times, "select pg_sleep(0.1)", 100, 5, 1_000);
  assert.equal(times.isSlow("select pg_sleep(0.1)", times.slowMs()), true);
  assert.equal(times.stuckMs(1_000), 20);
});

Deno.test("a stuck pipe makes its text slow only when no run of the text answered fast meanwhile", () => {
  const times = new SlowTexts();
  const text = "select $1::int";
  took(times, text, 1, 8, 1_000);
  // Another pipe answered the text fast 10 ms into this pipe's 25 ms wait (from 1 005 on):
  // this pipe's backend is late, not the text.
  times.took(text, 1, true, 1_015);
  assert.equal(times.stuckMs(1_030), 20);
  assert.equal(times.stuck(text, 25, 1_030), false);
  assert.equal(times.isSlow(text, times.slowMs()), false);
  // A wait that began after the text's last fast answer (from 1 025 on): the text is slow.
  assert.equal(times.stuck(text, 25, 1_050), true);
  assert.equal(times.isSlow(text, times.slowMs()), true);
});
