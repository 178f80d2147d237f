/**
 * Sender keys (PROTOCOL.md, "Sender keys" and "From which iteration"): our own ratcheting
 * key with its hand-out point (OwnSenderKey), and another member's key as a reader
 * follows it, with the bounded store of skipped keys (PeerSenderKey).
 */
import { messageAd, messageSignedBytes } from "./binding.js";
import { randomBytes, randomU64 } from "./bytes.js";
import { messageKey, nextChainKey, open, seal, type MessageKey } from "./chain.js";
import * as ed from "./ed25519.js";
import { DEVICE, MAX_FORWARD_JUMP, MAX_ITERATION, MAX_SKIPPED_KEYS } from "../protocol.js";

export interface Sealed {
  keyId: bigint;
  iteration: number;
  ciphertext: Uint8Array;
  signature: Uint8Array;
}

export class OwnSenderKey {
  private chainKey: Uint8Array;
  private handoutChainKey: Uint8Array;
  nextIteration: number;
  handoutIteration: number;
  sealedCount = 0;

  private constructor(
    readonly keyId: bigint,
    chainKey: Uint8Array,
    private readonly signer: ed.Ed25519Pair,
    iteration: number,
    readonly createdAtMs: number,
  ) {
    this.chainKey = chainKey;
    this.handoutChainKey = chainKey;
    this.nextIteration = iteration;
    this.handoutIteration = iteration;
  }

  static async generate(nowMs = Date.now()): Promise<OwnSenderKey> {
    return new OwnSenderKey(randomU64(), randomBytes(32), await ed.generatePair(), 0, nowMs);
  }

  /** For the vectors: a given chain, key id and Ed25519 seed. */
  static async fromParts(keyId: bigint, chainKey: Uint8Array, seed: Uint8Array, iteration = 0): Promise<OwnSenderKey> {
    return new OwnSenderKey(keyId, chainKey, await ed.pairFromSeed(seed), iteration, Date.now());
  }

  get signingPublicKey(): Uint8Array {
    return this.signer.publicKey;
  }

  /** (iteration, chain key) at the hand-out point: what a distribution wraps. */
  handout(): { iteration: number; chainKey: Uint8Array } {
    return { iteration: this.handoutIteration, chainKey: this.handoutChainKey };
  }

  private queue: Promise<unknown> = Promise.resolve();

