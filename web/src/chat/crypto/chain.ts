/**
 * The sender-key chain (PROTOCOL.md, "Sender keys"): HMAC-SHA256 steps, each message's
 * AES-256-GCM key and nonce from HKDF-SHA256, and the AEAD itself. WebCrypto needs the
 * chain key as raw bytes to key each HMAC; they are dropped as soon as the chain moves.
 */
import { buf } from "./bytes.js";
import { TAGS } from "./binding.js";

const ONE = new Uint8Array([1]);
const TWO = new Uint8Array([2]);
const ZERO_SALT = new Uint8Array(32);

async function hmac(key: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
  const k = await crypto.subtle.importKey("raw", buf(key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", k, buf(data)));
}

export function nextChainKey(chainKey: Uint8Array): Promise<Uint8Array> {
  return hmac(chainKey, TWO);
}

export interface MessageKey {
  key: Uint8Array;
  nonce: Uint8Array;
}

export async function messageKey(chainKey: Uint8Array): Promise<MessageKey> {
  const seed = await hmac(chainKey, ONE);
  const ikm = await crypto.subtle.importKey("raw", buf(seed), "HKDF", false, ["deriveBits"]);
  const okm = new Uint8Array(
    await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: ZERO_SALT, info: buf(TAGS.messageKey) }, ikm, 44 * 8),
  );
  return { key: okm.slice(0, 32), nonce: okm.slice(32, 44) };
}

export async function seal(mk: MessageKey, plaintext: Uint8Array, ad: Uint8Array): Promise<Uint8Array> {
  const key = await crypto.subtle.importKey("raw", buf(mk.key), "AES-GCM", false, ["encrypt"]);
  return new Uint8Array(
    await crypto.subtle.encrypt({ name: "AES-GCM", iv: buf(mk.nonce), additionalData: buf(ad), tagLength: 128 }, key, buf(plaintext)),
  );
}

/** The plaintext, or null when the tag does not verify. */
export async function open(mk: MessageKey, ciphertext: Uint8Array, ad: Uint8Array): Promise<Uint8Array | null> {
  if (ciphertext.length < 16) return null;
  const key = await crypto.subtle.importKey("raw", buf(mk.key), "AES-GCM", false, ["decrypt"]);
  try {
    return new Uint8Array(
      await crypto.subtle.decrypt({ name: "AES-GCM", iv: buf(mk.nonce), additionalData: buf(ad), tagLength: 128 }, key, buf(ciphertext)),
    );
  } catch {
    return null;
  }
}
