import assert from "node:assert/strict";
import {
  ClusterClosedError,
  ConfigError,
  DbxError,
  type ErrorKind,
  handleError,
  isConnectionError,
  isConstraintViolation,
  isRetryable,
  isSerializationFailure,
  NoHealthyNodeError,
  NoRowsError,
  pgErrorCode,
  RetryExhaustedError,
} from "../mod.ts";

/** What node-postgres throws for a server error: a DatabaseError with `code` and `severity`. */
function pgError(code: string, message = `server error ${code}`): Error {
  return Object.assign(new Error(message), { code, severity: "ERROR" });
}

/** What Node's net module throws for a socket failure. */
function socketError(code: string): Error {
  return Object.assign(new Error(`connect ${code} 127.0.0.1:5432`), {
    code,
    errno: -1,
    syscall: "connect",
  });
}

function wrap(err: unknown, depth = 1): Error {
  let e: unknown = err;
  for (let i = 0; i < depth; i++) e = new Error(`wrapper ${i}`, { cause: e });
  return e as Error;
}

// --- classes -----------------------------------------------------------------

Deno.test("DbxError sets name, message, code, kind, node and cause", () => {
  const cause = new Error("driver");
  const err = new DbxError("boom", { code: "XX000", kind: "other", node: "db1:5432", cause });
  assert.ok(err instanceof Error);
  assert.equal(err.name, "DbxError");
  assert.equal(err.message, "boom");
  assert.equal(err.code, "XX000");
  assert.equal(err.kind, "other");
  assert.equal(err.node, "db1:5432");
  assert.equal(err.cause, cause);
});

Deno.test("DbxError derives code and kind from a pg error in its cause", () => {
  const err = new DbxError("insert failed", { cause: wrap(pgError("23505")) });
  assert.equal(err.code, "23505");
  assert.equal(err.kind, "unique_violation");
});

Deno.test("DbxError derives kind from its own code", () => {
  assert.equal(new DbxError("x", { code: "40P01" }).kind, "deadlock");
});

Deno.test("DbxError keeps an explicit kind over the derived one", () => {
  const err = new DbxError("x", { kind: "timeout", cause: pgError("57014") });
  assert.equal(err.code, "57014");
  assert.equal(err.kind, "timeout");
});

Deno.test("DbxError without options has kind 'other' and no code, node or cause", () => {
  const err = new DbxError("plain");
  assert.equal(err.code, undefined);
  assert.equal(err.kind, "other");
  assert.equal(err.node, undefined);
  assert.equal(err.cause, undefined);
  assert.ok(!("cause" in err));
});

Deno.test("NoRowsError is a not_found DbxError with a default message", () => {
  const err = new NoRowsError();
  assert.ok(err instanceof DbxError);
  assert.equal(err.name, "NoRowsError");
  assert.equal(err.message, "no rows in result set");
  assert.equal(err.kind, "not_found");
  assert.equal(err.code, undefined);
  assert.equal(err.node, undefined);
});

Deno.test("NoRowsError keeps node and cause but always has kind not_found", () => {
  const cause = new Error("empty");
  const err = new NoRowsError("no user 7", { node: "db2:5432", cause, kind: "other" });
  assert.equal(err.message, "no user 7");
  assert.equal(err.node, "db2:5432");
  assert.equal(err.cause, cause);
  assert.equal(err.kind, "not_found");
});

Deno.test("NoHealthyNodeError is a connection DbxError", () => {
  const cause = socketError("ECONNREFUSED");
  const err = new NoHealthyNodeError("no healthy primary", { cause, node: "db1:5432" });
  assert.ok(err instanceof DbxError);
  assert.equal(err.name, "NoHealthyNodeError");
  assert.equal(err.message, "no healthy primary");
  assert.equal(err.kind, "connection");
  assert.equal(err.code, undefined);
  assert.equal(err.node, "db1:5432");
  assert.equal(err.cause, cause);
});

Deno.test("ClusterClosedError has a default message and kind 'other'", () => {
  const err = new ClusterClosedError();
  assert.ok(err instanceof DbxError);
  assert.equal(err.name, "ClusterClosedError");
  assert.equal(err.message, "cluster is closed");
  assert.equal(err.kind, "other");
  assert.equal(err.code, undefined);
  assert.equal(err.node, undefined);
  assert.equal(err.cause, undefined);
  assert.equal(new ClusterClosedError("gone").message, "gone");
});

