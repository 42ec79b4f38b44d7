import assert from "node:assert/strict";
import { DbxError, mayHaveBeenApplied, NoHealthyNodeError, RetryExhaustedError } from "../mod.ts";
import { markNotSent } from "../src/failure.ts";
import { type RetryOptions, withRetry } from "../src/call/retry.ts";
import { backoffDelay, delay } from "../mod.ts";

const almostOne = 1 - Number.EPSILON;

Deno.test("backoffDelay() returns 0 when the random source returns 0", () => {
  for (const retry of [1, 2, 5, 20]) assert.equal(backoffDelay(retry, { random: () => 0 }), 0);
});

Deno.test("backoffDelay() approaches the cap when the random source approaches 1", () => {
  const d = backoffDelay(1, { random: () => almostOne });
  assert.ok(d < 50, `${d} should stay below the cap`);
  assert.ok(d > 49.999, `${d} should be close to the cap`);
});

Deno.test("backoffDelay() stays within [0, cap) for any random value", () => {
  for (const r of [0, 0.1, 0.5, 0.9, almostOne]) {
    for (const retry of [1, 2, 3, 4]) {
      const d = backoffDelay(retry, { random: () => r });
      assert.ok(d >= 0 && d < 50 * 2 ** (retry - 1), `retry ${retry}, random ${r}: ${d}`);
    }
  }
});

Deno.test("backoffDelay() doubles the cap with every retry, from baseDelayMs 50", () => {
  const half = (retry: number) => backoffDelay(retry, { random: () => 0.5 });
  assert.deepEqual([1, 2, 3, 4, 5].map(half), [25, 50, 100, 200, 400]);
});

Deno.test("backoffDelay() caps the delay at maxDelayMs", () => {
  const half = (retry: number) => backoffDelay(retry, { random: () => 0.5 });
  // 50 * 2 ** 5 = 1600 > the default cap of 1000.
  assert.deepEqual([6, 7, 10, 30].map(half), [500, 500, 500, 500]);
  const d = backoffDelay(50, { random: () => almostOne });
  assert.ok(d < 1_000 && d > 999.99, String(d));
});

Deno.test("backoffDelay() honours custom baseDelayMs and maxDelayMs", () => {
  const opts = { baseDelayMs: 10, maxDelayMs: 35, random: () => 0.5 };
  assert.deepEqual([1, 2, 3, 4, 8].map((r) => backoffDelay(r, opts)), [5, 10, 17.5, 17.5, 17.5]);
});

Deno.test("backoffDelay() uses Math.random by default", () => {
  const seen = new Set<number>();
  for (let i = 0; i < 50; i++) {
    const d = backoffDelay(3);
    assert.ok(d >= 0 && d < 200, String(d));
    seen.add(d);
  }
  assert.ok(seen.size > 1, "every delay was the same: no jitter");
});

Deno.test("backoffDelay() stays finite and capped for huge retry numbers", () => {
  for (const retry of [1_024, 1_025, 10_000, Number.MAX_SAFE_INTEGER]) {
    assert.equal(backoffDelay(retry, { random: () => 0.5 }), 500, `retry ${retry}`);
    const d = backoffDelay(retry, { random: () => almostOne });
    assert.ok(Number.isFinite(d) && d < 1_000, `retry ${retry}: ${d}`);
  }
});

Deno.test("backoffDelay() returns 0 at any retry when baseDelayMs is 0", () => {
  // baseDelayMs 0 is accepted by resolveConfig; 0 * 2 ** 1024 is NaN, not 0.
  for (const retry of [1, 1_024, 1_025, 10_000]) {
    assert.equal(backoffDelay(retry, { baseDelayMs: 0, random: () => 0.5 }), 0, `retry ${retry}`);
  }
});

Deno.test("backoffDelay() throws a RangeError naming 'retry' when it is not a positive integer", () => {
  for (const retry of [0, 1.5, -1, NaN, Infinity]) {
    assert.throws(
      () => backoffDelay(retry),
      (err: unknown) => {
        assert.ok(err instanceof RangeError);
        assert.match(err.message, /'retry'/);
        assert.ok(err.message.includes(`current value is ${retry}`), err.message);
        return true;
      },
    );
  }
});

Deno.test("backoffDelay() throws a RangeError for negative or non-finite delays", () => {
  // SPEC "Bad input": every public entry rejects negative or non-finite durations.
  for (
    const options of [{ baseDelayMs: -1 }, { baseDelayMs: NaN }, { maxDelayMs: -1 }, {
      maxDelayMs: NaN,
    }]
  ) {
    assert.throws(() => backoffDelay(1, options), RangeError, JSON.stringify(options));
  }
});

Deno.test("delay() resolves after roughly the given time", async () => {
  const start = performance.now();
  await delay(30);
  const elapsed = performance.now() - start;
  assert.ok(elapsed >= 29, `resolved after ${elapsed} ms`);
  assert.ok(elapsed < 1_000, `resolved after ${elapsed} ms`);
});

Deno.test("delay() resolves with undefined, also for 0 ms", async () => {
  assert.equal(await delay(0), undefined);
});

Deno.test("delay() resolves when the signal does not abort in time; a later abort changes nothing", async () => {
  const controller = new AbortController();
  const wait = delay(5, controller.signal);
  assert.equal(await wait, undefined);
  controller.abort(new Error("late"));
  // The settled wait stays resolved: its listener was removed, nothing rejects.
  assert.equal(await wait, undefined);
  assert.equal(
    await Promise.race([wait.then(() => "resolved"), delay(0).then(() => "pending")]),
    "resolved",
  );
});

