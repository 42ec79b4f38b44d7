import assert from "node:assert/strict";
import { DbxError } from "@codelab/dbx";
import { dbTest } from "@codelab/dbx/testing";
import { addUser, createUsersTable, findUserByEmail } from "./users.ts";

/** A fresh address per run: the test database may be shared and kept between runs. */
const unique = (name: string): string => `${name}.${crypto.randomUUID()}@example.com`;

dbTest("a user that was added can be found by e-mail", async (cluster) => {
  await createUsersTable(cluster);
  const email = unique("ada");
  const { user, token } = await addUser(cluster, email, "Ada");
  assert.deepEqual(await findUserByEmail(cluster, email, token), user);
});

dbTest(
  "adding a user twice with the same e-mail is refused",
  async (cluster) => {
    await createUsersTable(cluster);
    const email = unique("grace");
    await addUser(cluster, email, "Grace");
    await assert.rejects(
      addUser(cluster, email, "Grace again"),
      (err) => err instanceof DbxError && err.kind === "unique_violation",
    );
  },
);