Deno.test("ConfigError carries the field and kind 'other'", () => {
  const err = new ConfigError("pool.max", "Cannot connect as 'pool.max' must be ...");
  assert.ok(err instanceof DbxError);
  assert.equal(err.name, "ConfigError");
  assert.equal(err.field, "pool.max");
  assert.equal(err.kind, "other");
  assert.equal(err.code, undefined);
  assert.equal(err.node, undefined);
});

Deno.test("RetryExhaustedError keeps every attempt's error and takes the rest from the last", () => {
  const first = socketError("ECONNREFUSED");
  const last = new DbxError("serialization", { cause: pgError("40001"), node: "db3:5432" });
  const err = new RetryExhaustedError([first, last]);
  assert.ok(err instanceof DbxError);
  assert.equal(err.name, "RetryExhaustedError");
  assert.deepEqual(err.errors, [first, last]);
  assert.equal(err.errors[0], first);
  assert.equal(err.cause, last);
  assert.equal(err.code, "40001");
  assert.equal(err.kind, "serialization_failure");
  assert.equal(err.node, "db3:5432");
  assert.match(err.message, /2 attempts/);
  assert.match(err.message, /serialization/);
});

Deno.test("RetryExhaustedError takes its kind from a raw last error and accepts a message", () => {
  const err = new RetryExhaustedError([pgError("23505"), socketError("ECONNRESET")], "gave up");
  assert.equal(err.message, "gave up");
  assert.equal(err.code, undefined);
  assert.equal(err.kind, "connection");
  assert.equal(err.node, undefined);
});

// --- pgErrorCode ---------------------------------------------------------------

Deno.test("pgErrorCode() returns the SQLSTATE of a pg server error", () => {
  assert.equal(pgErrorCode(pgError("23505")), "23505");
  assert.equal(pgErrorCode(pgError("40P01")), "40P01");
});

Deno.test("pgErrorCode() returns undefined for errors without a SQLSTATE and for non-errors", () => {
  for (const value of [new Error("x"), undefined, null, "23505", 23505, {}, { code: 23505 }]) {
    assert.equal(pgErrorCode(value), undefined, String(value));
  }
});

Deno.test("pgErrorCode() does not mistake a 5-letter socket code for a SQLSTATE", () => {
  assert.equal(pgErrorCode(socketError("EPIPE")), undefined);
  assert.equal(pgErrorCode(wrap(socketError("EPIPE"), 2)), undefined);
  assert.equal(pgErrorCode(new DbxError("x", { cause: socketError("EPIPE") })), undefined);
});

Deno.test("pgErrorCode() sees through a cause chain", () => {
  assert.equal(pgErrorCode(wrap(pgError("23503"), 4)), "23503");
});

Deno.test("pgErrorCode() sees through AggregateError members", () => {
  const agg = new AggregateError([new Error("a"), socketError("EPIPE"), pgError("23514")], "all");
  assert.equal(pgErrorCode(agg), "23514");
  assert.equal(pgErrorCode(wrap(agg)), "23514");
});

Deno.test("pgErrorCode() sees through RetryExhaustedError attempts", () => {
  const err = new RetryExhaustedError([pgError("40001"), socketError("ECONNRESET")]);
  assert.equal(pgErrorCode(err), "40001");
});

Deno.test("pgErrorCode() terminates on cause cycles", () => {
  const a = new Error("a");
  const b = new Error("b", { cause: a });
  (a as { cause?: unknown }).cause = b;
  assert.equal(pgErrorCode(a), undefined);
  assert.equal(isConnectionError(a), false);
  assert.equal(isRetryable(a), false);

  const c = pgError("23502");
  const d = new Error("d", { cause: c });
  (c as { cause?: unknown }).cause = d;
  assert.equal(pgErrorCode(d), "23502");
  assert.equal(isConstraintViolation(d), true);
});

Deno.test("pgErrorCode() terminates on an AggregateError that contains itself", () => {
  const errors: unknown[] = [new Error("x")];
  const agg = new AggregateError(errors);
  (agg.errors as unknown[]).push(agg);
  assert.equal(pgErrorCode(agg), undefined);
  assert.equal(isConnectionError(agg), false);
});

// --- predicates ----------------------------------------------------------------

