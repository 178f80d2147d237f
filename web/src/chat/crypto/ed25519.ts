/**
 * Ed25519 through WebCrypto, verified strictly as ed25519-dalek's verify_strict
 * (PROTOCOL.md, "Ed25519"): S below the group order and R and A not of small order are
 * checked here (BigInt arithmetic on public values only); the equation is WebCrypto's.
 */
import { buf, concat } from "./bytes.js";

const P = 2n ** 255n - 19n;
const L = 2n ** 252n + 27742317777372353535851937790883648493n;

function mod(a: bigint): bigint {
  const r = a % P;
  return r < 0n ? r + P : r;
}

function pow(base: bigint, exp: bigint): bigint {
  let result = 1n;
  base = mod(base);
  while (exp > 0n) {
    if (exp & 1n) result = (result * base) % P;
    base = (base * base) % P;
    exp >>= 1n;
  }
  return result;
}

const D = mod(-121665n * pow(121666n, P - 2n));
const SQRT_M1 = pow(2n, (P - 1n) / 4n);

function littleEndian(bytes: Uint8Array): bigint {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]!);
  return n;
}

type Point = [bigint, bigint];

/** The affine point an encoding names (y taken modulo p), or null. */
function decompress(encoding: Uint8Array): Point | null {
  let y = littleEndian(encoding);
  const sign = y >> 255n;
  y = (y & ((1n << 255n) - 1n)) % P;
  const u = mod(y * y - 1n);
  const v = mod(D * y * y + 1n);
  const x2 = (u * pow(v, P - 2n)) % P;
  let x = pow(x2, (P + 3n) / 8n);
  if (mod(x * x - x2) !== 0n) x = (x * SQRT_M1) % P;
  if (mod(x * x - x2) !== 0n) return null;
  if ((x & 1n) !== sign) x = mod(P - x);
  return [x, y];
}

function add([x1, y1]: Point, [x2, y2]: Point): Point {
  const t = mod(D * x1 * x2 * y1 * y2);
  const x3 = mod((x1 * y2 + y1 * x2) * pow(1n + t, P - 2n));
  const y3 = mod((y1 * y2 + x1 * x2) * pow(1n - t, P - 2n));
  return [x3, y3];
}

/** True for a point of small order, and for an encoding that names no point. */
export function isSmallOrder(encoding: Uint8Array): boolean {
  let point = decompress(encoding);
  if (point === null) return true;
  for (let i = 0; i < 3; i++) point = add(point, point);
  return point[0] === 0n && point[1] === 1n;
}

export function validPublicKey(publicKey: Uint8Array): boolean {
  return publicKey.length === 32 && !isSmallOrder(publicKey);
}

/** Strict RFC 8032 verification; never throws. */
export async function verifyStrict(publicKey: Uint8Array, signature: Uint8Array, data: Uint8Array): Promise<boolean> {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  if (littleEndian(signature.subarray(32)) >= L) return false;
  if (isSmallOrder(publicKey) || isSmallOrder(signature.subarray(0, 32))) return false;
  try {
    const key = await crypto.subtle.importKey("raw", buf(publicKey), { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify("Ed25519", key, buf(signature), buf(data));
  } catch {
    return false;
  }
}

export interface Ed25519Pair {
  privateKey: CryptoKey;
  publicKey: Uint8Array;
}

export async function generatePair(): Promise<Ed25519Pair> {
  const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"])) as CryptoKeyPair;
  return { privateKey: pair.privateKey, publicKey: new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey)) };
}

const PKCS8_PREFIX = new Uint8Array([0x30, 0x2e, 2, 1, 0, 0x30, 5, 6, 3, 0x2b, 0x65, 0x70, 4, 0x22, 4, 0x20]);

/** A key pair from a 32-byte seed (the vectors use one). */
export async function pairFromSeed(seed: Uint8Array): Promise<Ed25519Pair> {
  const privateKey = await crypto.subtle.importKey("pkcs8", buf(concat(PKCS8_PREFIX, seed)), { name: "Ed25519" }, true, ["sign"]);
  const jwk = await crypto.subtle.exportKey("jwk", privateKey);
  const publicKey = Uint8Array.from(atob(jwk.x!.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
  return { privateKey, publicKey };
}

export async function sign(privateKey: CryptoKey, data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("Ed25519", privateKey, buf(data)));
}
