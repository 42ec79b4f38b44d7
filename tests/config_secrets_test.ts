/**
 * Nothing secret in a config error, and inputs in range: connection strings
 * whose encoding or structure is wrong, query parameters pg would ignore or
 * that point elsewhere, a key or password inside a config shown in an error,
 * durations no timer can honour, and tokens wider than a WAL position.
 * Pure: no server.
 */

import assert from "node:assert/strict";
import { Cluster, ConfigError, connect, redactUrl, resolveConfig } from "../mod.ts";
import { configError } from "./helpers.ts";
import { parseLsn } from "../src/call/route.ts";

const MASTER = "postgres://app@db1:5432/app";
const KEY = "-----BEGIN PRIVATE KEY-----\nTOP-SECRET-KEY-MATERIAL\n-----END PRIVATE KEY-----\n";
const PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";

/** Asserts that neither the message nor the stack holds any of `secrets`. */
function assertHides(err: Error, ...secrets: string[]): void {
  for (const secret of secrets) {
    assert.ok(!err.message.includes(secret), `${secret} in: ${err.message}`);
    assert.ok(!String(err.stack).includes(secret), `${secret} in the stack`);
  }
}

// --- URLs ------------------------------------------------------------------------

Deno.test("connect() refuses an IPv6 URL with a stray '%' naming the host's encoding, without echoing the password", async () => {
  const url = "postgres://app:S3cret@[fe80::1%]:5432/db";
  await assert.rejects(connect({ master: url }), (err: unknown) => {
    assert.ok(err instanceof ConfigError, String(err));
    assert.equal(err.field, "master");
    assert.match(err.message, /malformed percent-encoding in the host/);
    assertHides(err, "S3cret", url);
    return true;
  });
});

Deno.test("connect() refuses an IPv6 zone in a URL, which pg cannot connect with", () => {
  const err = configError({ master: "postgres://app:S3cret@[fe80::1%25eth0]:5432/db" });
  assert.match(err.message, /IPv6 zone/);
  assertHides(err, "S3cret");
});

Deno.test("connect() refuses a URL whose password has an unencoded '/' without echoing it", () => {
  // Read naively, this is user "u" on host "u", port 1234, database "abcd@h/db".
  for (const url of ["postgres://u:1234/abcd@h/db", "postgres://u:12?34@h/db"]) {
    assert.throws(() => new Cluster({ master: url }), (err: unknown) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.equal(err.field, "master");
      assert.match(err.message, /'@' after the host/);
      assert.match(err.message, /%2F/);
      assertHides(err, "1234", "abcd", "12?34");
      return true;
    });
  }
});

Deno.test("connect() refuses malformed percent-encoding naming the part, never showing it", () => {
  const cases: [string, string, RegExp][] = [
    ["postgres://app:S3%cret@db1/app", "S3%cret", /malformed percent-encoding in the password/],
    ["postgres://app:S3%E9cret@db1/app", "S3%E9cret", /malformed percent-encoding in the password/],
    ["postgres://a%pp:S3cret@db1/app", "S3cret", /malformed percent-encoding in the user name/],
    ["postgres://app:S3cret@db1/a%zz", "S3cret", /malformed percent-encoding in the database/],
    [
      "postgres://app:S3cret@db1/app?application_name=50%",
      "S3cret",
      /malformed percent-encoding in the value of 'application_name'/,
    ],
  ];
  for (const [url, secret, why] of cases) {
    const err = configError({ replicas: [url], master: MASTER });
    assert.equal(err.field, "replicas[0]", url);
    assert.match(err.message, why, url);
    assertHides(err, secret);
  }
});

Deno.test("connect() refuses host= and port= parameters that point elsewhere than the URL's host, naming the parameter", () => {
  const cases: [string, RegExp][] = [
    ["postgres://u:S3cret@db1/app?host=db2&port=6000", /parameter 'host' \(db2\).*host \(db1\)/],
    ["postgres://u:S3cret@db1:5433/app?port=6000", /parameter 'port' \(6000\).*port \(5433\)/],
    ["postgres://u:S3cret@db1/app?port=0", /parameter 'port' \(0\) that is not a port/],
    ["postgres://u:S3cret@db1/app?hostaddr=10.0.0.9", /parameter 'hostaddr' \(10\.0\.0\.9\)/],
  ];
  for (const [url, why] of cases) {
    const err = configError({ master: { url } });
    assert.equal(err.field, "master.url", url);
    assert.match(err.message, why, url);
    assertHides(err, "S3cret");
  }
});

Deno.test("a URL's host= and port= parameters may fill in what the URL leaves out", () => {
  const [byPort] = resolveConfig({ master: "postgres://app@db1/app?port=6000" }).nodes;
  assert.equal(byPort?.name, "db1:6000");
  assert.equal(byPort?.port, 6000);
  const [byHost] = resolveConfig({ master: "postgres:///app?host=db2&port=6001" }).nodes;
  assert.equal(byHost?.name, "db2:6001");
  const [same] = resolveConfig({ master: "postgres://app@db1:5433/app?host=DB1&port=5433" })
    .nodes;
  assert.equal(same?.name, "db1:5433");
});

