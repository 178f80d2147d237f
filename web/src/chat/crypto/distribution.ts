/**
 * Handing a sender key out (PROTOCOL.md, "A distribution" and "Receiving a sender key"):
 * frames of at most 96 copies, each with its Merkle tree and one RSA-PSS signature; and a
 * delivery's checks (sizes, Merkle path, signature) before any RSA decryption, then the
 * unwrap of our own copy.
 */
import { create } from "@bufbuild/protobuf";
import {
  DistributeSenderKeySchema, DistributionHeaderSchema, WrappedChainKeySchema,
  type DistributeSenderKey, type SenderKeyDelivery, type WrappedChainKey,
} from "../../gen/chat/v2/chat_pb.js";
import { copyLabel, copyLeaf, distributionBytes } from "./binding.js";
import { leafHash, merkleRoot, rootFromPath } from "./merkle.js";
import * as rsa from "./rsa.js";
import { DEVICE, MAX_COPIES_PER_DISTRIBUTION } from "../protocol.js";

export interface CopyTarget {
  recipient: string;
  prekeyId: bigint;
  prekey: CryptoKey;
}

export interface HandoutParams {
  room: string;
  sender: string;
  keyId: bigint;
  iteration: number;
  signingPublicKey: Uint8Array;
  chainKey: Uint8Array;
  sign: (data: Uint8Array) => Promise<Uint8Array>;
}

export async function buildDistributions(p: HandoutParams, targets: CopyTarget[]): Promise<DistributeSenderKey[]> {
  const copies: WrappedChainKey[] = [];
  for (const t of targets) {
    const label = copyLabel(p.room, p.sender, DEVICE, t.recipient, DEVICE, p.keyId, t.prekeyId);
    copies.push(create(WrappedChainKeySchema, {
      recipient: t.recipient, device: DEVICE, prekeyId: t.prekeyId, wrapped: await rsa.wrap(t.prekey, p.chainKey, label),
    }));
  }
  const header = create(DistributionHeaderSchema, {
    keyId: p.keyId, iteration: p.iteration, device: DEVICE, signingPublicKey: p.signingPublicKey,
  });
  const frames: DistributeSenderKey[] = [];
  for (let start = 0; start < copies.length; start += MAX_COPIES_PER_DISTRIBUTION) {
    const chunk = copies.slice(start, start + MAX_COPIES_PER_DISTRIBUTION);
    const leaves = await Promise.all(chunk.map((c) => leafHash(copyLeaf(c.recipient, c.device, c.prekeyId, c.wrapped))));
    const root = await merkleRoot(leaves);
    const signature = await p.sign(distributionBytes(
      p.room, p.sender, DEVICE, p.keyId, p.iteration, p.signingPublicKey, chunk.length, root,
    ));
    frames.push(create(DistributeSenderKeySchema, { room: p.room, header, copies: chunk, signature }));
  }
  return frames;
}

/** Step 3 of "Receiving a sender key": before any RSA decryption. */
export async function deliveryVerifies(signingKey: CryptoKey, d: SenderKeyDelivery): Promise<boolean> {
  const header = d.header;
  const copy = d.copy;
  if (!header || !copy) return false;
  if (header.signingPublicKey.length !== 32) return false;
  if (d.path.some((p) => p.length !== 32)) return false;
  let leaf: Uint8Array;
  try {
    leaf = await leafHash(copyLeaf(copy.recipient, copy.device, copy.prekeyId, copy.wrapped));
  } catch {
    return false;
  }
  const root = await rootFromPath(leaf, d.index, d.count, d.path);
  if (!root) return false;
  let signed: Uint8Array;
  try {
    signed = distributionBytes(d.room, d.sender, header.device, header.keyId, header.iteration, header.signingPublicKey, d.count, root);
  } catch {
    return false;
  }
  return rsa.verify(signingKey, d.signature, signed);
}

/** Steps 6 and 7: our own copy, under a prekey we hold, unwrapped; or why not. */
export async function unwrapDelivery(
  d: SenderKeyDelivery, me: string, prekeyPrivate: (id: bigint) => CryptoKey | null,
): Promise<{ chainKey: Uint8Array } | { error: string }> {
  const header = d.header!;
  const copy = d.copy!;
  const privateKey = prekeyPrivate(copy.prekeyId);
  if (!privateKey) return { error: "it is wrapped under a prekey this device no longer has" };
  if (copy.recipient !== me || copy.device !== DEVICE) return { error: "it does not unwrap" };
  const label = copyLabel(d.room, d.sender, header.device, me, DEVICE, header.keyId, copy.prekeyId);
  const chainKey = await rsa.unwrap(privateKey, copy.wrapped, label);
  return chainKey ? { chainKey } : { error: "it does not unwrap" };
}
