/**
 * The connections of `faultProxy`: a {@linkcode Link} pairs a client connection
 * with its own connection to the node, and forwards each direction through a lane that
 * applies the proxy's current faults. Internal.
 *
 * @module
 */

import { connect, type Socket } from "node:net";

/** A TCP address. */
export interface Address {
  readonly host: string;
  readonly port: number;
}

/** The proxy's current faults, shared by reference with every connection. */
export interface Mode {
  latency: number;
  blackholed: boolean;
}

/** One client connection and its connection to the node. */
export class Link {
  /** Settles once both sockets are closed. */
  readonly done: Promise<void>;
  readonly #client: Socket;
  readonly #upstream: Socket | undefined;
  readonly #toUpstream: Lane | undefined;
  readonly #toClient: Lane | undefined;
  #starved: boolean;
  #clientEnded = false;
  #upstreamEnded = false;

  constructor(client: Socket, target: Address, mode: Mode) {
    this.#client = client;
    // A connection accepted while blackholed never reaches the node, like a SYN to a hung
    // host that the kernel still answers.
    this.#starved = mode.blackholed;
    const closed = [closeOf(client)];
    client.setNoDelay(true);
    if (!this.#starved) {
      const upstream = connect({ host: target.host, port: target.port });
      upstream.on("error", ignore);
      upstream.setNoDelay(true);
      closed.push(closeOf(upstream));
      this.#upstream = upstream;
      this.#toUpstream = new Lane(client, upstream, mode);
      this.#toClient = new Lane(upstream, client, mode);
      upstream.on("data", (chunk: Uint8Array) => this.#forward(this.#toClient, chunk));
      upstream.on("end", () => {
        this.#upstreamEnded = true;
        this.#forward(this.#toClient, undefined);
      });
      upstream.on("close", () => {
        this.#toUpstream?.clear();
        // A clean end travels through the lane, behind the data still delayed in it.
        if (!this.#upstreamEnded && !this.#starved) client.destroy();
      });
    }
    client.on("data", (chunk: Uint8Array) => this.#forward(this.#toUpstream, chunk));
    client.on("end", () => {
      this.#clientEnded = true;
      this.#forward(this.#toUpstream, undefined);
    });
    client.on("close", () => {
      this.#toClient?.clear();
      // A starved backend would otherwise sit idle until the server times it out.
      if (!this.#clientEnded || this.#starved) this.#upstream?.destroy();
    });
    this.done = Promise.all(closed).then(() => {});
  }

  /** Whether the client side is still open. */
  get open(): boolean {
    return !this.#client.destroyed;
  }

  /** Whether the link lost bytes to a blackhole. */
  get starved(): boolean {
    return this.#starved;
  }

  /** Stops forwarding for good and drops whatever is still delayed. */
  starve(): void {
    this.#starved = true;
    this.#toUpstream?.clear();
    this.#toClient?.clear();
  }

  destroy(): void {
    this.#toUpstream?.clear();
    this.#toClient?.clear();
    this.#client.destroy();
    this.#upstream?.destroy();
  }

  #forward(lane: Lane | undefined, chunk: Uint8Array | undefined): void {
    if (this.#starved) return;
    lane?.push(chunk);
  }
}

/**
 * One direction of a link: delivers chunks in arrival order, each no earlier than its
 * arrival plus the latency in force when it arrived. `undefined` stands for end of stream.
 */
class Lane {
  readonly #from: Socket;
  readonly #to: Socket;
  readonly #mode: Mode;
  #queue: { readonly due: number; readonly chunk: Uint8Array | undefined }[] = [];
  #lastDue = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #draining = false;

  constructor(from: Socket, to: Socket, mode: Mode) {
    this.#from = from;
    this.#to = to;
    this.#mode = mode;
  }

  push(chunk: Uint8Array | undefined): void {
    const now = performance.now();
    // Never before the previous chunk: a shorter delay must not reorder bytes.
    const due = Math.max(now + this.#mode.latency, this.#lastDue);
    this.#lastDue = due;
    if (this.#queue.length === 0 && due <= now) {
      this.#deliver(chunk);
      return;
    }
    this.#queue.push({ due, chunk });
    if (this.#timer === undefined) this.#schedule(now);
  }

  clear(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#queue = [];
  }

  #schedule(now: number): void {
    const head = this.#queue[0];
    if (head === undefined) return;
    this.#timer = setTimeout(this.#flush, Math.max(0, Math.ceil(head.due - now)));
  }

  #flush = (): void => {
    this.#timer = undefined;
    const now = performance.now();
    let head = this.#queue[0];
    while (head !== undefined && head.due <= now) {
      this.#queue.shift();
      this.#deliver(head.chunk);
      head = this.#queue[0];
    }
    this.#schedule(now);
  };

  #deliver(chunk: Uint8Array | undefined): void {
    const to = this.#to;
    if (to.destroyed || to.writableEnded) return;
    if (chunk === undefined) {
      to.end();
      return;
    }
    if (!to.write(chunk) && !this.#draining) {
      // Backpressure: stop reading the sender until the receiver catches up.
      this.#draining = true;
      this.#from.pause();
      to.once("drain", () => {
        this.#draining = false;
        this.#from.resume();
      });
    }
  }
}

function closeOf(socket: Socket): Promise<void> {
  return new Promise((resolve) => socket.once("close", () => resolve()));
}

/** A no-op listener, for socket errors that closing the socket already handles. */
export function ignore(): void {}
