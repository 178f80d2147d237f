/** Following a member's chain: any order, each message once, bounded jumps and kept keys, hand-out point. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { utf8 } from "../../src/chat/crypto/bytes.js";
import { OwnSenderKey, PeerSenderKey, type Sealed } from "../../src/chat/crypto/senderkey.js";

const SEED = new Uint8Array(32).fill(9);

async function setup(count: number, maxJump?: number, maxKept?: number) {
  const chain = new Uint8Array(32).fill(3);
  const own = await OwnSenderKey.fromParts(42n, chain, SEED);
  const sealed: Sealed[] = [];
  for (let i = 0; i < count; i++) sealed.push(await own.seal("r", "alice", utf8(`m${i}`)));
  const peer = new PeerSenderKey(42n, own.signingPublicKey, chain, 0, maxJump, maxKept);
  return { own, sealed, peer, chain };
}

const text = (r: { ok: boolean; plaintext?: Uint8Array }) => (r.ok ? new TextDecoder().decode(r.plaintext) : null);

test("messages open in any order, each once", async () => {
  const { sealed, peer } = await setup(5);
  for (const i of [3, 0, 4, 1, 2]) assert.equal(text(await peer.open("r", "alice", i, sealed[i]!.ciphertext)), `m${i}`);
  for (let i = 0; i < 5; i++) assert.equal((await peer.open("r", "alice", i, sealed[i]!.ciphertext)).ok, false);
  assert.equal(peer.keptCount, 0);
});

test("a message too far ahead is dropped and moves nothing", async () => {
  const { sealed, peer } = await setup(6, 3);
  const r = await peer.open("r", "alice", 5, sealed[5]!.ciphertext);
  assert.ok(!r.ok && r.reason === "ahead" && /ahead/.test(r.detail));
  assert.equal(peer.nextIteration, 0);
  assert.equal(text(await peer.open("r", "alice", 3, sealed[3]!.ciphertext)), "m3");
});

test("kept keys are bounded: the lowest go first", async () => {
  const { sealed, peer } = await setup(6, 100, 2);
  assert.equal(text(await peer.open("r", "alice", 5, sealed[5]!.ciphertext)), "m5");
  assert.equal(peer.keptCount, 2);
  assert.equal((await peer.open("r", "alice", 0, sealed[0]!.ciphertext)).ok, false);
  assert.equal(text(await peer.open("r", "alice", 4, sealed[4]!.ciphertext)), "m4");
});

test("a bad tag changes nothing; the wrong room or sender does not open", async () => {
  const { sealed, peer } = await setup(2);
  const bad = new Uint8Array(sealed[1]!.ciphertext);
  bad[bad.length - 1]! ^= 1;
  assert.equal((await peer.open("r", "alice", 1, bad)).ok, false);
  assert.equal(peer.nextIteration, 0);
  assert.equal((await peer.open("other", "alice", 1, sealed[1]!.ciphertext)).ok, false);
  assert.equal((await peer.open("r", "bob", 1, sealed[1]!.ciphertext)).ok, false);
  assert.equal(text(await peer.open("r", "alice", 1, sealed[1]!.ciphertext)), "m1");
});

test("the hand-out point moves with acknowledgements, never back; a later key cannot open what came before", async () => {
  const { own, sealed } = await setup(4);
  assert.equal(own.handout().iteration, 0);
  await own.acknowledged(1);
  assert.equal(own.handout().iteration, 2);
  await own.acknowledged(0);
  assert.equal(own.handout().iteration, 2);
  await own.acknowledged(3);
  assert.equal(own.handout().iteration, 4);
  const { iteration, chainKey } = own.handout();
  const late = new PeerSenderKey(42n, own.signingPublicKey, chainKey, iteration);
  for (let i = 0; i < 4; i++) assert.equal((await late.open("r", "alice", i, sealed[i]!.ciphertext)).ok, false);
  const next = await own.seal("r", "alice", utf8("m4"));
  assert.equal(text(await late.open("r", "alice", next.iteration, next.ciphertext)), "m4");
});
