import assert from "node:assert/strict";
import { Latency } from "../src/node/latency.ts";

Deno.test("Latency has no recent latency, sample time or p95 before any round trip", () => {
  const l = new Latency(true);
  assert.equal(l.recentMs, undefined);
  assert.equal(l.statementAt, undefined);
  assert.equal(l.p95(), undefined);
  assert.equal(l.percentiles(), undefined);
});

Deno.test("Latency takes its first round trip as the average; only statements date it", () => {
  const l = new Latency(false);
  l.probe(12, 1_000);
  assert.equal(l.recentMs, 12);
  assert.equal(l.statementAt, undefined, "a probe is no read");
  l.statement(12, 2_000);
  assert.equal(l.statementAt, 2_000);
});

Deno.test("Latency follows a busy node over a few dozen statements", () => {
  const l = new Latency(false);
  l.statement(30, 0);
  // Statements back to back (no gap): each weighs the least, 1/32.
  for (let i = 0; i < 64; i++) l.statement(1, 0);
  assert.ok(l.recentMs! < 5, `after 64 fast statements the average is ${l.recentMs}`);
  assert.ok(l.recentMs! > 1, "one sample does not replace the average of a busy node");
});

Deno.test("Latency lets a round trip after a long gap weigh most", () => {
  const l = new Latency(false);
  l.statement(30, 0);
  l.statement(1, 2_000); // 2 s later: the node is judged by what it does now
  assert.ok(l.recentMs! < 2, `average ${l.recentMs}`);
  const half = new Latency(false);
  half.statement(30, 0);
  half.statement(0, 100); // one half-life
  assert.equal(half.recentMs, 15);
});

Deno.test("Latency gives a p95 only from enough statements, and not from probes", () => {
  const l = new Latency(true);
  for (let i = 0; i < 100; i++) l.probe(1, i);
  assert.equal(l.p95(), undefined, "probes do not feed the histogram");
  for (let i = 0; i < 15; i++) l.statement(1, 100 + i);
  assert.equal(l.p95(), undefined, "15 statements are too few");
  l.statement(1, 200);
  const p95 = l.p95()!;
  assert.ok(p95 >= 1 && p95 <= 1.3 * 1.3, `p95 of 1 ms statements is ${p95}`);
});

Deno.test("Latency's p95 sits above 95 % of recent statements and follows a change", () => {
  const l = new Latency(true);
  for (let i = 0; i < 1_000; i++) l.statement(i % 100 < 96 ? 2 : 40, i);
  const p95 = l.p95()!;
  assert.ok(p95 >= 2 && p95 < 3, `p95 with 4 % slow statements is ${p95}`);
  for (let i = 0; i < 2_000; i++) l.statement(20, 1_000 + i);
  const later = l.p95()!;
  assert.ok(later >= 20 && later < 27, `p95 after the node slowed down is ${later}`);
});

Deno.test("Latency without a histogram has no p95", () => {
  const l = new Latency(false);
  for (let i = 0; i < 100; i++) l.statement(1, i);
  assert.equal(l.p95(), undefined);
});

Deno.test("Latency's percentiles cover every attempt, measured or not", () => {
  const l = new Latency(false);
  for (let i = 1; i <= 100; i++) l.attempt(i);
  assert.deepEqual(l.percentiles(), { p50: 50, p99: 99 });
  assert.equal(l.recentMs, undefined, "attempts alone move no average");
});
