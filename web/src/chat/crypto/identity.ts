/**
 * Who a user is: fingerprints and safety numbers (PROTOCOL.md, "Trusting keys"), this
 * user's Identity (two non-extractable RSA key pairs) and another user's PeerIdentity,
 * checked (keys parse and are 2048..4096 bits, differ, self-signature verifies).
 */
import { identityBytes, fingerprintInput, safetyNumberInput } from "./binding.js";
import { sha256, toHex } from "./bytes.js";
import * as rsa from "./rsa.js";
import { isValidUserName } from "../protocol.js";
import { create } from "@bufbuild/protobuf";
import { PublicIdentitySchema, type PublicIdentity } from "../../gen/chat/v2/chat_pb.js";

export function fingerprint(signingDer: Uint8Array, encryptionDer: Uint8Array): Promise<Uint8Array> {
  return sha256(fingerprintInput(signingDer, encryptionDer));
}

/** 64 upper-case hex digits in 16 groups of 4, as the Rust client shows it. */
export function formatFingerprint(fp: Uint8Array): string {
  return toHex(fp).toUpperCase().match(/.{4}/g)!.join(" ");
}

async function safetyHalf(user: string, fp: Uint8Array): Promise<string> {
  const h = await sha256(safetyNumberInput(user, fp));
  let out = "";
  for (let i = 0; i < 30; i += 5) {
    let n = 0n;
    for (let j = i; j < i + 5; j++) n = (n << 8n) | BigInt(h[j]!);
    out += (n % 100000n).toString().padStart(5, "0");
  }
  return out;
}

/** 60 digits in 12 groups of 5, the same whichever of the two computes it. */
export async function safetyNumber(userA: string, fpA: Uint8Array, userB: string, fpB: Uint8Array): Promise<string> {
  const halves = [await safetyHalf(userA, fpA), await safetyHalf(userB, fpB)].sort();
  return halves.join("").match(/.{5}/g)!.join(" ");
}

/** What the vault keeps of our identity: CryptoKeys stay non-extractable through structured clone. */
export interface StoredIdentity {
  user: string;
  signing: CryptoKeyPair;
  encryption: CryptoKeyPair;
}

export class Identity {
  private constructor(
    readonly user: string,
    readonly stored: StoredIdentity,
    readonly signingDer: Uint8Array,
    readonly encryptionDer: Uint8Array,
    readonly fingerprint: Uint8Array,
    private readonly selfSignature: Uint8Array,
  ) {}

  static async generate(user: string, bits = rsa.DEFAULT_KEY_BITS, onProgress?: (msg: string) => void): Promise<Identity> {
    if (!isValidUserName(user)) throw new Error(`invalid user name "${user}": use 1 to 32 of letters, digits and _ . -`);
    onProgress?.(`making the signing key (RSA ${bits})...`);
    const signing = await rsa.generateSigningPair(bits);
    onProgress?.(`making the encryption key (RSA ${bits})...`);
    const encryption = await rsa.generateOaepPair(bits);
    return Identity.load({ user, signing, encryption });
  }

  static async load(stored: StoredIdentity): Promise<Identity> {
    const signingDer = await rsa.spkiDer(stored.signing.publicKey);
    const encryptionDer = await rsa.spkiDer(stored.encryption.publicKey);
    const fp = await fingerprint(signingDer, encryptionDer);
    const sig = await rsa.sign(stored.signing.privateKey, identityBytes(stored.user, signingDer, encryptionDer));
    return new Identity(stored.user, stored, signingDer, encryptionDer, fp, sig);
  }

  get signingPublicKey(): CryptoKey {
    return this.stored.signing.publicKey;
  }

  sign(data: Uint8Array): Promise<Uint8Array> {
    return rsa.sign(this.stored.signing.privateKey, data);
  }

  publicIdentity(): PublicIdentity {
    return create(PublicIdentitySchema, {
      user: this.user,
      signingPublicKey: this.signingDer,
      encryptionPublicKey: this.encryptionDer,
      signature: this.selfSignature,
    });
  }
}

export class PeerIdentity {
  private constructor(
    readonly user: string,
    readonly signingKey: CryptoKey,
    readonly fingerprint: Uint8Array,
    readonly raw: PublicIdentity,
  ) {}

  get fingerprintHex(): string {
    return toHex(this.fingerprint);
  }

  /** Checks an identity from the relay; throws an Error saying why it must not be used. */
  static async check(identity: PublicIdentity): Promise<PeerIdentity> {
    if (!isValidUserName(identity.user)) throw new Error("invalid user name");
    let signingKey: CryptoKey;
    let encryptionKey: CryptoKey;
    try {
      signingKey = await rsa.importVerifyKey(identity.signingPublicKey);
    } catch (e) {
      throw new Error(`unusable signing key (${(e as Error).message})`);
    }
    try {
      encryptionKey = await rsa.importOaepKey(identity.encryptionPublicKey);
    } catch (e) {
      throw new Error(`unusable encryption key (${(e as Error).message})`);
    }
    if ((await rsa.modulus(signingKey)) === (await rsa.modulus(encryptionKey))) {
      throw new Error("its signing and encryption keys are the same key");
    }
    const signed = identityBytes(identity.user, identity.signingPublicKey, identity.encryptionPublicKey);
    if (!(await rsa.verify(signingKey, identity.signature, signed))) throw new Error("its signature does not verify");
    const fp = await fingerprint(identity.signingPublicKey, identity.encryptionPublicKey);
    return new PeerIdentity(identity.user, signingKey, fp, identity);
  }
}
