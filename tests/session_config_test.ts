/**
 * The `session` setting: PostgreSQL settings every connection dbx opens
 * starts with, cluster-wide and per node, merged over the URL's
 * `options=-c name=value`. Pure tests of the resolved config and of what pg
 * is handed, and one server test.
 */

import assert from "node:assert/strict";
import { connect, resolveConfig } from "../mod.ts";
import { configError } from "./helpers.ts";
import { pgTarget } from "../src/config/tls.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";

const MASTER = "postgres://app@db1:5432/app";
const REPLICA = "postgres://app@db2:5432/app";

Deno.test("session settings apply to every node: the URL's options first, then the cluster's, then the node's own", () => {
  const { nodes } = resolveConfig({
    master: `${MASTER}?options=-c%20search_path%3Durl%20-c%20lock_timeout%3D1s`,
    replicas: [{ url: REPLICA, session: { statement_timeout: "9s", "app.tenant": "t2" } }],
    session: { search_path: "app", statement_timeout: "5s" },
  });
  assert.deepEqual(nodes[0]?.session, {
    search_path: "app",
    lock_timeout: "1s",
    statement_timeout: "5s",
  });
  assert.deepEqual(nodes[1]?.session, {
    search_path: "app",
    statement_timeout: "9s",
    "app.tenant": "t2",
  });
  assert.deepEqual(resolveConfig({ master: MASTER }).nodes[0]?.session, {});
});

Deno.test("pg gets the session settings as one options startup parameter, spaces and backslashes escaped", () => {
  const [node] = resolveConfig({
    master: `${MASTER}?application_name=svc&options=-c%20lock_timeout%3D1s`,
    session: { search_path: "dbx_custom, public", "app.dir": "C:\\tmp", statement_timeout: "4321" },
  }).nodes;
  assert.deepEqual(pgTarget(node!), {
    // pg lets the URL's options replace the options field: the URL loses them.
    connectionString: `${MASTER}?application_name=svc`,
    options:
      "-c lock_timeout=1s -c search_path=dbx_custom,\\ public -c app.dir=C:\\\\tmp -c statement_timeout=4321",
  });
  // Without session settings the URL goes to pg as it is.
  assert.deepEqual(pgTarget(resolveConfig({ master: MASTER }).nodes[0]!), {
    connectionString: MASTER,
  });
});

Deno.test("a URL's options are read as PostgreSQL reads them: -c name=value, -cname=value, --name=value, backslash escapes", () => {
  const options = encodeURIComponent("-c search_path=a,\\ b -cwork_mem=64MB --lock-timeout=2s");
  const [node] = resolveConfig({ master: `${MASTER}?options=${options}` }).nodes;
  assert.deepEqual(node?.session, { search_path: "a, b", work_mem: "64MB", lock_timeout: "2s" });
  const err = configError({ master: `${MASTER}?options=${encodeURIComponent("-e -c x=1")}` });
  assert.equal(err.field, "master");
  assert.match(err.message, /parameter 'options' must hold only '-c name=value' settings/);
});

Deno.test("a bad session setting is refused naming session.<name>", () => {
  const cases: [unknown, string, RegExp][] = [
    [{ master: MASTER, session: { search_path: 7 } }, "session.search_path", /must be a string/],
    [{ master: MASTER, session: { "bad name": "x" } }, "session.bad name", /setting name/],
    [{ master: MASTER, session: { "-c": "x" } }, "session.-c", /setting name/],
    [{ master: MASTER, session: "search_path=app" }, "session", /must be an object/],
    [
      { master: { url: MASTER, session: { work_mem: "1\0" } } },
      "master.session.work_mem",
      /NUL/,
    ],
    [{ master: MASTER, sesion: {} }, "sesion", /did you mean 'session'/],
    [{ master: { url: MASTER, sessoin: {} } }, "master.sessoin", /did you mean 'master\.session'/],
  ];
  for (const [config, field, why] of cases) {
    const err = configError(config);
    assert.equal(err.field, field);
    assert.match(err.message, why, field);
  }
});

const urls = testDatabaseUrls();

Deno.test({
  name: "cluster.query and cluster.readQuery see the session settings on every connection" +
    (urls === undefined ? " (ignored: DBX_TEST_MASTER_URL is not set)" : ""),
  ignore: urls === undefined,
  async fn() {
    await using cluster = await connect({
      master: urls!.master,
      replicas: urls!.replicas,
      session: { search_path: "dbx_custom, public", statement_timeout: "4321" },
    });
    const show = "select current_setting('search_path') as path, " +
      "current_setting('statement_timeout') as timeout";
    const expected = { path: "dbx_custom, public", timeout: "4321ms" };
    // Pipelined statements, pooled ones (a signal takes the pool), and reads.
    assert.deepEqual(await cluster.queryRow(show), expected);
    assert.deepEqual(await cluster.queryRow(show, [], { signal: AbortSignal.timeout(5_000) }), {
      ...expected,
    });
    assert.deepEqual((await cluster.query("show search_path"))[0], {
      search_path: "dbx_custom, public",
    });
    assert.deepEqual((await cluster.readQuery("show statement_timeout"))[0], {
      statement_timeout: "4321ms",
    });
    assert.deepEqual(await cluster.readQueryRow(show), expected);
  },
});
