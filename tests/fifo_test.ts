/**
 * The queue that keeps its storage (`src/node/fifo.ts`): it behaves as an
 * array used by pg and the pipes, and pg's client calls nothing on its
 * queues that it lacks. Nothing here needs a server.
 */

import assert from "node:assert/strict";
// @ts-types="@types/pg"
import pg from "pg";
import { Fifo } from "../src/node/fifo.ts";

/** A small deterministic generator (mulberry32), so a failure can be replayed. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test("Fifo answers every operation as an array does, through wrap-around and growth", () => {
  for (const seed of [1, 2, 3, 42, 1234]) {
    const next = random(seed);
    const fifo = new Fifo<number>();
    const array: number[] = [];
    let value = 0;
    for (let step = 0; step < 5_000; step++) {
      const op = next();
      const at = `seed ${seed}, step ${step}`;
      if (op < 0.45) {
        // Bursts, so the ring both wraps and grows past its first 16 slots.
        const n = 1 + Math.floor(next() * 20);
        for (let k = 0; k < n; k++) {
          assert.equal(fifo.push(value), array.push(value), at);
          value++;
        }
      } else if (op < 0.85) {
        assert.equal(fifo.shift(), array.shift(), at);
      } else if (op < 0.9 && array.length > 0) {
        const i = Math.floor(next() * array.length);
        const count = 1 + Math.floor(next() * 3);
        assert.deepEqual(fifo.splice(i, count), array.splice(i, count), at);
      } else if (op < 0.92) {
        const n = Math.floor(next() * (array.length + 1));
        fifo.length = n;
        array.length = n;
      } else if (array.length > 0) {
        const probe = array[Math.floor(next() * array.length)]!;
        assert.equal(fifo.indexOf(probe), array.indexOf(probe), at);
        assert.equal(fifo.lastIndexOf(probe), array.lastIndexOf(probe), at);
        assert.equal(fifo.indexOf(-1), -1, at);
      }
      assert.equal(fifo.length, array.length, at);
      assert.equal(fifo.at(0), array[0], at);
      assert.equal(fifo.at(array.length - 1), array.at(-1), at);
      assert.equal(fifo.at(array.length), undefined, at);
    }
    const seen: [number, number][] = [];
    fifo.forEach((item, i) => seen.push([item, i]));
    assert.deepEqual(seen, array.map((item, i) => [item, i]), `seed ${seed}: forEach`);
  }
});

Deno.test("Fifo.shift() on an empty queue gives undefined and leaves it usable", () => {
  const fifo = new Fifo<string>();
  assert.equal(fifo.shift(), undefined);
  assert.equal(fifo.length, 0);
  fifo.push("a");
  fifo.length = 0;
  assert.equal(fifo.shift(), undefined);
  fifo.push("b");
  assert.deepEqual([fifo.length, fifo.at(0)], [1, "b"]);
});

Deno.test("pg's client calls only queue methods that Fifo has", () => {
  // The source of every method of pg's Client: dbx gives its clients Fifo
  // queues (`keepQueues`), so a pg release that calls another array method on
  // them (or indexes them) must fail here, not on a lost connection in production.
  const proto = pg.Client.prototype as unknown as Record<string, unknown>;
  const source = Object.getOwnPropertyNames(proto)
    .map((name) => Object.getOwnPropertyDescriptor(proto, name))
    .flatMap((d) => [d?.value, d?.get, d?.set])
    .filter((f): f is (...args: unknown[]) => unknown => typeof f === "function")
    .map((f) => f.toString())
    .join("\n");
  const uses = [...source.matchAll(/_(?:sent)?[qQ]ueryQueue\b(\.\w+|\[)?/g)].map((m) => m[1]);
  assert.ok(uses.length >= 10, `pg's client uses its queues: found ${uses.length} uses`);
  const fifo = new Fifo<unknown>() as unknown as Record<string, unknown>;
  const unknown = uses.filter((u) => u === "[" || (u !== undefined && !(u.slice(1) in fifo)));
  assert.deepEqual(unknown, [], "queue members pg uses that Fifo lacks");
});
