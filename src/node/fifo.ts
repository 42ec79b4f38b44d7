/**
 * A first-in, first-out queue that keeps its storage when it empties. An
 * array used as a queue (`push`, then `shift` back to empty) gets a new
 * backing store at its next `push` on V8 (Deno, Node): about 150 bytes for
 * each queue a statement passes through while the load is light enough for
 * them to empty, which is every statement at one caller. A statement passes
 * through four: its pipe's start times and texts (`pipe.ts`), and pg's
 * queues of queries to send and sent (`pg_internals.ts` `keepQueues`).
 *
 * It answers the array methods pg calls on those queues (`push`, `shift`,
 * `length`, `forEach`, `indexOf`, `splice`); `tests/fifo_test.ts` checks
 * that pg's client calls no other.
 *
 * Internal: nothing here is exported from `mod.ts`.
 *
 * @module
 */

/** Slots of a new queue: grown by doubling, never shrunk. */
const FIRST_CAPACITY = 16;

/** A FIFO queue over a ring of slots (see the module doc). */
export class Fifo<T> {
  #slots: (T | undefined)[] = new Array(FIRST_CAPACITY);
  /** Where the oldest item is. */
  #head = 0;
  #size = 0;

  /** How many items it holds; setting it lower drops the newest ones (as with an array). */
  get length(): number {
    return this.#size;
  }

  set length(n: number) {
    while (this.#size > n) this.#slots[this.#slot(--this.#size)] = undefined;
  }

  /**
   * Adds an item at the end.
   *
   * @param item The item.
   * @returns The new length.
   */
  push(item: T): number {
    if (this.#size === this.#slots.length) this.#grow();
    this.#slots[this.#slot(this.#size++)] = item;
    return this.#size;
  }

  /**
   * Takes the oldest item out.
   *
   * @returns It, or undefined when empty.
   */
  shift(): T | undefined {
    if (this.#size === 0) return undefined;
    const item = this.#slots[this.#head];
    // Not held once taken out (a query keeps its result).
    this.#slots[this.#head] = undefined;
    this.#head = (this.#head + 1) & (this.#slots.length - 1);
    this.#size--;
    return item;
  }

  /**
   * The `i`-th oldest item.
   *
   * @param i From 0, the oldest.
   * @returns It, or undefined beyond the end.
   */
  at(i: number): T | undefined {
    return i >= 0 && i < this.#size ? this.#slots[this.#slot(i)] : undefined;
  }

  /**
   * Where `item` first is, from the oldest.
   *
   * @param item The item.
   * @returns Its position, or -1.
   */
  indexOf(item: T): number {
    for (let i = 0; i < this.#size; i++) if (this.#slots[this.#slot(i)] === item) return i;
    return -1;
  }

  /**
   * Where `item` last is, from the oldest.
   *
   * @param item The item.
   * @returns Its position, or -1.
   */
  lastIndexOf(item: T): number {
    for (let i = this.#size - 1; i >= 0; i--) if (this.#slots[this.#slot(i)] === item) return i;
    return -1;
  }

  /**
   * Removes `count` items from position `start`, as an array's `splice` without items to insert.
   *
   * @param start Position of the first one (from the oldest).
   * @param count How many.
   * @returns The items removed.
   */
  splice(start: number, count = 1): T[] {
    const from = Math.max(0, Math.min(start, this.#size));
    const n = Math.max(0, Math.min(count, this.#size - from));
    const removed: T[] = [];
    for (let i = from; i < from + n; i++) removed.push(this.#slots[this.#slot(i)] as T);
    for (let i = from; i + n < this.#size; i++) {
      this.#slots[this.#slot(i)] = this.#slots[this.#slot(i + n)];
    }
    this.length = this.#size - n;
    return removed;
  }

  /**
   * Calls `fn` on each item, oldest first.
   *
   * @param fn Given the item and its position.
   */
  forEach(fn: (item: T, i: number) => void): void {
    for (let i = 0; i < this.#size; i++) fn(this.#slots[this.#slot(i)] as T, i);
  }

  #slot(i: number): number {
    return (this.#head + i) & (this.#slots.length - 1);
  }

  #grow(): void {
    const slots = new Array<T | undefined>(this.#slots.length * 2);
    for (let i = 0; i < this.#size; i++) slots[i] = this.#slots[this.#slot(i)];
    this.#slots = slots;
    this.#head = 0;
  }
}
