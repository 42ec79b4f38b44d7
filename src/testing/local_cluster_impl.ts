/**
 * {@linkcode LocalClusterImpl}: the {@linkcode LocalCluster} handle that `startLocalCluster`
 * returns, which stops, starts, kills and promotes nodes and pauses replay. Internal.
 *
 * @module
 */

import type { LocalCluster, LocalNode } from "./local_cluster.ts";
import { DEADLINE_MS, logTail, type Runner, sql, waitUntil } from "./pg_process.ts";

/** A running local cluster; see {@linkcode LocalCluster} for what each member does. */
export class LocalClusterImpl implements LocalCluster {
  readonly masterUrl: string;
  readonly replicaUrls: readonly string[];
  readonly nodes: readonly LocalNode[];
  readonly dir: string;
  #runner: Runner;
  #teardown: () => Promise<void>;
  #closing: Promise<void> | undefined;
  readonly pgVersion: number;
  readonly logical: boolean;

  /**
   * @param runner Runs the binaries.
   * @param dir The cluster directory.
   * @param nodes The running nodes, primary first.
   * @param about The servers' major version and whether the cluster is a logical one.
   * @param teardown Stops every server and removes `dir`; called once, by `close()`.
   */
  constructor(
    runner: Runner,
    dir: string,
    nodes: readonly LocalNode[],
    about: { readonly pgVersion: number; readonly logical: boolean },
    teardown: () => Promise<void>,
  ) {
    this.#runner = runner;
    this.pgVersion = about.pgVersion;
    this.logical = about.logical;
    this.#teardown = teardown;
    this.dir = dir;
    this.nodes = Object.freeze([...nodes]);
    this.masterUrl = nodes[0]!.url;
    this.replicaUrls = Object.freeze(nodes.slice(1).map((node) => node.url));
  }

  async stop(node: string): Promise<void> {
    const target = this.#node(node);
    await this.#runner.run("pg_ctl", ["-D", target.dataDir, "-m", "fast", "-w", "stop"]);
  }

  async start(node: string): Promise<void> {
    await this.#runner.pgCtlStart(this.#node(node), this.dir);
  }

  async kill(node: string): Promise<void> {
    const target = this.#node(node);
    await this.#runner.run("pg_ctl", ["-D", target.dataDir, "-m", "immediate", "-w", "stop"]);
  }

  async promote(node: string): Promise<void> {
    const target = this.#node(node);
    // Before the promotion, so no logical consumer of the new primary ever waits on the
    // physical slots its inherited setting names (slots that exist on the old primary only).
    if (this.logical) await this.#clearStandbySlots(target);
    await this.#runner.run("pg_ctl", ["-D", target.dataDir, "-w", "-t", "60", "promote"]);
    // pg_ctl returns once the startup process has finished; wait until clients see it too.
    const outcome = await waitUntil(async () => {
      const [row] = await sql<{ r: boolean }>(target.url, "select pg_is_in_recovery() as r");
      return row?.r === false;
    });
    if (outcome.done === true) return;
    throw new Error(
      `Node "${target.name}" still in recovery ${
        DEADLINE_MS / 1000
      }s after promote\n${await logTail(
        this.dir,
        target.name,
      )}`,
      { cause: outcome.lastError },
    );
  }

  async pauseReplay(node: string): Promise<void> {
    await this.#replayControl(node, "pg_wal_replay_pause");
  }

  async resumeReplay(node: string): Promise<void> {
    await this.#replayControl(node, "pg_wal_replay_resume");
  }

  close(): Promise<void> {
    this.#closing ??= this.#teardown();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** `synchronized_standby_slots = ''` in postgresql.auto.conf, reloaded. */
  async #clearStandbySlots(target: LocalNode): Promise<void> {
    try {
      await sql(target.url, "alter system set synchronized_standby_slots = ''");
      await sql(target.url, "select pg_reload_conf()");
    } catch (error) {
      throw new Error(
        `Could not clear synchronized_standby_slots on node "${target.name}": ${
          (error as Error).message
        }`,
        { cause: error },
      );
    }
  }

  async #replayControl(node: string, fn: string): Promise<void> {
    const target = this.#node(node);
    try {
      await sql(target.url, `select ${fn}()`);
    } catch (error) {
      throw new Error(
        `${fn}() failed on node "${target.name}": ${(error as Error).message}`,
        { cause: error },
      );
    }
  }

  #node(name: string): LocalNode {
    if (this.#closing !== undefined) {
      throw new Error(`Local cluster in ${this.dir} is closed`);
    }
    const node = this.nodes.find((candidate) => candidate.name === name);
    if (node === undefined) {
      const valid = this.nodes.map((candidate) => `"${candidate.name}"`).join(", ");
      throw new Error(`Unknown node ${JSON.stringify(name)}: expected one of ${valid}`);
    }
    return node;
  }
}
