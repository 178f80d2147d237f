/**
 * RSA as the protocol uses it, through WebCrypto only: RSA-PSS (SHA-256, salt 32)
 * signatures, RSA-OAEP (SHA-256, MGF1-SHA-256) wrapping with a label, and peers' DER
 * SubjectPublicKeyInfo keys checked for size (2048..4096 bits).
 */
import { buf } from "./bytes.js";

export const PSS = { name: "RSA-PSS", saltLength: 32 } as const;
const PSS_IMPORT = { name: "RSA-PSS", hash: "SHA-256" } as const;
const OAEP_IMPORT = { name: "RSA-OAEP", hash: "SHA-256" } as const;
export const MIN_KEY_BITS = 2048;
export const MAX_KEY_BITS = 4096;
export const DEFAULT_KEY_BITS = 3072;

function generateParams(name: "RSA-PSS" | "RSA-OAEP", bits: number): RsaHashedKeyGenParams {
  return { name, modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" };
}

/** A key pair whose private half can never be exported (stored as a CryptoKey). */
export async function generateSigningPair(bits: number): Promise<CryptoKeyPair> {
  return crypto.subtle.generateKey(generateParams("RSA-PSS", bits), false, ["sign", "verify"]);
}

export async function generateOaepPair(bits: number): Promise<CryptoKeyPair> {
  return crypto.subtle.generateKey(generateParams("RSA-OAEP", bits), false, ["encrypt", "decrypt"]);
}

export async function spkiDer(publicKey: CryptoKey): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.exportKey("spki", publicKey));
}

export async function sign(privateKey: CryptoKey, data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign(PSS, privateKey, buf(data)));
}

/** Never throws: a key or signature that is malformed simply does not verify. */
export async function verify(publicKey: CryptoKey, signature: Uint8Array, data: Uint8Array): Promise<boolean> {
  try {
    return await crypto.subtle.verify(PSS, publicKey, buf(signature), buf(data));
  } catch {
    return false;
  }
}

export async function wrap(publicKey: CryptoKey, chainKey: Uint8Array, label: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.encrypt({ name: "RSA-OAEP", label: buf(label) }, publicKey, buf(chainKey)));
}

/** The chain key, or null if it does not unwrap or is not 32 bytes (one answer for all). */
export async function unwrap(privateKey: CryptoKey, wrapped: Uint8Array, label: Uint8Array): Promise<Uint8Array | null> {
  try {
    const key = new Uint8Array(
      await crypto.subtle.decrypt({ name: "RSA-OAEP", label: buf(label) }, privateKey, buf(wrapped)),
    );
    return key.length === 32 ? key : null;
  } catch {
    return null;
  }
}

function checkBits(key: CryptoKey): void {
  const bits = (key.algorithm as RsaHashedKeyAlgorithm).modulusLength;
  if (bits < MIN_KEY_BITS || bits > MAX_KEY_BITS) throw new Error(`${bits}-bit key is outside 2048..4096 bits`);
}

/** A peer's signing key; throws unless it is DER RSA of 2048..4096 bits. */
export async function importVerifyKey(der: Uint8Array): Promise<CryptoKey> {
  let key: CryptoKey;
  try {
    key = await crypto.subtle.importKey("spki", buf(der), PSS_IMPORT, true, ["verify"]);
  } catch (e) {
    throw new Error(`not a DER RSA public key (${(e as Error).message})`);
  }
  checkBits(key);
  return key;
}

/** A peer's encryption key or prekey (RSA-OAEP); throws unless DER RSA of 2048..4096 bits. */
export async function importOaepKey(der: Uint8Array): Promise<CryptoKey> {
  let key: CryptoKey;
  try {
    key = await crypto.subtle.importKey("spki", buf(der), OAEP_IMPORT, true, ["encrypt"]);
  } catch (e) {
    throw new Error(`not a DER RSA public key (${(e as Error).message})`);
  }
  checkBits(key);
  return key;
}

/** The modulus of a public key, to tell two keys apart whatever their DER encoding. */
export async function modulus(publicKey: CryptoKey): Promise<string> {
  const jwk = await crypto.subtle.exportKey("jwk", publicKey);
  return jwk.n ?? "";
}
