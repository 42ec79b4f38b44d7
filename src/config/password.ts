/**
 * The `password` setting of a cluster and of a node: a string, or a function
 * asked for each new connection (RDS IAM tokens, Vault rotation). Checked
 * eagerly without ever showing the value, and turned into the one function
 * every connection to a node asks: it names the node when the user's
 * function fails or returns something that is not a string.
 *
 * @module
 */

import { ConfigError, DbxError } from "../errors.ts";

/**
 * A password: the text itself, or a function returning it (or a promise of
 * it), asked each time dbx opens a connection the server wants a password for.
 */
export type Password = string | (() => string | Promise<string>);

/** The type of a value, never its content: a password must not reach a message. */
function typeOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

/**
 * Checks a `password` setting.
 *
 * @param field The setting's path, e.g. `replicas[0].password`.
 * @param value The setting.
 * @returns The password, or undefined when not set.
 * @throws {ConfigError} naming the field and the type of the value (never the value).
 */
export function checkPassword(field: string, value: unknown): Password | undefined {
  if (value === undefined || typeof value === "string" || typeof value === "function") {
    return value as Password | undefined;
  }
  throw new ConfigError(
    field,
    `Cannot connect: '${field}' must be a string or a function returning one (or a promise of one): current value is ${
      typeOf(value)
    }`,
  );
}

/**
 * The function a node's connections ask for their password: the user's
 * password or function, with a failure turned into a connection error
 * (`kind: "connection"`: the node counts as unreachable, a read goes
 * elsewhere) that names the node and the cause, never a password.
 *
 * @param node The node's name.
 * @param password The node's password.
 * @returns Resolves to the password text.
 */
export function askPassword(node: string, password: Password): () => Promise<string> {
  if (typeof password === "string") return () => Promise.resolve(password);
  return async () => {
    let value: unknown;
    try {
      value = await password();
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      throw new DbxError(`Cannot connect to node ${node}: the password function failed: ${why}`, {
        kind: "connection",
        node,
        cause: err,
      });
    }
    if (typeof value !== "string") {
      throw new DbxError(
        `Cannot connect to node ${node}: the password function returned ${
          typeOf(value)
        }, not a string`,
        { kind: "connection", node },
      );
    }
    return value;
  };
}
