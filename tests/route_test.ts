import assert from "node:assert/strict";
import { roundRobin } from "../mod.ts";
import {
  lagOf,
  parseLsn,
  pickReader,
  pickWriter,
  type RouteNode,
  type RouteTopology,
} from "../src/call/route.ts";

/** A node as routing sees it: no server behind it. */
function node(
  name: string,
  probe?: { lsn?: bigint; replayAgeMs?: number },
  healthy = true,
): RouteNode {
  return {
    name,
    healthy,
    inFlight: 0,
    state: {
      probe: probe === undefined ? undefined : { lsn: probe.lsn, replayAgeMs: probe.replayAgeMs },
    },
  };
}

function topology(primary: RouteNode | undefined, ...replicas: RouteNode[]) {
  return { primary, replicas } satisfies RouteTopology<RouteNode>;
}

Deno.test("pickWriter() returns the healthy primary unless this call already tried it", () => {
  const p = node("p");
  assert.equal(pickWriter(topology(p), []), p);
  assert.equal(pickWriter(topology(p), [p]), undefined);
  assert.equal(pickWriter(topology(node("p", undefined, false)), []), undefined);
  assert.equal(pickWriter(topology(undefined), []), undefined);
});

Deno.test("pickReader() alternates over healthy replicas and never reports a fallback", () => {
  const a = node("a", { lsn: 10n }), b = node("b", { lsn: 10n });
  const t = topology(node("p", { lsn: 10n }), a, b);
  const balancer = roundRobin();
  const picked = [1, 2, 3, 4].map(() => pickReader(t, balancer, [], {}));
  assert.deepEqual(picked.map((r) => r.node?.name), ["a", "b", "a", "b"]);
  assert.ok(picked.every((r) => r.fallback === undefined));
});

Deno.test("pickReader() skips replicas this call already tried, then takes the primary", () => {
  const p = node("p"), a = node("a"), b = node("b");
  const t = topology(p, a, b);
  assert.equal(pickReader(t, roundRobin(), [a], {}).node, b);
  const last = pickReader(t, roundRobin(), [a, b], {});
  assert.equal(last.node, p);
  assert.equal(last.fallback, "no_healthy_replica");
  assert.equal(pickReader(t, roundRobin(), [a, b, p], {}).node, undefined);
});

Deno.test("pickReader() falls back with reason 'lagging' when every replica is behind maxLagMs", () => {
  const p = node("p", { lsn: 100n });
  const slow = node("slow", { lsn: 50n, replayAgeMs: 5_000 });
  const unknown = node("unknown", { lsn: 50n });
  const r = pickReader(topology(p, slow, unknown), roundRobin(), [], { maxLagMs: 1_000 });
  assert.equal(r.node, p);
  assert.equal(r.fallback, "lagging");
  // Within the bound, the replica is used.
  const ok = pickReader(topology(p, slow), roundRobin(), [], { maxLagMs: 10_000 });
  assert.equal(ok.node, slow);
});

Deno.test("pickReader() falls back with reason 'not_caught_up' when no replica replayed the token", () => {
  const p = node("p", { lsn: 100n });
  const behind = node("behind", { lsn: 99n });
  const r = pickReader(topology(p, behind), roundRobin(), [], { minLsn: 100n });
  assert.equal(r.node, p);
  assert.equal(r.fallback, "not_caught_up");
  assert.equal(pickReader(topology(p, behind), roundRobin(), [], { minLsn: 99n }).node, behind);
});

Deno.test("pickReader() falls back with reason 'no_healthy_replica' when every replica is down", () => {
  const p = node("p");
  const r = pickReader(topology(p, node("a", {}, false)), roundRobin(), [], {});
  assert.equal(r.node, p);
  assert.equal(r.fallback, "no_healthy_replica");
});

Deno.test("pickReader() without replicas uses the primary and reports no fallback", () => {
  const p = node("p");
  assert.deepEqual(pickReader(topology(p), roundRobin(), [], {}), { node: p });
});

Deno.test("lagOf() is 0 for a replica at or past the primary's LSN, whatever its replay age", () => {
  assert.equal(lagOf(node("r", { lsn: 100n, replayAgeMs: 60_000 }), 100n), 0);
  assert.equal(lagOf(node("r", { lsn: 99n, replayAgeMs: 700 }), 100n), 700);
  assert.equal(lagOf(node("r"), 100n), undefined);
});

Deno.test("parseLsn() reads pg_lsn text and rejects anything else", () => {
  assert.equal(parseLsn("0/3000148"), 0x3000148n);
  assert.equal(parseLsn("16/B374D848"), (0x16n << 32n) | 0xB374D848n);
  for (const bad of ["", "abc", "0/", "/1", "0/xyz", "1/2/3", undefined, null]) {
    assert.equal(parseLsn(bad), undefined, String(bad));
  }
});
