import assert from "node:assert/strict";
import {
  type Balancer,
  type BalancerNode,
  latencyAware,
  leastInFlight,
  random,
  roundRobin,
} from "../mod.ts";

function node(name: string, healthy = true, inFlight = 0): BalancerNode {
  return { name, healthy, inFlight };
}

/** Names of `count` successive picks. */
function picks(
  balancer: Balancer,
  nodes: readonly BalancerNode[],
  count: number,
): (string | undefined)[] {
  return Array.from({ length: count }, () => balancer.pick(nodes)?.name);
}

/** How often each name was picked. */
function tally(names: readonly (string | undefined)[]): Map<string | undefined, number> {
  const counts = new Map<string | undefined, number>();
  for (const name of names) counts.set(name, (counts.get(name) ?? 0) + 1);
  return counts;
}

/** A deterministic rng cycling through `values`. */
function sequence(values: readonly number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length]!;
}

const balancers: [string, () => Balancer][] = [
  ["roundRobin()", roundRobin],
  ["random()", () => random(sequence([0, 0.5, 0.99]))],
  ["leastInFlight()", leastInFlight],
  ["latencyAware()", latencyAware],
];

for (const [label, make] of balancers) {
  Deno.test(`${label} returns undefined for no nodes`, () => {
    assert.equal(make().pick([]), undefined);
  });

  Deno.test(`${label} returns undefined when every node is unhealthy`, () => {
    const b = make();
    const nodes = [node("a", false), node("b", false), node("c", false)];
    assert.deepEqual(picks(b, nodes, 4), [undefined, undefined, undefined, undefined]);
  });

  Deno.test(`${label} returns the only healthy node every time`, () => {
    const b = make();
    const nodes = [node("a", false), node("b", true, 7), node("c", false)];
    assert.deepEqual(picks(b, nodes, 4), ["b", "b", "b", "b"]);
  });

  Deno.test(`${label} returns one of the nodes passed in, as the same object`, () => {
    const nodes = [node("a"), node("b")];
    const picked = make().pick(nodes);
    assert.ok(picked === nodes[0] || picked === nodes[1]);
  });
}

Deno.test("roundRobin() takes successive nodes in order, wrapping around", () => {
  const nodes = [node("a"), node("b"), node("c")];
  assert.deepEqual(picks(roundRobin(), nodes, 7), ["a", "b", "c", "a", "b", "c", "a"]);
});

Deno.test("roundRobin() alternates between two healthy nodes", () => {
  const nodes = [node("a"), node("b")];
  assert.deepEqual(picks(roundRobin(), nodes, 4), ["a", "b", "a", "b"]);
});

Deno.test("roundRobin() never picks an unhealthy node", () => {
  const nodes = [node("a"), node("b", false), node("c"), node("d", false)];
  const names = picks(roundRobin(), nodes, 40);
  assert.ok(!names.includes("b"));
  assert.ok(!names.includes("d"));
  assert.ok(names.includes("a"));
  assert.ok(names.includes("c"));
});

Deno.test("roundRobin() alternates over the healthy nodes when one is down", () => {
  // Round-robin among healthy replicas (SPEC: readQuery routes to a "healthy
  // replica, round-robin"): a down node's turn must not double its neighbour's load.
  const nodes = [node("a"), node("b", false), node("c")];
  assert.deepEqual(picks(roundRobin(), nodes, 6), ["a", "c", "a", "c", "a", "c"]);
});

Deno.test("roundRobin() resumes with a node once it is healthy again", () => {
  const b = roundRobin();
  const down = [node("a"), node("b", false)];
  assert.deepEqual(picks(b, down, 2), ["a", "a"]);
  const up = [node("a"), node("b")];
  assert.ok(picks(b, up, 2).includes("b"));
});

Deno.test("roundRobin() gives each balancer its own counter", () => {
  const nodes = [node("a"), node("b")];
  const first = roundRobin();
  first.pick(nodes);
  assert.equal(roundRobin().pick(nodes)?.name, "a");
  assert.equal(first.pick(nodes)?.name, "b");
});

