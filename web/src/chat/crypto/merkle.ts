/**
 * The Merkle tree over a distribution's copies: RFC 6962 over SHA-256 (PROTOCOL.md,
 * "The Merkle tree"): roots, audit paths, and the root rebuilt from a leaf and its path.
 */
import { concat, sha256 } from "./bytes.js";

export function leafHash(leaf: Uint8Array): Promise<Uint8Array> {
  return sha256(concat(new Uint8Array([0]), leaf));
}

export function nodeHash(left: Uint8Array, right: Uint8Array): Promise<Uint8Array> {
  return sha256(concat(new Uint8Array([1]), left, right));
}

/** The largest power of two strictly below n (n > 1). */
function split(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

export async function merkleRoot(hashes: Uint8Array[]): Promise<Uint8Array> {
  if (hashes.length === 0) throw new Error("a tree has at least one leaf");
  if (hashes.length === 1) return hashes[0]!;
  const k = split(hashes.length);
  return nodeHash(await merkleRoot(hashes.slice(0, k)), await merkleRoot(hashes.slice(k)));
}

/** Sibling hashes of leaf m, from the leaf up to the root. */
export async function auditPath(hashes: Uint8Array[], m: number): Promise<Uint8Array[]> {
  if (hashes.length <= 1) return [];
  const k = split(hashes.length);
  if (m < k) return [...(await auditPath(hashes.slice(0, k), m)), await merkleRoot(hashes.slice(k))];
  return [...(await auditPath(hashes.slice(k), m - k)), await merkleRoot(hashes.slice(0, k))];
}

/** The root a leaf hash, its place and its path lead to; null refuses the copy. */
export async function rootFromPath(
  leaf: Uint8Array, index: number, count: number, path: Uint8Array[],
): Promise<Uint8Array | null> {
  if (count < 1 || index >= count || path.some((p) => p.length !== 32)) return null;
  const sides: boolean[] = []; // from the root down: is our subtree the right one?
  while (count > 1) {
    const k = split(count);
    if (index < k) {
      sides.push(false);
      count = k;
    } else {
      sides.push(true);
      index -= k;
      count -= k;
    }
  }
  if (sides.length !== path.length) return null;
  let h = leaf;
  sides.reverse();
  for (let i = 0; i < path.length; i++) {
    h = sides[i] ? await nodeHash(path[i]!, h) : await nodeHash(h, path[i]!);
  }
  return h;
}
