/** The JSON envelope: round trips, padding to 256 bytes, strict parsing, receipts, escaping. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { utf8 } from "../../src/chat/crypto/bytes.js";
import { decodeEnvelope, encodeReceipt, encodeText, escapeText, EnvelopeError, padSpaces } from "../../src/chat/envelope.js";

test("a text round trips and is padded to a multiple of 256 bytes", () => {
  for (const text of ["", "hello", "é".repeat(300), "x".repeat(246), "x".repeat(247), '"quoted" \\ \n line']) {
    const bytes = encodeText("alice", text, 1764012345678);
    assert.equal(bytes.length % 256, 0, `length ${bytes.length}`);
    const env = decodeEnvelope(bytes, "alice");
    assert.equal(env.kind, "text");
    assert.equal(env.text, text);
    assert.equal(env.sentAtMs, 1764012345678n);
  }
});

test("pad spaces follow (256 - (L + 9) mod 256) mod 256", () => {
  assert.equal(padSpaces(247), 0);
  assert.equal(padSpaces(248), 255);
  assert.equal(padSpaces(0), 247);
});

test("a receipt round trips, padded like a text, read never above delivered", () => {
  const bytes = encodeReceipt("bob", 1764012345999, 42n, 50n);
  assert.equal(bytes.length % 256, 0);
  assert.equal(encodeText("bob", "hi", 1).length, bytes.length);
  const env = decodeEnvelope(bytes, "bob");
  assert.equal(env.kind, "receipt");
  assert.equal(env.deliveredThrough, 42n);
  assert.equal(env.readThrough, 42n);
});

test("an unpadded envelope of any length is accepted; unknown fields ignored", () => {
  const env = decodeEnvelope(utf8('{"v":1,"type":"text","sender":"a","text":"t","sent_at_ms":18446744073709551615,"new":[1,{"x":null}]}'), "a");
  assert.equal(env.sentAtMs, 18446744073709551615n);
});

test("bad envelopes are refused", () => {
  const bad = [
    '{"v":1,"type":"text","sender":"a","text":"t","sent_at_ms":1,"text":"u"}', // duplicate field
    '{"v":1,"type":"text","sender":"a","text":"t","sent_at_ms":1.0}', // not an integer
    '{"v":1,"type":"text","sender":"a","text":"t","sent_at_ms":1e3}',
    '{"v":1,"type":"text","sender":"a","text":"t","sent_at_ms":18446744073709551616}', // past u64
    '{"v":1,"type":"text","sender":"a","text":"t","sent_at_ms":-1}',
    '{"v":2,"type":"text","sender":"a","text":"t","sent_at_ms":1}',
    '{"v":1,"type":"text","sender":"b","text":"t","sent_at_ms":1}', // another sender
    '{"v":1,"type":"text","sender":"a","sent_at_ms":1}', // no text
    '{"v":1,"type":"text","sender":"a","text":5,"sent_at_ms":1}',
    '{"v":1,"type":"text","sender":"a","text":"\\ud800","sent_at_ms":1}', // lone surrogate
    '{"v":1,"type":"receipt","sender":"a","text":"","sent_at_ms":1,"delivered_through":1}',
    '{"v":1,"type":"text","sender":"a","text":"t","sent_at_ms":1} x',
    "[1]",
    "not json",
  ];
  for (const text of bad) assert.throws(() => decodeEnvelope(utf8(text), "a"), EnvelopeError, text);
  assert.throws(() => decodeEnvelope(new Uint8Array([0xff, 0xfe]), "a"), EnvelopeError);
});

test("texts are escaped as Rust's escape_unicode for one line", () => {
  assert.equal(escapeText("a\nb\u202e\u0000\u007f\u2028 ok \\ é"), "a\\u{a}b\\u{202e}\\u{0}\\u{7f}\\u{2028} ok \\ é");
});