  /** Serialized: two seals in flight must never take the same iteration. */
  seal(room: string, sender: string, plaintext: Uint8Array): Promise<Sealed> {
    const run = this.queue.then(() => this.sealNow(room, sender, plaintext));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async sealNow(room: string, sender: string, plaintext: Uint8Array): Promise<Sealed> {
    const iteration = this.nextIteration;
    if (iteration > MAX_ITERATION) throw new Error("this sender key's chain is exhausted; rotate it");
    const mk = await messageKey(this.chainKey);
    // Move the chain before anything can fail after it: an iteration is never sealed twice.
    this.chainKey = await nextChainKey(this.chainKey);
    this.nextIteration = iteration + 1;
    this.sealedCount++;
    const ciphertext = await seal(mk, plaintext, messageAd(room, sender, DEVICE, this.keyId, iteration));
    mk.key.fill(0);
    const signature = await ed.sign(
      this.signer.privateKey,
      messageSignedBytes(room, sender, DEVICE, this.keyId, iteration, ciphertext),
    );
    return { keyId: this.keyId, iteration, ciphertext, signature };
  }

  /** The relay stored our message at `iteration`: the hand-out point moves past it. */
  acknowledged(iteration: number): Promise<void> {
    const run = this.queue.then(() => this.acknowledgedNow(iteration));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async acknowledgedNow(iteration: number): Promise<void> {
    if (this.handoutIteration > iteration) return;
    const target = Math.min(iteration + 1, this.nextIteration);
    let key = this.handoutChainKey;
    for (let i = this.handoutIteration; i < target; i++) key = await nextChainKey(key);
    this.handoutChainKey = key;
    this.handoutIteration = target;
  }

  dueForRotation(nowMs: number, maxMessages: number, maxAgeMs: number): boolean {
    return this.sealedCount >= maxMessages || nowMs - this.createdAtMs >= maxAgeMs;
  }
}

export type OpenResult =
  | { ok: true; plaintext: Uint8Array }
  | { ok: false; reason: "repeated" | "ahead" | "tag"; detail: string };

/** A member's current sender key, as this client follows it. */
export class PeerSenderKey {
  private chainKey: Uint8Array;
  nextIteration: number;
  /** Keys of iterations jumped over, kept for late messages; insertion order is iteration order. */
  private kept = new Map<number, MessageKey>();
  /** Serializes opens: two in flight must not derive from the same chain state. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly keyId: bigint,
    readonly signingPublicKey: Uint8Array,
    chainKey: Uint8Array,
    iteration: number,
    private readonly maxForwardJump = MAX_FORWARD_JUMP,
    private readonly maxSkippedKeys = MAX_SKIPPED_KEYS,
  ) {
    if (chainKey.length !== 32) throw new Error("a chain key is 32 bytes");
    if (!ed.validPublicKey(signingPublicKey)) throw new Error("not a valid Ed25519 public key");
    this.chainKey = chainKey;
    this.nextIteration = iteration;
  }

  get keptCount(): number {
    return this.kept.size;
  }

  /** The Ed25519 signature over the string rebuilt from the delivery; derives nothing. */
  verifies(room: string, sender: string, keyId: bigint, iteration: number, ciphertext: Uint8Array, signature: Uint8Array): Promise<boolean> {
    return ed.verifyStrict(this.signingPublicKey, signature, messageSignedBytes(room, sender, DEVICE, keyId, iteration, ciphertext));
  }

  /** Opens a message whose signature verified; the chain moves only if it opens. */
  open(room: string, sender: string, iteration: number, ciphertext: Uint8Array): Promise<OpenResult> {
    const run = this.queue.then(() => this.openNow(room, sender, iteration, ciphertext));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async openNow(room: string, sender: string, iteration: number, ciphertext: Uint8Array): Promise<OpenResult> {
    const ad = messageAd(room, sender, DEVICE, this.keyId, iteration);
    if (iteration < this.nextIteration) {
      const mk = this.kept.get(iteration);
      if (!mk) return { ok: false, reason: "repeated", detail: `iteration ${iteration} was opened already or is no longer kept` };
      const plaintext = await open(mk, ciphertext, ad);
      if (!plaintext) return { ok: false, reason: "tag", detail: "its tag does not verify" };
      this.kept.delete(iteration);
      return { ok: true, plaintext };
    }
    const jump = iteration - this.nextIteration;
    if (jump > this.maxForwardJump) {
      return {
        ok: false, reason: "ahead",
        detail: `the message is ${jump} messages ahead of the last one seen, too far to follow`,
      };
    }
    let chainKey = this.chainKey;
    const skipped: [number, MessageKey][] = [];
    const firstKept = iteration - this.maxSkippedKeys;
    for (let j = this.nextIteration; j < iteration; j++) {
      if (j >= firstKept) skipped.push([j, await messageKey(chainKey)]);
      chainKey = await nextChainKey(chainKey);
    }
    const mk = await messageKey(chainKey);
    const plaintext = await open(mk, ciphertext, ad);
    if (!plaintext) return { ok: false, reason: "tag", detail: "its tag does not verify" };
    this.chainKey = await nextChainKey(chainKey);
    this.nextIteration = iteration + 1;
    for (const [j, k] of skipped) this.kept.set(j, k);
    while (this.kept.size > this.maxSkippedKeys) {
      const lowest = this.kept.keys().next().value as number;
      this.kept.delete(lowest);
    }
    return { ok: true, plaintext };
  }
}