Deno.test("delay() rejects at once with the signal's reason when already aborted", async () => {
  const controller = new AbortController();
  const reason = new Error("stop");
  controller.abort(reason);
  const start = performance.now();
  await assert.rejects(delay(10_000, controller.signal), (err) => err === reason);
  assert.ok(performance.now() - start < 500);
});

Deno.test("delay() rejects at once with the signal's reason when aborted while waiting", async () => {
  const controller = new AbortController();
  const reason = new Error("stop");
  const start = performance.now();
  const wait = delay(10_000, controller.signal);
  controller.abort(reason);
  // The sanitizer fails this test if the 10 s timer is left behind.
  await assert.rejects(wait, (err) => err === reason);
  assert.ok(performance.now() - start < 500);
});

Deno.test("delay() rejects with an AbortError when aborted without a reason", async () => {
  const controller = new AbortController();
  const wait = delay(10_000, controller.signal);
  controller.abort();
  await assert.rejects(wait, (err) => err instanceof DOMException && err.name === "AbortError");
});

Deno.test("delay() rejects with the TimeoutError of AbortSignal.timeout()", async () => {
  const start = performance.now();
  await assert.rejects(
    delay(10_000, AbortSignal.timeout(20)),
    (err) => err instanceof DOMException && err.name === "TimeoutError",
  );
  assert.ok(performance.now() - start < 2_000);
});

Deno.test("delay() removes its abort listener once the time is up", async () => {
  const controller = new AbortController();
  const signal = controller.signal;
  let listeners = 0;
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = ((...args: Parameters<typeof add>) => {
    listeners++;
    add(...args);
  }) as typeof signal.addEventListener;
  signal.removeEventListener = ((...args: Parameters<typeof remove>) => {
    listeners--;
    remove(...args);
  }) as typeof signal.removeEventListener;
  await delay(1, signal);
  assert.equal(listeners, 0);
});

/** withRetry() with plain names for nodes and errors the classification understands. */
const lost = () => new Error("Connection terminated unexpectedly");
const refused = () =>
  markNotSent(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }));
const policy = (
  nodes: string[],
  overrides: Partial<RetryOptions<string>> = {},
): RetryOptions<string> => ({
  pick: (tried) => nodes.find((n) => !tried.includes(n)),
  resendable: (f) => !f.sent,
  backoff: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 1 },
  unavailable: () => new NoHealthyNodeError("none"),
  ...overrides,
});

Deno.test("withRetry() returns the first success and tries the next node before backing off", async () => {
  const calls: string[] = [];
  const steps: (string | undefined)[] = [];
  const result = await withRetry((node, attempt) => {
    calls.push(`${node}#${attempt}`);
    return node === "a" ? Promise.reject(refused()) : Promise.resolve(node);
  }, policy(["a", "b"], { onRetry: (s) => void steps.push(s.node) }));
  assert.equal(result, "b");
  assert.deepEqual(calls, ["a#1", "b#2"]);
  assert.deepEqual(steps, ["a"]);
});

Deno.test("withRetry() never re-sends a failure the policy says may have been applied", async () => {
  let calls = 0;
  const err = await withRetry(() => {
    calls++;
    return Promise.reject(new DbxError("Connection terminated unexpectedly", { cause: lost() }));
  }, policy(["a", "b"])).catch((e: unknown) => e);
  assert.equal(calls, 1);
  assert.ok(err instanceof DbxError);
  assert.match(err.message, /may have been applied, so it was not re-sent/);
  assert.equal(err.kind, "connection");
  assert.equal(mayHaveBeenApplied(err), true);
  assert.equal(mayHaveBeenApplied(err.cause), false, "only the write's error says so");
  assert.equal(mayHaveBeenApplied(refused()), false);
});

Deno.test("withRetry() says a write lost mid-statement may have been applied, also after a re-send", async () => {
  // A failover: the first node refuses the connection (re-sent), the next one dies mid-statement.
  const calls: string[] = [];
  const err = await withRetry((node) => {
    calls.push(node);
    return Promise.reject(
      node === "a"
        ? refused()
        : new DbxError("Connection terminated unexpectedly", { cause: lost() }),
    );
  }, policy(["a", "b", "c"])).catch((e: unknown) => e);
  assert.deepEqual(calls, ["a", "b"], "the lost statement is not re-sent");
  assert.ok(err instanceof RetryExhaustedError);
  assert.equal(err.errors.length, 2);
  assert.match(err.message, /may have been applied, so it was not re-sent/);
  assert.equal(err.kind, "connection");
  assert.equal(mayHaveBeenApplied(err), true);
});

Deno.test("withRetry() gives up after maxAttempts with every attempt's error", async () => {
  const errors: unknown[] = [];
  const err = await withRetry(() => {
    const e = refused();
    errors.push(e);
    return Promise.reject(e);
  }, policy(["a"])).catch((e: unknown) => e);
  assert.ok(err instanceof RetryExhaustedError);
  assert.deepEqual(err.errors, errors);
  assert.equal(errors.length, 3);
});

Deno.test("withRetry() reports NoHealthyNodeError when no node could ever be picked", async () => {
  let calls = 0;
  const err = await withRetry(() => Promise.resolve(++calls), policy([])).catch((e: unknown) => e);
  assert.ok(err instanceof NoHealthyNodeError);
  assert.equal(calls, 0);
});

Deno.test("withRetry() stops backing off when the signal aborts, as a canceled DbxError", async () => {
  const controller = new AbortController();
  const slow = policy(["a"], {
    backoff: { maxAttempts: 5, baseDelayMs: 60_000, maxDelayMs: 60_000 },
    signal: controller.signal,
    onRetry: () => controller.abort(),
  });
  const err = await withRetry(() => Promise.reject(refused()), slow).catch((e: unknown) => e);
  assert.ok(err instanceof DbxError);
  assert.equal(err.kind, "canceled");
});
