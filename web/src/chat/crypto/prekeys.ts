/**
 * This device's signed prekeys (PROTOCOL.md, "Prekeys"): made, rotated every 7 days,
 * erased 14 days after being replaced, kept in the vault as non-extractable CryptoKeys;
 * the SignedPrekey this device publishes; and a peer's prekey checked against the
 * identity it was published with.
 */
import { create } from "@bufbuild/protobuf";
import { SignedPrekeySchema, type SignedPrekey } from "../../gen/chat/v2/chat_pb.js";
import { prekeyBytes } from "./binding.js";
import { randomU64 } from "./bytes.js";
import type { Identity, PeerIdentity } from "./identity.js";
import * as rsa from "./rsa.js";
import { DEVICE, PREKEY_KEEP_MS, PREKEY_ROTATE_MS } from "../protocol.js";
import { vaultKeys, type Vault } from "../vault.js";

export interface StoredPrekey {
  id: bigint;
  createdAtMs: number;
  retiredAtMs: number | null;
  pair: CryptoKeyPair;
  /** The signed message, published as it is until the prekey changes (RSA-PSS is randomized). */
  signed?: { publicKey: Uint8Array; signature: Uint8Array };
}

export class PrekeyStore {
  private constructor(
    private readonly vault: Vault,
    private readonly identity: Identity,
    private prekeys: StoredPrekey[],
    private readonly bits: number,
  ) {}

  static async open(vault: Vault, identity: Identity, bits: number): Promise<PrekeyStore> {
    const list = (await vault.get<StoredPrekey[]>(vaultKeys.prekeys(identity.user))) ?? [];
    return new PrekeyStore(vault, identity, list, bits);
  }

  get current(): StoredPrekey {
    const last = this.prekeys[this.prekeys.length - 1];
    if (!last) throw new Error("no prekey yet");
    return last;
  }

  /** The private key of a prekey still held (current or retired). */
  privateKey(id: bigint): CryptoKey | null {
    return this.prekeys.find((p) => p.id === id)?.pair.privateKey ?? null;
  }

  /** Rotates and erases on schedule; true when a new prekey was made (publish it). */
  async maintain(nowMs = Date.now(), onProgress?: (msg: string) => void): Promise<boolean> {
    let made = false;
    const last = this.prekeys[this.prekeys.length - 1];
    if (!last || Math.max(0, nowMs - last.createdAtMs) >= PREKEY_ROTATE_MS) {
      onProgress?.("making a prekey...");
      const pair = await rsa.generateOaepPair(this.bits);
      if (last) last.retiredAtMs = nowMs;
      this.prekeys.push({ id: randomU64(), createdAtMs: nowMs, retiredAtMs: null, pair });
      made = true;
    }
    const current = this.current;
    const before = this.prekeys.length;
    this.prekeys = this.prekeys.filter(
      (p) => p === current || p.retiredAtMs === null || Math.max(0, nowMs - p.retiredAtMs) < PREKEY_KEEP_MS,
    );
    if (made || this.prekeys.length !== before) await this.save();
    return made;
  }

  private save(): Promise<void> {
    return this.vault.put(vaultKeys.prekeys(this.identity.user), this.prekeys);
  }

  async signedCurrent(): Promise<SignedPrekey> {
    const current = this.current;
    if (!current.signed) {
      const der = await rsa.spkiDer(current.pair.publicKey);
      const signature = await this.identity.sign(
        prekeyBytes(this.identity.user, DEVICE, current.id, BigInt(current.createdAtMs), der),
      );
      current.signed = { publicKey: der, signature };
      await this.save();
    }
    return create(SignedPrekeySchema, {
      device: DEVICE,
      prekeyId: current.id,
      createdAtMs: BigInt(current.createdAtMs),
      publicKey: current.signed.publicKey,
      signature: current.signed.signature,
    });
  }
}

export interface PeerPrekey {
  user: string;
  prekeyId: bigint;
  publicKey: CryptoKey;
}

/** Throws an Error saying why the prekey must not be used. */
export async function checkPrekey(peer: PeerIdentity, signed: SignedPrekey): Promise<PeerPrekey> {
  if (signed.device !== DEVICE) throw new Error(`its device is ${signed.device}, not ${DEVICE}`);
  const data = prekeyBytes(peer.user, signed.device, signed.prekeyId, signed.createdAtMs, signed.publicKey);
  if (!(await rsa.verify(peer.signingKey, signed.signature, data))) throw new Error("its signature does not verify");
  let publicKey: CryptoKey;
  try {
    publicKey = await rsa.importOaepKey(signed.publicKey);
  } catch (e) {
    throw new Error(`its key is unusable (${(e as Error).message})`);
  }
  return { user: peer.user, prekeyId: signed.prekeyId, publicKey };
}
