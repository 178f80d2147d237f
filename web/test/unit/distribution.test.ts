/** Distributions with real RSA keys: each recipient opens its own copy only; tampering is refused. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { SenderKeyDeliverySchema, type DistributeSenderKey, type SenderKeyDelivery } from "../../src/gen/chat/v2/chat_pb.js";
import { Identity, PeerIdentity } from "../../src/chat/crypto/identity.js";
import * as rsa from "../../src/chat/crypto/rsa.js";
import { buildDistributions, deliveryVerifies, unwrapDelivery } from "../../src/chat/crypto/distribution.js";
import { auditPath, leafHash } from "../../src/chat/crypto/merkle.js";
import { copyLeaf } from "../../src/chat/crypto/binding.js";
import { OwnSenderKey, PeerSenderKey } from "../../src/chat/crypto/senderkey.js";
import { utf8 } from "../../src/chat/crypto/bytes.js";
import { signInvitation, signRemoval, PrivateRoomRules } from "../../src/chat/crypto/membership.js";

const BITS = 2048;

async function deliveries(frame: DistributeSenderKey, sender: string): Promise<SenderKeyDelivery[]> {
  const leaves = await Promise.all(frame.copies.map((c) => leafHash(copyLeaf(c.recipient, c.device, c.prekeyId, c.wrapped))));
  return Promise.all(frame.copies.map(async (copy, index) => create(SenderKeyDeliverySchema, {
    room: frame.room, sender, header: frame.header, copy, index, count: frame.copies.length,
    path: await auditPath(leaves, index), signature: frame.signature, seq: 7n,
  })));
}

test("a distribution opens for each recipient, and only its own copy", async () => {
  const alice = await Identity.generate("alice", BITS);
  const alicePeer = await PeerIdentity.check(alice.publicIdentity());
  const bobPrekey = await rsa.generateOaepPair(BITS);
  const carolPrekey = await rsa.generateOaepPair(BITS);
  const key = await OwnSenderKey.generate();
  const { iteration, chainKey } = key.handout();
  const frames = await buildDistributions(
    { room: "lobby", sender: "alice", keyId: key.keyId, iteration, signingPublicKey: key.signingPublicKey, chainKey, sign: (d) => alice.sign(d) },
    [
      { recipient: "bob", prekeyId: 5n, prekey: bobPrekey.publicKey },
      { recipient: "carol", prekeyId: 6n, prekey: carolPrekey.publicKey },
    ],
  );
  assert.equal(frames.length, 1);
  const [forBob, forCarol] = await deliveries(frames[0]!, "alice");
  assert.ok(await deliveryVerifies(alicePeer.signingKey, forBob!));
  assert.ok(await deliveryVerifies(alicePeer.signingKey, forCarol!));
  const prekeysOfBob = (id: bigint) => (id === 5n ? bobPrekey.privateKey : null);
  const unwrapped = await unwrapDelivery(forBob!, "bob", prekeysOfBob);
  assert.ok("chainKey" in unwrapped);
  // Bob cannot take carol's copy, even moved to his place.
  assert.ok("error" in (await unwrapDelivery(forCarol!, "bob", prekeysOfBob)));
  // The key opens alice's messages.
  const sealed = await key.seal("lobby", "alice", utf8("hi"));
  const peer = new PeerSenderKey(key.keyId, frames[0]!.header!.signingPublicKey, unwrapped.chainKey, iteration);
  assert.ok(await peer.verifies("lobby", "alice", sealed.keyId, sealed.iteration, sealed.ciphertext, sealed.signature));
  const opened = await peer.open("lobby", "alice", sealed.iteration, sealed.ciphertext);
  assert.ok(opened.ok && new TextDecoder().decode(opened.plaintext) === "hi");
  // A tampered ciphertext is refused by the signature, and by the tag even if signed.
  const tampered = new Uint8Array(sealed.ciphertext);
  tampered[0]! ^= 1;
  assert.ok(!(await peer.verifies("lobby", "alice", sealed.keyId, sealed.iteration, tampered, sealed.signature)));
  const bad = await peer.open("lobby", "alice", sealed.iteration + 1, tampered);
  assert.ok(!bad.ok && bad.reason === "tag");
  // A relay cannot change a copy, its place, the count, the room, or the header.
  const changes: ((d: SenderKeyDelivery) => void)[] = [
    (d) => { d.copy!.wrapped = new Uint8Array(d.copy!.wrapped).map((x, i) => (i === 0 ? x ^ 1 : x)); },
    (d) => { d.index = 1; },
    (d) => { d.count = 3; },
    (d) => { d.room = "other"; },
    (d) => { d.sender = "mallory"; },
    (d) => { d.header = { ...d.header!, iteration: d.header!.iteration + 1 }; },
    (d) => { d.path = []; },
  ];
  for (const change of changes) {
    const copy = create(SenderKeyDeliverySchema, { ...forBob!, header: { ...forBob!.header! }, copy: { ...forBob!.copy! } });
    change(copy);
    assert.ok(!(await deliveryVerifies(alicePeer.signingKey, copy)));
  }
  // An erased prekey cannot unwrap.
  assert.ok("error" in (await unwrapDelivery(forBob!, "bob", () => null)));
});

test("identities are checked: a tampered self-signature is refused", async () => {
  const bob = await Identity.generate("bob", BITS);
  const pub = bob.publicIdentity();
  await PeerIdentity.check(pub);
  await assert.rejects(PeerIdentity.check({ ...pub, user: "bob2" }));
  await assert.rejects(PeerIdentity.check({ ...pub, encryptionPublicKey: pub.signingPublicKey }));
});

test("private rooms admit only invited keys that no removal voids", async () => {
  const owner = await Identity.generate("alice", BITS);
  const bob = await Identity.generate("bob", BITS);
  const rules = new PrivateRoomRules("club", "alice");
  rules.ownerKey = owner.signingPublicKey;
  assert.equal((await rules.admits("bob", bob.fingerprint)).ok, false);
  rules.learnInvitation(await signInvitation(owner, "club", "bob", bob.fingerprint, 1000n));
  assert.equal((await rules.admits("bob", bob.fingerprint)).ok, true);
  assert.equal((await rules.admits("bob", new Uint8Array(32))).ok, false);
  rules.learnRemoval(await signRemoval(owner, "club", "bob", 1000n));
  assert.equal((await rules.admits("bob", bob.fingerprint)).ok, false);
  rules.learnInvitation(await signInvitation(owner, "club", "bob", bob.fingerprint, 1001n));
  assert.equal((await rules.admits("bob", bob.fingerprint)).ok, true);
  // Signed by someone else: not admitted.
  const other = new PrivateRoomRules("club", "alice");
  other.ownerKey = owner.signingPublicKey;
  other.learnInvitation(await signInvitation(bob, "club", "carol", bob.fingerprint, 5n));
  assert.equal((await other.admits("carol", bob.fingerprint)).ok, false);
});
