/**
 * Read-your-writes across requests and services (issue #23): `withSession`
 * starts a request's session from its `dbx-token` header and puts the
 * session's token on the response. Replay is paused on every replica, so a
 * read that missed the write would show.
 */

import assert from "node:assert/strict";
import { connect, withSession } from "../mod.ts";
import { dbTest } from "../src/testing/mod.ts";
import { testDatabaseUrls } from "../src/testing/db_test.ts";
import { replicaNames, until, withPausedReplay } from "./helpers.ts";

const TOKEN = /^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/;

dbTest(
  "a browser's POST then GET reads its note through the dbx-token header, with replicas lagging",
  async (cluster) => {
    await cluster.exec("drop table if exists header_notes");
    await cluster.exec("create table header_notes(id serial primary key, body text not null)");
    const names = replicaNames(cluster);
    for (const name of names) {
      await until(
        `${name} has replayed header_notes`,
        async () =>
          (await cluster.node(name).queryRow<{ t: string | null }>(
            "select to_regclass('header_notes')::text as t",
          )).t !== null,
      );
    }
    const handler = withSession(cluster, async (req: Request) => {
      if (req.method === "POST") {
        const { id } = await cluster.queryRow<{ id: number }>(
          "insert into header_notes(body) values ($1) returning id",
          [await req.text()],
        );
        return Response.json({ id }, { status: 201 });
      }
      const id = Number(new URL(req.url).searchParams.get("id"));
      const [note] = await cluster.readQuery("select body from header_notes where id = $1", [id]);
      return note === undefined ? new Response("not found", { status: 404 }) : Response.json(note);
    });
    await withPausedReplay(cluster, names, async () => {
      const posted = await handler(new Request("http://app/notes", { method: "POST", body: "hi" }));
      assert.equal(posted.status, 201);
      const token = posted.headers.get("dbx-token");
      assert.match(token ?? "", TOKEN, "the response carries the session's token");
      const { id } = await posted.json();
      // Without the token the GET reads a lagging replica: the note is not there yet.
      const stale = await handler(new Request(`http://app/notes?id=${id}`));
      assert.equal(stale.status, 404, "a replica is lagging, so the header is what helps");
      assert.equal(stale.headers.get("dbx-token"), null, "a session that did not write sets none");
      const fresh = await handler(
        new Request(`http://app/notes?id=${id}`, { headers: { "dbx-token": token! } }),
      );
      assert.equal(fresh.status, 200);
      assert.deepEqual(await fresh.json(), { body: "hi" });
      assert.equal(fresh.headers.get("dbx-token"), token, "the token is carried on");
    });
    await cluster.exec("drop table header_notes");
  },
);

dbTest(
  "service B reads what service A wrote when the request carries A's token",
  async (serviceA) => {
    const urls = testDatabaseUrls()!;
    await using serviceB = await connect({ master: urls.master, replicas: urls.replicas });
    await serviceA.exec("drop table if exists header_orders");
    await serviceA.exec("create table header_orders(id int primary key)");
    for (const name of replicaNames(serviceA)) {
      await until(
        `${name} has replayed header_orders`,
        async () =>
          (await serviceA.node(name).queryRow<{ t: string | null }>(
            "select to_regclass('header_orders')::text as t",
          )).t !== null,
      );
    }
    const write = withSession(serviceA, async (_req: Request) => {
      await serviceA.exec("insert into header_orders values (1)");
      return new Response("created", { status: 201 });
    });
    const read = withSession(serviceB, async (_req: Request) => {
      const rows = await serviceB.readQuery("select id from header_orders");
      return Response.json(rows);
    });
    await withPausedReplay(serviceA, replicaNames(serviceA), async () => {
      const created = await write(new Request("http://a/orders", { method: "POST" }));
      const token = created.headers.get("dbx-token")!;
      assert.match(token, TOKEN);
      const seen = await read(new Request("http://b/orders", { headers: { "dbx-token": token } }));
      assert.deepEqual(await seen.json(), [{ id: 1 }]);
    });
    await serviceA.exec("drop table header_orders");
  },
);

dbTest(
  "withSession() ignores a header that is not a token, sets none with header: false, and refuses a bad header name",
  async (cluster) => {
    const ok = withSession(cluster, async (_req: Request) => {
      await cluster.exec("select 1");
      return new Response("ok");
    });
    const bad = await ok(new Request("http://app/", { headers: { "dbx-token": "not a token" } }));
    assert.equal(await bad.text(), "ok");
    const off = withSession(cluster, async (_req: Request) => {
      await cluster.exec("select 1");
      return new Response("ok");
    }, { header: false });
    assert.equal(
      (await off(new Request("http://app/", { method: "POST" }))).headers.get("dbx-token"),
      null,
    );
    const redirect = withSession(cluster, async (_req: Request) => {
      await cluster.exec("select 1");
      return Response.redirect("http://app/next", 303);
    });
    const moved = await redirect(new Request("http://app/", { method: "POST" }));
    assert.equal(moved.status, 303);
    assert.equal(moved.headers.get("location"), "http://app/next");
    assert.throws(
      () => withSession(cluster, () => new Response(), { header: "bad header" }),
      (e: unknown) => e instanceof TypeError && /'options.header'/.test(e.message),
    );
  },
);

dbTest(
  "a POST then a GET carrying the session cookie reads its own write, with replicas lagging",
  async (cluster) => {
    await cluster.exec("drop table if exists cookie_notes");
    await cluster.exec("create table cookie_notes(id int primary key)");
    const names = replicaNames(cluster);
    for (const name of names) {
      await until(
        `${name} has replayed cookie_notes`,
        async () =>
          (await cluster.node(name).queryRow<{ t: string | null }>(
            "select to_regclass('cookie_notes')::text as t",
          )).t !== null,
      );
    }
    const handler = withSession(cluster, async (req: Request) => {
      if (req.method === "POST") {
        await cluster.exec("insert into cookie_notes values (1)");
        return new Response(null, { status: 201 });
      }
      return Response.json(await cluster.readQuery("select id from cookie_notes"));
    }, { header: false, cookie: "dbx" });
    await withPausedReplay(cluster, names, async () => {
      const posted = await handler(new Request("http://app/", { method: "POST" }));
      const setCookie = posted.headers.get("set-cookie") ?? "";
      assert.match(
        setCookie,
        /^dbx=[0-9A-F]+%2F[0-9A-F]+; Max-Age=60; Path=\/; HttpOnly; SameSite=Lax$/,
      );
      assert.equal(posted.headers.get("dbx-token"), null, "header: false sets no header");
      const cookie = setCookie.split(";")[0]!;
      const stale = await handler(new Request("http://app/"));
      assert.deepEqual(await stale.json(), [], "without the cookie a lagging replica answers");
      const fresh = await handler(
        new Request("http://app/", { headers: { cookie: `theme=dark; ${cookie}` } }),
      );
      assert.deepEqual(await fresh.json(), [{ id: 1 }]);
    });
    await cluster.exec("drop table cookie_notes");
  },
);
