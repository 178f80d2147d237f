/**
 * The exact byte strings that bind keys, messages and signatures to their context
 * (PROTOCOL.md, "Signed and bound byte strings"): domain tags, signed strings, OAEP
 * labels, Merkle leaves and associated data.
 */
import { concat, encBytes, encStr, u32be, u64be, utf8 } from "./bytes.js";

export const TAGS = {
  identity: utf8("chat.v1/identity"),
  login: utf8("chat.v1/login"),
  fingerprint: utf8("chat.v1/fingerprint"),
  safetyNumber: utf8("chat.v1/safety-number"),
  prekey: utf8("chat.v2/prekey"),
  messageKey: utf8("chat.v2/message-key"),
  message: utf8("chat.v2/message"),
  messageSignature: utf8("chat.v2/message-signature"),
  copyLabel: utf8("chat.v2/sender-key"),
  copyLeaf: utf8("chat.v2/sender-key-copy"),
  distribution: utf8("chat.v2/sender-key-distribution"),
  invitation: utf8("chat.v2/invitation"),
  removal: utf8("chat.v2/removal"),
} as const;

export function identityBytes(user: string, signingDer: Uint8Array, encryptionDer: Uint8Array): Uint8Array {
  return concat(TAGS.identity, encStr(user), encBytes(signingDer), encBytes(encryptionDer));
}

export function loginBytes(user: string, challenge: Uint8Array): Uint8Array {
  return concat(TAGS.login, encStr(user), encBytes(challenge));
}

export function fingerprintInput(signingDer: Uint8Array, encryptionDer: Uint8Array): Uint8Array {
  return concat(TAGS.fingerprint, encBytes(signingDer), encBytes(encryptionDer));
}

export function safetyNumberInput(user: string, fingerprint: Uint8Array): Uint8Array {
  return concat(TAGS.safetyNumber, encStr(user), fingerprint);
}

export function prekeyBytes(
  user: string, device: number, prekeyId: bigint, createdAtMs: bigint, publicDer: Uint8Array,
): Uint8Array {
  return concat(TAGS.prekey, encStr(user), u32be(device), u64be(prekeyId), u64be(createdAtMs), encBytes(publicDer));
}

export function messageAd(room: string, sender: string, device: number, keyId: bigint, iteration: number): Uint8Array {
  return concat(TAGS.message, encStr(room), encStr(sender), u32be(device), u64be(keyId), u32be(iteration));
}

export function messageSignedBytes(
  room: string, sender: string, device: number, keyId: bigint, iteration: number, ciphertext: Uint8Array,
): Uint8Array {
  return concat(
    TAGS.messageSignature, encStr(room), encStr(sender), u32be(device), u64be(keyId), u32be(iteration),
    encBytes(ciphertext),
  );
}

export function copyLabel(
  room: string, sender: string, senderDevice: number, recipient: string, recipientDevice: number,
  keyId: bigint, prekeyId: bigint,
): Uint8Array {
  return concat(
    TAGS.copyLabel, encStr(room), encStr(sender), u32be(senderDevice), encStr(recipient), u32be(recipientDevice),
    u64be(keyId), u64be(prekeyId),
  );
}

export function copyLeaf(recipient: string, recipientDevice: number, prekeyId: bigint, wrapped: Uint8Array): Uint8Array {
  return concat(TAGS.copyLeaf, encStr(recipient), u32be(recipientDevice), u64be(prekeyId), encBytes(wrapped));
}

export function distributionBytes(
  room: string, sender: string, senderDevice: number, keyId: bigint, iteration: number,
  signingPublicKey: Uint8Array, copyCount: number, merkleRoot: Uint8Array,
): Uint8Array {
  if (merkleRoot.length !== 32) throw new Error("a Merkle root is 32 bytes");
  return concat(
    TAGS.distribution, encStr(room), encStr(sender), u32be(senderDevice), u64be(keyId), u32be(iteration),
    encBytes(signingPublicKey), u32be(copyCount), merkleRoot,
  );
}

export function invitationBytes(
  room: string, owner: string, invitee: string, inviteeFingerprint: Uint8Array, issuedAtMs: bigint,
): Uint8Array {
  if (inviteeFingerprint.length !== 32) throw new Error("a fingerprint is 32 bytes");
  return concat(TAGS.invitation, encStr(room), encStr(owner), encStr(invitee), inviteeFingerprint, u64be(issuedAtMs));
}

export function removalBytes(room: string, owner: string, member: string, issuedAtMs: bigint): Uint8Array {
  return concat(TAGS.removal, encStr(room), encStr(owner), encStr(member), u64be(issuedAtMs));
}
