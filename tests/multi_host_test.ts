import assert from "node:assert/strict";
import {
  type ClusterConfig,
  ConfigError,
  random,
  redactUrl,
  resolveConfig,
  roundRobin,
} from "../mod.ts";
import { parseMultiHostUrl, queryParams, withoutParams } from "../src/config/multi_host.ts";

/** The ConfigError that `fn` throws. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${err}`);
    return err;
  }
  return assert.fail("did not throw");
}

Deno.test("parseMultiHostUrl() gives one single-host URL per host, in order", () => {
  const { hosts, targetSessionAttrs, loadBalanceHosts } = parseMultiHostUrl(
    "postgres://app:pw@h1:5432,h2:5433,h3/app?application_name=x",
    "master",
  );
  assert.deepEqual(hosts, [
    { host: "h1", port: 5432, url: "postgres://app:pw@h1:5432/app?application_name=x" },
    { host: "h2", port: 5433, url: "postgres://app:pw@h2:5433/app?application_name=x" },
    { host: "h3", port: 5432, url: "postgres://app:pw@h3/app?application_name=x" },
  ]);
  assert.equal(targetSessionAttrs, undefined);
  assert.equal(loadBalanceHosts, undefined);
});

Deno.test("parseMultiHostUrl() reads and strips target_session_attrs and load_balance_hosts", () => {
  const { hosts, targetSessionAttrs, loadBalanceHosts } = parseMultiHostUrl(
    "postgresql://u@a:1,b:2/db?target_session_attrs=read-write&sslmode=disable&load_balance_hosts=random#f",
    "nodes[0]",
  );
  assert.equal(targetSessionAttrs, "read-write");
  assert.equal(loadBalanceHosts, "random");
  assert.deepEqual(hosts.map((h) => h.url), [
    "postgresql://u@a:1/db?sslmode=disable#f",
    "postgresql://u@b:2/db?sslmode=disable#f",
  ]);
});

Deno.test("parseMultiHostUrl() strips the libpq parameters from a single-host URL too", () => {
  const { hosts, targetSessionAttrs } = parseMultiHostUrl(
    "postgres://u@db1:5432/app?target_session_attrs=primary",
    "master",
  );
  assert.equal(targetSessionAttrs, "primary");
  assert.deepEqual(hosts, [{ host: "db1", port: 5432, url: "postgres://u@db1:5432/app" }]);
});

Deno.test("parseMultiHostUrl() leaves a plain single-host URL untouched", () => {
  const url = "postgres://u:p%40ss@db1:6000/app?sslmode=require";
  assert.deepEqual(parseMultiHostUrl(url, "master").hosts, [{ host: "db1", port: 6000, url }]);
});

Deno.test("parseMultiHostUrl() accepts bracketed IPv6 hosts, with and without a port", () => {
  const { hosts } = parseMultiHostUrl("postgres://u@[::1]:5433,[fe80::2],10.0.0.3:7/app", "master");
  assert.deepEqual(hosts.map(({ host, port }) => ({ host, port })), [
    { host: "::1", port: 5433 },
    { host: "fe80::2", port: 5432 },
    { host: "10.0.0.3", port: 7 },
  ]);
  assert.equal(hosts[0]!.url, "postgres://u@[::1]:5433/app");
  assert.equal(hosts[1]!.url, "postgres://u@[fe80::2]/app");
});

Deno.test("parseMultiHostUrl() accepts every libpq value of target_session_attrs", () => {
  for (const v of ["any", "read-write", "primary", "read-only", "standby", "prefer-standby"]) {
    const parsed = parseMultiHostUrl(`postgres://a,b/app?target_session_attrs=${v}`, "master");
    assert.equal(parsed.targetSessionAttrs, v);
  }
  for (const v of ["disable", "random"]) {
    const parsed = parseMultiHostUrl(`postgres://a,b/app?load_balance_hosts=${v}`, "master");
    assert.equal(parsed.loadBalanceHosts, v);
  }
});

const bad: { what: string; url: string; message: RegExp }[] = [
  {
    what: "an unknown target_session_attrs",
    url: "postgres://u:secret@a,b/app?target_session_attrs=writable",
    message:
      /'nodes\[0\]' parameter 'target_session_attrs' must be one of any, read-write.*"writable"/,
  },
  {
    what: "an unknown load_balance_hosts",
    url: "postgres://u:secret@a,b/app?load_balance_hosts=roundrobin",
    message: /parameter 'load_balance_hosts' must be one of disable, random.*"roundrobin"/,
  },
  {
    what: "an empty host",
    url: "postgres://u:secret@a,,b/app",
    message: /host 2 of the URL must name a host/,
  },
  {
    what: "a port out of range",
    url: "postgres://u:secret@a:5432,b:70000/app",
    message: /host 2 of the URL must have a port from 1 to 65535: current value is "b:70000"/,
  },
  {
    what: "a port that is not a number",
    url: "postgres://u:secret@a:x,b/app",
    message: /host 1 of the URL must have a port/,
  },
  {
    what: "an IPv6 address without brackets",
    url: "postgres://u:secret@a,::1/app",
    message: /IPv6 address in brackets/,
  },
  {
    what: "an unclosed bracket",
    url: "postgres://u:secret@[::1,b/app",
    message: /must close its IPv6 '\['/,
  },
  {
    what: "a host list with a port parameter",
    url: "postgres://u:secret@a,b/app?port=5433",
    message: /must not combine a host list with the 'port' parameter/,
  },
];

for (const { what, url, message } of bad) {
  Deno.test(`parseMultiHostUrl() rejects ${what}, naming it and never the password`, () => {
    const err = configError(() => parseMultiHostUrl(url, "nodes[0]"));
    assert.equal(err.field, "nodes[0]");
    assert.match(err.message, message);
    assert.ok(!err.message.includes("secret"), err.message);
  });
}

Deno.test("queryParams() and withoutParams() read and remove parameters, keeping the rest as written", () => {
  const url = "postgres://u@a:1/app?sslmode=verify-full&application_name=my%20app#x";
  assert.deepEqual(
    [...queryParams(url)],
    [["sslmode", "verify-full"], ["application_name", "my app"]],
  );
  assert.equal(withoutParams(url, ["sslmode"]), "postgres://u@a:1/app?application_name=my%20app#x");
  assert.equal(withoutParams(url, ["nothing"]), url);
  assert.equal(
    withoutParams("postgres://u@a/app?sslmode=require", ["sslmode"]),
    "postgres://u@a/app",
  );
});

Deno.test("redactUrl() redacts the password of a multi-host URL and keeps the hosts", () => {
  assert.equal(
    redactUrl("postgres://app:s3cret@h1:5432,[::1]:5433/app?password=x"),
    "postgres://app:***@h1:5432,[::1]:5433/app?password=***",
  );
});

Deno.test("resolveConfig() makes every host of a multi-host master a node of unknown role", () => {
  const { nodes, requirePrimary } = resolveConfig({
    master: "postgres://app:pw@h1:5432,h2:5433,[::1]/app?target_session_attrs=read-write",
    replicas: ["postgres://app@h4/app"],
  });
  assert.deepEqual(
    nodes.map((n) => [n.name, n.configuredRole, n.url]),
    [
      ["h1:5432", "unknown", "postgres://app:pw@h1:5432/app"],
      ["h2:5433", "unknown", "postgres://app:pw@h2:5433/app"],
      ["[::1]:5432", "unknown", "postgres://app:pw@[::1]/app"],
      ["h4:5432", "replica", "postgres://app@h4/app"],
    ],
  );
  assert.equal(requirePrimary, true);
});

Deno.test("resolveConfig() accepts a connection string: every host a node of unknown role", () => {
  const { nodes } = resolveConfig("postgres://app@h1,h2/app");
  assert.deepEqual(nodes.map((n) => [n.name, n.configuredRole]), [
    ["h1:5432", "unknown"],
    ["h2:5432", "unknown"],
  ]);
  const single = resolveConfig("postgres://app@h1/app").nodes;
  assert.deepEqual(single.map((n) => n.configuredRole), ["unknown"]);
});

Deno.test("resolveConfig() takes nodes instead of master and replicas, none assumed primary", () => {
  const { nodes } = resolveConfig({
    nodes: ["postgres://app@h1/app", { name: "b", url: "postgres://app@h2/app", pool: { max: 3 } }],
  });
  assert.deepEqual(nodes.map((n) => [n.name, n.configuredRole, n.pool.max]), [
    ["h1:5432", "unknown", 10],
    ["b", "unknown", 3],
  ]);
});

const forms: { what: string; config: unknown; field: string; message: RegExp }[] = [
  {
    what: "master and nodes",
    config: { master: "postgres://a/app", nodes: ["postgres://b/app"] },
    field: "master",
    message: /give either 'nodes' or 'master' \(with 'replicas'\), not both/,
  },
  {
    what: "replicas and nodes",
    config: { replicas: ["postgres://a/app"], nodes: ["postgres://b/app"] },
    field: "replicas",
    message: /'replicas' is set next to 'nodes'/,
  },
  {
    what: "neither master nor nodes",
    config: { pool: { max: 2 } },
    field: "master",
    message: /'master' must be a non-empty postgres:\/\/ connection string \(or give 'nodes'\)/,
  },
  {
    what: "an empty nodes list",
    config: { nodes: [] },
    field: "nodes",
    message: /'nodes' must be a non-empty array/,
  },
  {
    what: "a name on a multi-host URL",
    config: { nodes: [{ name: "x", url: "postgres://a,b/app" }] },
    field: "nodes[0].name",
    message: /cannot name the nodes of a multi-host URL/,
  },
  {
    what: "the same host twice",
    config: { nodes: ["postgres://app@a:1,b:2/app", "postgres://app@b:2/app"] },
    field: "nodes[1]",
    message: /must not repeat node b:2/,
  },
  {
    what: "conflicting target_session_attrs",
    config: {
      master: "postgres://a,b/app?target_session_attrs=read-write",
      replicas: ["postgres://c/app?target_session_attrs=any"],
    },
    field: "replicas[0]",
    message: /'target_session_attrs' must agree with 'master' \(read-write\)/,
  },
  {
    what: "requirePrimary: false with target_session_attrs=read-write",
    config: {
      nodes: ["postgres://a,b/app?target_session_attrs=read-write"],
      requirePrimary: false,
    },
    field: "requirePrimary",
    message: /contradicts 'target_session_attrs=read-write' in 'nodes\[0\]'/,
  },
  {
    what: "a balancer with load_balance_hosts=random",
    config: { nodes: ["postgres://a,b/app?load_balance_hosts=random"], balancer: roundRobin() },
    field: "balancer",
    message: /contradicts 'load_balance_hosts=random'/,
  },
  {
    what: "a bad target_session_attrs in a NodeConfig url",
    config: { nodes: [{ url: "postgres://a,b/app?target_session_attrs=master" }] },
    field: "nodes[0].url",
    message: /parameter 'target_session_attrs' must be one of .*"master"/,
  },
];

for (const { what, config, field, message } of forms) {
  Deno.test(`resolveConfig() rejects ${what}, naming '${field}'`, () => {
    const err = configError(() => resolveConfig(config as ClusterConfig));
    assert.equal(err.field, field);
    assert.match(err.message, message);
  });
}

Deno.test("resolveConfig() maps target_session_attrs onto what connect() waits for", () => {
  const target = (attrs: string) => {
    const r = resolveConfig(`postgres://a,b/app?target_session_attrs=${attrs}`);
    return [r.requirePrimary, r.requireStandby];
  };
  assert.deepEqual(target("read-write"), [true, false]);
  assert.deepEqual(target("primary"), [true, false]);
  assert.deepEqual(target("any"), [false, false]);
  assert.deepEqual(target("prefer-standby"), [false, false]);
  assert.deepEqual(target("standby"), [false, true]);
  assert.deepEqual(target("read-only"), [false, true]);
  const none = resolveConfig("postgres://a,b/app");
  assert.deepEqual([none.requirePrimary, none.requireStandby], [true, false]);
  const agreeing = resolveConfig({
    nodes: ["postgres://a,b/app?target_session_attrs=any"],
    requirePrimary: false,
  });
  assert.equal(agreeing.requirePrimary, false);
});

Deno.test("resolveConfig() uses a random balancer for load_balance_hosts=random", () => {
  const picks = new Set<string>();
  const { balancer } = resolveConfig("postgres://a,b/app?load_balance_hosts=random");
  const candidates = ["x", "y", "z"].map((name) => ({ name, healthy: true, inFlight: 0 }));
  for (let i = 0; i < 200; i++) picks.add(balancer.pick(candidates)!.name);
  assert.equal(picks.size, 3, "every replica is picked");
  // The default (and `disable`) is round-robin: strictly in turn.
  const rr = resolveConfig("postgres://a,b/app?load_balance_hosts=disable").balancer;
  assert.deepEqual(
    [0, 1, 2, 3].map(() => rr.pick(candidates)!.name),
    ["x", "y", "z", "x"],
  );
  assert.equal(typeof random().pick, "function");
});