Deno.test("random() picks each healthy node uniformly and never an unhealthy one", () => {
  const nodes = [node("a"), node("b", false), node("c"), node("d"), node("e", false)];
  // 300 evenly spread draws over [0, 1): a uniform picker takes each of the 3 healthy nodes 100 times.
  const draws = Array.from({ length: 300 }, (_, i) => (i + 0.5) / 300);
  const counts = tally(picks(random(sequence(draws)), nodes, draws.length));
  assert.deepEqual([...counts.entries()].sort(), [["a", 100], ["c", 100], ["d", 100]]);
});

Deno.test("random() maps the rng range onto the healthy nodes in order", () => {
  const nodes = [node("a", false), node("b"), node("c", false), node("d")];
  assert.deepEqual(picks(random(sequence([0, 0.49, 0.5, 0.999999])), nodes, 4), [
    "b",
    "b",
    "d",
    "d",
  ]);
});

Deno.test("random() stays within the healthy nodes when the rng returns 1", () => {
  const nodes = [node("a"), node("b"), node("c", false)];
  assert.equal(random(() => 1).pick(nodes)?.name, "b");
});

Deno.test("random() uses Math.random by default", () => {
  const nodes = [node("a"), node("b", false), node("c")];
  const names = new Set(picks(random(), nodes, 200));
  assert.deepEqual([...names].sort(), ["a", "c"]);
});

Deno.test("leastInFlight() picks the healthy node with the fewest statements in flight", () => {
  const nodes = [node("a", true, 4), node("b", true, 1), node("c", true, 9)];
  assert.deepEqual(picks(leastInFlight(), nodes, 3), ["b", "b", "b"]);
});

Deno.test("leastInFlight() ignores an unhealthy node even when it is the least busy", () => {
  const nodes = [node("a", false, 0), node("b", true, 3), node("c", true, 2)];
  assert.deepEqual(picks(leastInFlight(), nodes, 3), ["c", "c", "c"]);
});

Deno.test("leastInFlight() spreads ties evenly when every node is equally busy", () => {
  const nodes = [node("a", true, 2), node("b", true, 2), node("c", true, 2)];
  const counts = tally(picks(leastInFlight(), nodes, 30));
  assert.deepEqual([...counts.entries()].sort(), [["a", 10], ["b", 10], ["c", 10]]);
});

Deno.test("leastInFlight() spreads ties among the least busy nodes only", () => {
  const nodes = [node("a", true, 0), node("b", true, 0), node("c", true, 5), node("d", false, 0)];
  const counts = tally(picks(leastInFlight(), nodes, 12));
  assert.ok((counts.get("a") ?? 0) > 0, "a is never picked");
  assert.ok((counts.get("b") ?? 0) > 0, "b is never picked");
  assert.equal(counts.get("c"), undefined);
  assert.equal(counts.get("d"), undefined);
});

/** A node that answered `latencyMs` ago `ageMs` ago. */
function timed(
  name: string,
  latencyMs: number | undefined,
  { inFlight = 0, healthy = true, ageMs = 0 } = {},
): BalancerNode {
  return {
    name,
    healthy,
    inFlight,
    latencyMs,
    latencySampledAt: latencyMs === undefined ? undefined : performance.now() - ageMs,
  };
}

Deno.test("latencyAware() picks the node with the lowest (in flight + 1) × latency", () => {
  const b = latencyAware({ exploreShare: 0 });
  assert.deepEqual(picks(b, [timed("slow", 30), timed("fast", 1)], 4), [
    "fast",
    "fast",
    "fast",
    "fast",
  ]);
  // 10 statements ahead at 1 ms (11 ms) against none at 5 ms: the slower node answers first.
  const busy = [timed("fast", 1, { inFlight: 10 }), timed("idle", 5)];
  assert.equal(b.pick(busy)?.name, "idle");
  // 3 ahead at 1 ms (4 ms) beats 0 ahead at 30 ms.
  assert.equal(b.pick([timed("slow", 30), timed("fast", 1, { inFlight: 3 })])?.name, "fast");
});

Deno.test("latencyAware() lets nodes within 20 % of each other take turns", () => {
  const nodes = [timed("a", 10), timed("b", 11), timed("c", 11.5)];
  const counts = tally(picks(latencyAware({ exploreShare: 0 }), nodes, 30));
  assert.deepEqual([...counts.entries()].sort(), [["a", 10], ["b", 10], ["c", 10]]);
});

