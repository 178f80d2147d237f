/**
 * The plaintext of a message (PROTOCOL.md, "The JSON envelope", "Padding", "Receipts"):
 * texts and receipts encoded and padded to a multiple of 256 bytes, decoded strictly,
 * and a text escaped for one line.
 */
import { fromUtf8, utf8 } from "./crypto/bytes.js";
import { hasLoneSurrogate, JsonNumber, parseStrictJson, type JsonObject } from "./json.js";

export const PAD_MULTIPLE = 256;
const PAD_FIELD_BYTES = ',"pad":""'.length;
const U64_END = 1n << 64n;

export function padSpaces(unpaddedLength: number): number {
  return (PAD_MULTIPLE - ((unpaddedLength + PAD_FIELD_BYTES) % PAD_MULTIPLE)) % PAD_MULTIPLE;
}

/** Adds `,"pad":"<spaces>"` before the closing brace of a non-empty JSON object. */
export function padEnvelope(unpadded: Uint8Array): Uint8Array {
  const text = fromUtf8(unpadded);
  if (!text.endsWith("}") || text === "{}") throw new Error("only a non-empty JSON object can be padded");
  return utf8(text.slice(0, -1) + ',"pad":"' + " ".repeat(padSpaces(unpadded.length)) + '"}');
}

function serialize(fields: string[]): Uint8Array {
  return padEnvelope(utf8("{" + fields.join(",") + "}"));
}

const q = (s: string) => JSON.stringify(s);

export function encodeText(sender: string, text: string, sentAtMs: number): Uint8Array {
  return serialize([`"v":1`, `"type":"text"`, `"sender":${q(sender)}`, `"text":${q(text)}`, `"sent_at_ms":${Math.floor(sentAtMs)}`]);
}

export function encodeReceipt(sender: string, sentAtMs: number, deliveredThrough: bigint, readThrough: bigint): Uint8Array {
  const read = readThrough < deliveredThrough ? readThrough : deliveredThrough;
  return serialize([
    `"v":1`, `"type":"receipt"`, `"sender":${q(sender)}`, `"text":""`, `"sent_at_ms":${Math.floor(sentAtMs)}`,
    `"delivered_through":${deliveredThrough}`, `"read_through":${read}`,
  ]);
}

export interface Envelope {
  kind: string;
  sender: string;
  text: string;
  sentAtMs: bigint;
  deliveredThrough?: bigint;
  readThrough?: bigint;
}

export class EnvelopeError extends Error {}

function u64(obj: JsonObject, field: string): bigint | null {
  const v = obj[field];
  if (!(v instanceof JsonNumber)) return null;
  const n = v.integer;
  return n !== null && n >= 0n && n < U64_END ? n : null;
}

/** Parses and checks an envelope; throws EnvelopeError for anything to drop. */
export function decodeEnvelope(plaintext: Uint8Array, expectedSender: string): Envelope {
  let data;
  try {
    data = parseStrictJson(fromUtf8(plaintext));
  } catch (e) {
    throw new EnvelopeError(`not UTF-8 JSON: ${(e as Error).message}`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data) || data instanceof JsonNumber) {
    throw new EnvelopeError("not a JSON object");
  }
  const obj = data as JsonObject;
  const v = u64(obj, "v");
  if (v === null || v >= 1n << 32n) throw new EnvelopeError("missing or invalid v");
  if (v !== 1n) throw new EnvelopeError(`unsupported envelope version ${v}`);
  const kind = obj["type"];
  const sender = obj["sender"];
  const text = obj["text"];
  if (typeof kind !== "string") throw new EnvelopeError("missing or non-string type");
  if (typeof sender !== "string") throw new EnvelopeError("missing or non-string sender");
  if (sender !== expectedSender) throw new EnvelopeError(`envelope claims sender "${sender}"`);
  const sentAtMs = u64(obj, "sent_at_ms");
  if (sentAtMs === null) throw new EnvelopeError("missing or invalid sent_at_ms");
  if (typeof text !== "string") throw new EnvelopeError("missing or non-string text");
  for (const [field, value] of [["type", kind], ["sender", sender], ["text", text]] as const) {
    if (hasLoneSurrogate(value)) throw new EnvelopeError(`${field} is not valid Unicode`);
  }
  if (kind !== "receipt") return { kind, sender, text, sentAtMs };
  const deliveredThrough = u64(obj, "delivered_through");
  const readThrough = u64(obj, "read_through");
  if (deliveredThrough === null) throw new EnvelopeError("a receipt with a missing or invalid delivered_through");
  if (readThrough === null) throw new EnvelopeError("a receipt with a missing or invalid read_through");
  return { kind, sender, text, sentAtMs, deliveredThrough, readThrough };
}

const BIDI = new Set([0x061c, 0x200e, 0x200f, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069]);

function mustEscape(cp: number): boolean {
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp === 0x2028 || cp === 0x2029 || BIDI.has(cp);
}

/** Controls, line separators and bidi controls as `\u{hex}`: one message is one line that shows what it says. */
export function escapeText(text: string): string {
  let out = "";
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    out += mustEscape(cp) ? `\\u{${cp.toString(16)}}` : ch;
  }
  return out;
}
