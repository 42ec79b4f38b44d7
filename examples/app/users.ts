/**
 * A tiny repository of users on dbx: writes go to the primary, lookups to a replica that
 * has replayed the caller's write (or the primary).
 *
 * @module
 */

import type { Cluster } from "@codelab/dbx";

/** A stored user. */
export interface User {
  id: number;
  email: string;
  name: string;
}

/**
 * Creates the users table when it does not exist.
 *
 * @param db The cluster.
 * @returns Resolves once the table exists.
 *
 * @example
 * ```ts ignore
 * await createUsersTable(cluster);
 * ```
 */
export async function createUsersTable(db: Cluster): Promise<void> {
  await db.exec(
    "create table if not exists users (id serial primary key, email text unique not null, name text not null)",
  );
}

/**
 * Adds a user.
 *
 * @param db The cluster.
 * @param email Unique e-mail address.
 * @param name Display name.
 * @returns The stored user and a token that makes a later read see it.
 * @throws {DbxError} Of kind `unique_violation` when the e-mail is taken.
 *
 * @example
 * ```ts ignore
 * const { user, token } = await addUser(cluster, "ada@example.com", "Ada");
 * ```
 */
export async function addUser(
  db: Cluster,
  email: string,
  name: string,
): Promise<{ user: User; token: string }> {
  const user = await db.queryRow<User>(
    "insert into users (email, name) values ($1, $2) returning id, email, name",
    [email, name],
  );
  return { user, token: await db.writeToken() };
}

/**
 * Finds a user by e-mail address, on a replica that has replayed `token`'s write.
 *
 * @param db The cluster.
 * @param email The address to look up.
 * @param token A token from {@linkcode addUser}, to read your own write.
 * @returns The user, or `undefined`.
 *
 * @example
 * ```ts ignore
 * const user = await findUserByEmail(cluster, "ada@example.com", token);
 * ```
 */
export async function findUserByEmail(
  db: Cluster,
  email: string,
  token?: string,
): Promise<User | undefined> {
  const rows = await db.readQuery<User>(
    "select id, email, name from users where email = $1",
    [email],
    token === undefined ? {} : { consistentWith: token },
  );
  return rows[0];
}