Deno.test("isConnectionError() is true for socket errors", () => {
  for (const code of ["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "ENOTFOUND"]) {
    assert.equal(isConnectionError(socketError(code)), true, code);
  }
});

Deno.test("isConnectionError() is true for 'Connection terminated unexpectedly' without a code", () => {
  assert.equal(isConnectionError(new Error("Connection terminated unexpectedly")), true);
  assert.equal(isConnectionError(wrap(new Error("Connection terminated unexpectedly"))), true);
});

Deno.test("isConnectionError() is true for SQLSTATE class 08 and server shutdown codes", () => {
  for (const code of ["08000", "08001", "08003", "08004", "08006", "57P01", "57P02", "57P03"]) {
    assert.equal(isConnectionError(pgError(code)), true, code);
  }
});

Deno.test("isConnectionError() is false for 08P01 and 53300; a full server (53300) is retryable, 08P01 is not", () => {
  // 08P01 is what a bind message with the wrong number of parameters gets.
  for (const code of ["08P01", "53300"]) {
    assert.equal(isConnectionError(pgError(code)), false, code);
  }
  assert.equal(isRetryable(pgError("08P01")), false);
  // 53300 refuses a new connection before anything is sent: trying again later or elsewhere is safe.
  assert.equal(isRetryable(pgError("53300")), true);
});

Deno.test("isConnectionError() is false for other server errors and plain errors", () => {
  for (const err of [pgError("23505"), pgError("40001"), pgError("57014"), new Error("boom")]) {
    assert.equal(isConnectionError(err), false, err.message);
  }
  assert.equal(isConnectionError(undefined), false);
  assert.equal(isConnectionError("Connection terminated unexpectedly"), false);
});

Deno.test("isConnectionError() sees through causes, AggregateError and RetryExhaustedError", () => {
  assert.equal(isConnectionError(wrap(socketError("ECONNRESET"), 3)), true);
  assert.equal(isConnectionError(new AggregateError([new Error("x"), pgError("08006")])), true);
  assert.equal(isConnectionError(new RetryExhaustedError([socketError("EPIPE")])), true);
  assert.equal(isConnectionError(new NoHealthyNodeError("none")), true);
});

Deno.test("isConstraintViolation() is true for every SQLSTATE class 23 code", () => {
  for (const code of ["23505", "23503", "23514", "23502", "23P01", "23000"]) {
    assert.equal(isConstraintViolation(pgError(code)), true, code);
  }
  for (const code of ["40001", "08006", "22001"]) {
    assert.equal(isConstraintViolation(pgError(code)), false, code);
  }
  assert.equal(isConstraintViolation(new Error("x")), false);
});

Deno.test("isConstraintViolation() sees through causes and AggregateError", () => {
  assert.equal(isConstraintViolation(wrap(pgError("23505"), 2)), true);
  assert.equal(isConstraintViolation(new AggregateError([pgError("23503")])), true);
  assert.equal(isConstraintViolation(new DbxError("x", { cause: pgError("23514") })), true);
});

Deno.test("isSerializationFailure() is true for 40001 and 40P01 only", () => {
  assert.equal(isSerializationFailure(pgError("40001")), true);
  assert.equal(isSerializationFailure(pgError("40P01")), true);
  assert.equal(isSerializationFailure(pgError("40002")), false);
  assert.equal(isSerializationFailure(pgError("23505")), false);
  assert.equal(isSerializationFailure(new Error("x")), false);
});

Deno.test("isSerializationFailure() sees through causes, AggregateError and RetryExhaustedError", () => {
  assert.equal(isSerializationFailure(wrap(pgError("40001"), 3)), true);
  assert.equal(isSerializationFailure(new AggregateError([pgError("40P01")])), true);
  assert.equal(isSerializationFailure(new RetryExhaustedError([pgError("40001")])), true);
});

Deno.test("isRetryable() is true for connection, serialization, deadlock and read-only failures", () => {
  const retryable = [
    socketError("ECONNREFUSED"),
    socketError("EPIPE"),
    new Error("Connection terminated unexpectedly"),
    pgError("08006"),
    pgError("57P03"),
    pgError("40001"),
    pgError("40P01"),
    pgError("25006"),
  ];
  for (const err of retryable) assert.equal(isRetryable(err), true, err.message);
});

Deno.test("isRetryable() is false for constraint violations, cancellations and unknown errors", () => {
  const final = [pgError("23505"), pgError("57014"), pgError("42601"), new Error("boom")];
  for (const err of final) assert.equal(isRetryable(err), false, err.message);
  for (const value of [undefined, null, "ECONNREFUSED", 0]) {
    assert.equal(isRetryable(value), false, String(value));
  }
});

Deno.test("isRetryable() sees through causes, AggregateError and RetryExhaustedError", () => {
  assert.equal(isRetryable(wrap(pgError("40001"), 2)), true);
  assert.equal(isRetryable(new AggregateError([new Error("x"), socketError("ECONNRESET")])), true);
  assert.equal(isRetryable(new RetryExhaustedError([new Error("x"), pgError("25006")])), true);
  assert.equal(isRetryable(new RetryExhaustedError([pgError("23505")])), false);
});

// --- handleError ---------------------------------------------------------------

const codeKinds: [string, ErrorKind][] = [
  ["23505", "unique_violation"],
  ["23503", "foreign_key_violation"],
  ["23514", "check_violation"],
  ["23502", "not_null_violation"],
  ["40001", "serialization_failure"],
  ["40P01", "deadlock"],
  ["57014", "canceled"],
  ["25006", "read_only"],
  ["08006", "connection"],
  ["57P01", "connection"],
  ["42601", "other"],
];

for (const [code, kind] of codeKinds) {
  Deno.test(`handleError() maps SQLSTATE ${code} to kind "${kind}"`, () => {
    const cause = pgError(code, `message for ${code}`);
    const err = handleError(cause);
    assert.ok(err instanceof DbxError);
    assert.equal(err.kind, kind);
    assert.equal(err.code, code);
    assert.equal(err.message, `message for ${code}`);
    assert.equal(err.cause, cause);
  });
}

Deno.test("handleError() maps socket errors to kind 'connection' without a code", () => {
  for (const code of ["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT"]) {
    const err = handleError(socketError(code));
    assert.equal(err.kind, "connection", code);
    assert.equal(err.code, undefined, code);
  }
});

Deno.test("handleError() maps 'Connection terminated unexpectedly' to kind 'connection'", () => {
  const err = handleError(new Error("Connection terminated unexpectedly"));
  assert.equal(err.kind, "connection");
  assert.equal(err.code, undefined);
  assert.equal(err.message, "Connection terminated unexpectedly");
});

Deno.test("handleError() finds the SQLSTATE behind wrappers", () => {
  const err = handleError(wrap(pgError("23505"), 2));
  assert.equal(err.kind, "unique_violation");
  assert.equal(err.code, "23505");
  assert.equal(err.message, "wrapper 1");
});

Deno.test("handleError() returns a DbxError unchanged", () => {
  for (
    const err of [
      new DbxError("x", { kind: "timeout" }),
      new NoRowsError(),
      new ClusterClosedError(),
      new RetryExhaustedError([new Error("x")]),
    ]
  ) {
    assert.equal(handleError(err), err);
    assert.equal(handleError(err, "other-node"), err);
  }
});

Deno.test("handleError() maps an AbortError DOMException to kind 'canceled'", () => {
  const abort = new DOMException("The signal has been aborted", "AbortError");
  const err = handleError(abort);
  assert.equal(err.kind, "canceled");
  assert.equal(err.cause, abort);
  assert.equal(handleError(wrap(abort)).kind, "canceled");
});

Deno.test("handleError() maps a TimeoutError DOMException to kind 'timeout'", () => {
  const timeout = new DOMException("Signal timed out.", "TimeoutError");
  const err = handleError(timeout);
  assert.equal(err.kind, "timeout");
  assert.equal(err.cause, timeout);
  assert.equal(handleError(wrap(timeout)).kind, "timeout");
});

Deno.test("handleError() maps the reason of an aborted signal to 'canceled'", () => {
  const controller = new AbortController();
  controller.abort();
  assert.equal(handleError(controller.signal.reason).kind, "canceled");
});

Deno.test("handleError() records the node it is given", () => {
  assert.equal(handleError(pgError("23505"), "db1:5432").node, "db1:5432");
  assert.equal(handleError(pgError("23505")).node, undefined);
});

Deno.test("handleError() wraps non-Error values with kind 'other'", () => {
  const err = handleError("boom");
  assert.ok(err instanceof DbxError);
  assert.equal(err.message, "boom");
  assert.equal(err.kind, "other");
  assert.equal(err.cause, "boom");
  assert.equal(handleError(undefined).kind, "other");
  assert.equal(handleError({ code: "23505" }).kind, "other");
});
