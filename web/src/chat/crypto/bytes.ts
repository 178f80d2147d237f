/**
 * Byte helpers and the length-prefixed encodings of PROTOCOL.md ("Notation"):
 * str(x), bytes(x), u16be, u32be, u64be; hex; constant comparisons.
 */

const encoder = new TextEncoder();

export function utf8(text: string): Uint8Array {
  return encoder.encode(text);
}

export function fromUtf8(data: Uint8Array): string {
  // fatal: an envelope that is not UTF-8 must be refused, not repaired.
  return new TextDecoder("utf-8", { fatal: true }).decode(data);
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

export function u16be(n: number): Uint8Array {
  if (!Number.isInteger(n) || n < 0 || n > 0xffff) throw new RangeError(`${n} is not a u16`);
  return new Uint8Array([n >>> 8, n & 0xff]);
}

export function u32be(n: number): Uint8Array {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`${n} is not a u32`);
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n);
  return out;
}

export function u64be(n: bigint | number): Uint8Array {
  const v = BigInt(n);
  if (v < 0n || v >= 1n << 64n) throw new RangeError(`${n} is not a u64`);
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, v);
  return out;
}

/** `str(x)`: u16be(len) || UTF-8 bytes. */
export function encStr(text: string): Uint8Array {
  const data = utf8(text);
  return concat(u16be(data.length), data);
}

/** `bytes(x)`: u32be(len) || x. */
export function encBytes(data: Uint8Array): Uint8Array {
  return concat(u32be(data.length), data);
}

export function toHex(data: Uint8Array): string {
  let out = "";
  for (const b of data) out += b.toString(16).padStart(2, "0");
  return out;
}

export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) throw new Error("not hex");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

export function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  crypto.getRandomValues(out);
  return out;
}

export function randomU64(): bigint {
  return new DataView(randomBytes(8).buffer).getBigUint64(0);
}

/** A key id or prekey id as 16 lowercase hex digits. */
export function hex64(n: bigint): string {
  return n.toString(16).padStart(16, "0");
}

/** WebCrypto wants a BufferSource backed by an ArrayBuffer; a copy makes it so. */
export function buf(data: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(data);
}

export function sha256(data: Uint8Array): Promise<Uint8Array> {
  return crypto.subtle.digest("SHA-256", buf(data)).then((d) => new Uint8Array(d));
}