Deno.test("connect() refuses a URL query parameter pg would ignore, by name, listing the accepted ones", () => {
  const err = configError({ master: "postgres://app:S3cret@db1/app?search_path=x" });
  assert.equal(err.field, "master");
  assert.match(err.message, /query parameter 'search_path'/);
  assert.match(err.message, /'session' setting/);
  assert.match(err.message, /accepted: .*sslmode.*application_name.*options/);
  assertHides(err, "S3cret");
  assert.match(
    configError({ master: `${MASTER}?connect_timeout=3` }).message,
    /'connect_timeout'.*pool\.connectTimeoutMs/,
  );
  // Every parameter pg or dbx acts on is still taken.
  const accepted = [
    "sslmode=disable",
    "application_name=svc",
    "fallback_application_name=svc",
    "options=-c%20search_path%3Dapp",
    "client_encoding=UTF8",
    "statement_timeout=1000",
    "lock_timeout=1000",
    "idle_in_transaction_session_timeout=1000",
    "query_timeout=1000",
    "target_session_attrs=any",
    "load_balance_hosts=disable",
    "password=S3cret",
    "user=app",
    "host=db1",
    "port=5432",
  ];
  assert.equal(resolveConfig({ master: `${MASTER}?${accepted.join("&")}` }).nodes.length, 1);
});

Deno.test("redactUrl() hides a password whose unencoded '/' ended the host early", () => {
  const out = redactUrl("postgres://u:1234/abcd@h/db");
  assert.ok(!out.includes("1234") && !out.includes("abcd"), out);
  assert.ok(out.startsWith("postgres:"), out);
});

// --- keys and passwords inside a config --------------------------------------------

Deno.test("a ConfigError about a config given as an array never prints an ssl.key PEM or a password field", () => {
  const node = { url: "postgres://app:S3cret@db1/app", ssl: { cert: PEM, key: KEY } };
  const cases: unknown[] = [
    [node],
    { master: [node] },
    { master: MASTER, replicas: "not a list", nodes: undefined },
    { master: [{ url: MASTER, password: "S3cret" }] },
    { master: [KEY] },
    { master: [[KEY]] },
  ];
  for (const config of cases) {
    const err = configError(config);
    assertHides(err, "TOP-SECRET", "S3cret", "BEGIN PRIVATE KEY");
  }
  assert.match(configError({ master: [node] }).message, /current value is \[an object\]/);
});

// --- durations -------------------------------------------------------------------

Deno.test("every duration setting above 2147483647 ms is refused naming the field and value", () => {
  const big = 2 ** 31;
  const cases: [string, Record<string, unknown>][] = [
    ["pool.idleTimeoutMs", { pool: { idleTimeoutMs: big } }],
    ["pool.maxLifetimeMs", { pool: { maxLifetimeMs: big } }],
    ["pool.connectTimeoutMs", { pool: { connectTimeoutMs: big } }],
    ["master.pool.connectTimeoutMs", { master: { url: MASTER, pool: { connectTimeoutMs: big } } }],
    ["retry.baseDelayMs", { retry: { baseDelayMs: big, maxDelayMs: big } }],
    ["retry.maxDelayMs", { retry: { maxDelayMs: big } }],
    ["retry.waitForPrimaryMs", { retry: { waitForPrimaryMs: big } }],
    ["healthCheck.intervalMs", { healthCheck: { intervalMs: big } }],
    ["healthCheck.timeoutMs", { healthCheck: { timeoutMs: big } }],
    ["maxLagMs", { maxLagMs: big }],
    ["slowQueryThresholdMs", { slowQueryThresholdMs: big }],
  ];
  for (const [field, config] of cases) {
    const err = configError({ master: MASTER, ...config });
    assert.equal(err.field, field);
    assert.match(err.message, /at most 2147483647 ms/, field);
    assert.match(err.message, new RegExp(`current value is ${big}$`), field);
  }
  const max = 2_147_483_647;
  assert.equal(
    resolveConfig({ master: MASTER, healthCheck: { intervalMs: max } }).healthCheck
      .intervalMs,
    max,
  );
});

Deno.test("a call's timeoutMs above 2147483647 is refused with a RangeError naming 'timeoutMs'", async () => {
  await using cluster = new Cluster({ master: MASTER });
  for (const timeoutMs of [2 ** 31, 2 ** 32]) {
    await assert.rejects(
      cluster.query("select 1", [], { timeoutMs }),
      (err: unknown) =>
        err instanceof RangeError && /'options\.timeoutMs' must be at most 2147483647/.test(
          err.message,
        ),
    );
  }
});

// --- TLS -------------------------------------------------------------------------

Deno.test("sslmode=verify-full, verify-ca or require with ssl.rejectUnauthorized false is refused naming both", () => {
  for (const mode of ["verify-full", "verify-ca", "require"]) {
    const err = configError({
      master: { url: `${MASTER}?sslmode=${mode}`, ssl: { rejectUnauthorized: false } },
    });
    assert.equal(err.field, "master.url", mode);
    assert.match(err.message, new RegExp(`'sslmode=${mode}'`), mode);
    assert.match(err.message, /'master\.ssl\.rejectUnauthorized: false'/, mode);
  }
});

// --- tokens ----------------------------------------------------------------------

Deno.test("a read refuses a consistentWith token with more than 8 hex digits in a half", async () => {
  await using cluster = new Cluster({ master: MASTER });
  for (const token of ["1FFFFFFFF/0", "0/123456789", "000000000/1"]) {
    assert.equal(parseLsn(token), undefined, token);
    await assert.rejects(
      cluster.readQuery("select 1", [], { consistentWith: token }),
      (err: unknown) =>
        err instanceof RangeError && /'options\.consistentWith'.*1 to 8 digits/.test(err.message),
    );
  }
  assert.equal(parseLsn("FFFFFFFF/FFFFFFFF"), 0xFFFFFFFFFFFFFFFFn);
});