Deno.test("latencyAware() lets nodes within 0.5 ms of each other take turns", () => {
  // 0.2 and 0.6 ms differ by 3 ×, but by less than the noise of a busy host.
  const nodes = [timed("a", 0.2), timed("b", 0.6)];
  const counts = tally(picks(latencyAware({ exploreShare: 0 }), nodes, 10));
  assert.deepEqual([...counts.entries()].sort(), [["a", 5], ["b", 5]]);
  assert.equal(
    latencyAware({ exploreShare: 0 }).pick([timed("a", 0.2), timed("b", 0.8)])?.name,
    "a",
  );
});

Deno.test("latencyAware() never picks an unhealthy node, however fast", () => {
  const nodes = [timed("down", 0.1, { healthy: false }), timed("up", 50, { ageMs: 60_000 })];
  assert.deepEqual(picks(latencyAware({ exploreShare: 1 }), nodes, 5), [
    "up",
    "up",
    "up",
    "up",
    "up",
  ]);
});

Deno.test("latencyAware() tries a node without any round trip yet before measured ones", () => {
  const nodes = [timed("measured", 0.5), timed("new", undefined)];
  assert.equal(latencyAware({ exploreShare: 0 }).pick(nodes)?.name, "new");
});

Deno.test("latencyAware() sends about exploreShare of picks to a stale idle node", () => {
  const b = latencyAware({ exploreShare: 0.02, staleMs: 500 });
  const nodes = [timed("slow", 30, { ageMs: 10_000 }), timed("fast", 1)];
  const counts = tally(picks(b, nodes, 1_000));
  assert.equal(counts.get("slow"), 20, "2 % of 1000 picks explore the stale node");
  assert.equal(counts.get("fast"), 980);
});

Deno.test("latencyAware() explores no node that is fresh or has a statement in flight", () => {
  const b = latencyAware({ exploreShare: 1, staleMs: 500 });
  const fresh = [timed("slow", 30, { ageMs: 100 }), timed("fast", 1)];
  assert.ok(!picks(b, fresh, 100).includes("slow"), "a node sampled 100 ms ago is not stale");
  const busy = [timed("slow", 30, { ageMs: 10_000, inFlight: 1 }), timed("fast", 1)];
  assert.ok(
    !picks(b, busy, 100).includes("slow"),
    "a node with a statement in flight is not explored",
  );
});

Deno.test("latencyAware() with exploreShare 0 never explores", () => {
  const nodes = [timed("slow", 30, { ageMs: 60_000 }), timed("fast", 1)];
  assert.ok(!picks(latencyAware({ exploreShare: 0 }), nodes, 1_000).includes("slow"));
});

Deno.test("latencyAware() gives a recovered node its share back once its latency drops", () => {
  const b = latencyAware({ exploreShare: 0 });
  assert.equal(b.pick([timed("a", 30), timed("b", 1)])?.name, "b");
  const counts = tally(picks(b, [timed("a", 1), timed("b", 1)], 10));
  assert.deepEqual([...counts.entries()].sort(), [["a", 5], ["b", 5]]);
});

for (
  const [options, message] of [
    [{ exploreShare: -0.1 }, "'exploreShare' must be a number from 0 to 1: current value is -0.1"],
    [{ exploreShare: 2 }, "'exploreShare' must be a number from 0 to 1: current value is 2"],
    [
      { exploreShare: Number.NaN },
      "'exploreShare' must be a number from 0 to 1: current value is NaN",
    ],
    [{ staleMs: -1 }, "'staleMs' must be a number from 0 to"],
    [{ staleMs: "1s" }, "'staleMs' must be a number from 0 to"],
  ] as const
) {
  const [key, value] = Object.entries(options)[0]!;
  Deno.test(`latencyAware({ ${key}: ${String(value)} }) throws a RangeError naming the option`, () => {
    assert.throws(
      () => latencyAware(options as never),
      (err) =>
        err instanceof RangeError && err.message.startsWith("Cannot create latencyAware() as ") &&
        err.message.includes(message),
    );
  });
}
