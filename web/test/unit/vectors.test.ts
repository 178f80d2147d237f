/** Every vector of docs/PROTOCOL.md, checked against the crypto layer. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { fromHex, toHex, utf8 } from "../../src/chat/crypto/bytes.js";
import * as b from "../../src/chat/crypto/binding.js";
import { fingerprint, safetyNumber } from "../../src/chat/crypto/identity.js";
import { leafHash, merkleRoot, auditPath, rootFromPath } from "../../src/chat/crypto/merkle.js";
import { messageKey, nextChainKey } from "../../src/chat/crypto/chain.js";
import { OwnSenderKey, PeerSenderKey } from "../../src/chat/crypto/senderkey.js";
import { pairFromSeed, verifyStrict } from "../../src/chat/crypto/ed25519.js";

const KEY_ID = 0x0102030405060708n;
const PREKEY_ID = 0x1112131415161718n;
const hex = (s: string) => fromHex(s);

test("tags are the documented bytes", () => {
  const expected: Record<string, string> = {
    identity: "636861742e76312f6964656e74697479",
    login: "636861742e76312f6c6f67696e",
    fingerprint: "636861742e76312f66696e6765727072696e74",
    safetyNumber: "636861742e76312f7361666574792d6e756d626572",
    prekey: "636861742e76322f7072656b6579",
    messageKey: "636861742e76322f6d6573736167652d6b6579",
    message: "636861742e76322f6d657373616765",
    messageSignature: "636861742e76322f6d6573736167652d7369676e6174757265",
    copyLabel: "636861742e76322f73656e6465722d6b6579",
    copyLeaf: "636861742e76322f73656e6465722d6b65792d636f7079",
    distribution: "636861742e76322f73656e6465722d6b65792d646973747269627574696f6e",
    invitation: "636861742e76322f696e7669746174696f6e",
    removal: "636861742e76322f72656d6f76616c",
  };
  for (const [name, h] of Object.entries(expected)) {
    assert.equal(toHex(b.TAGS[name as keyof typeof b.TAGS]), h, name);
  }
});

test("signed and bound byte strings are the documented ones", () => {
  assert.equal(toHex(b.loginBytes("bob", hex("cafe"))), "636861742e76312f6c6f67696e0003626f6200000002cafe");
  assert.equal(toHex(b.identityBytes("u", utf8("s"), utf8("e"))), "636861742e76312f6964656e7469747900017500000001730000000165");
  assert.equal(
    toHex(b.messageAd("lobby", "alice", 1, KEY_ID, 2)),
    "636861742e76322f6d65737361676500056c6f6262790005616c69636500000001010203040506070800000002",
  );
  assert.equal(
    toHex(b.messageSignedBytes("lobby", "alice", 1, KEY_ID, 2, hex("cafe"))),
    "636861742e76322f6d6573736167652d7369676e617475726500056c6f6262790005616c6963650000000101020304050607080000000200000002cafe",
  );
  assert.equal(
    toHex(b.prekeyBytes("bob", 2, PREKEY_ID, 1_700_000_000_000n, hex("3000"))),
    "636861742e76322f7072656b65790003626f620000000211121314151617180000018bcfe56800000000023000",
  );
  assert.equal(
    toHex(b.copyLabel("lobby", "alice", 1, "bob", 2, KEY_ID, PREKEY_ID)),
    "636861742e76322f73656e6465722d6b657900056c6f6262790005616c696365000000010003626f620000000201020304050607081112131415161718",
  );
  assert.equal(
    toHex(b.copyLeaf("bob", 2, PREKEY_ID, hex("aabb"))),
    "636861742e76322f73656e6465722d6b65792d636f70790003626f6200000002111213141516171800000002aabb",
  );
  const root = hex("d66ca0ae624c0b369c9e5cd0e3b2372e6abd28218fd8d905c9f22d10ca656822");
  assert.equal(
    toHex(b.distributionBytes("lobby", "alice", 1, KEY_ID, 3, new Uint8Array(32).fill(0x11), 2, root)),
    "636861742e76322f73656e6465722d6b65792d646973747269627574696f6e00056c6f6262790005616c6963650000000101020304050607080000000300000020111111111111111111111111111111111111111111111111111111111111111100000002d66ca0ae624c0b369c9e5cd0e3b2372e6abd28218fd8d905c9f22d10ca656822",
  );
  assert.equal(
    toHex(b.invitationBytes("club", "alice", "bob", new Uint8Array(32).fill(0xab), 1_700_000_000_000n)),
    "636861742e76322f696e7669746174696f6e0004636c75620005616c6963650003626f62abababababababababababababababababababababababababababababababab0000018bcfe56800",
  );
  assert.equal(
    toHex(b.removalBytes("club", "alice", "bob", 1_700_000_000_001n)),
    "636861742e76322f72656d6f76616c0004636c75620005616c6963650003626f620000018bcfe56801",
  );
});

test("length prefixes keep fields apart", () => {
  assert.notEqual(toHex(b.removalBytes("ab", "c", "d", 0n)), toHex(b.removalBytes("a", "bc", "d", 0n)));
});

test("fingerprint and safety number vectors", async () => {
  assert.equal(toHex(await fingerprint(utf8("s"), utf8("e"))), "301d4b63196a2c69e9c2ba7a405c7548c708d8f74e6b875fb9f67a5898074e02");
  const expected = "08940 22870 87407 56001 96721 49985 24506 87332 60637 75593 12840 20400";
  assert.equal(await safetyNumber("alice", new Uint8Array(32), "bob", new Uint8Array(32).fill(1)), expected);
  assert.equal(await safetyNumber("bob", new Uint8Array(32).fill(1), "alice", new Uint8Array(32)), expected);
});

test("Merkle tree of the copy leaves", async () => {
  const bob = await leafHash(b.copyLeaf("bob", 2, PREKEY_ID, hex("aabb")));
  const carol = await leafHash(b.copyLeaf("carol", 1, PREKEY_ID, hex("cc")));
  assert.equal(toHex(bob), "c3552395e3f5299d7e8c351088e303f08083a37a6ed079928cd2712dfbdec5da");
  assert.equal(toHex(carol), "abb81c6628b1786d8dec096967b5206511ae6c83173e59c34a18e20318870740");
  const root = await merkleRoot([bob, carol]);
  assert.equal(toHex(root), "d66ca0ae624c0b369c9e5cd0e3b2372e6abd28218fd8d905c9f22d10ca656822");
  assert.deepEqual((await auditPath([bob, carol], 0)).map(toHex), [toHex(carol)]);
  assert.deepEqual((await auditPath([bob, carol], 1)).map(toHex), [toHex(bob)]);
});

test("Merkle roots match Certificate Transparency's", async () => {
  const leaves = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
  const roots = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
  ];
  const hashes = await Promise.all(leaves.map((l) => leafHash(hex(l))));
  for (let n = 1; n <= 8; n++) {
    const tree = hashes.slice(0, n);
    const root = await merkleRoot(tree);
    assert.equal(toHex(root), roots[n - 1], `${n} leaves`);
    for (let m = 0; m < n; m++) {
      const path = await auditPath(tree, m);
      assert.equal(toHex((await rootFromPath(tree[m]!, m, n, path))!), roots[n - 1]);
      // The path leads nowhere else: another place, a wrong count or a cut path.
      if (n > 1) {
        const other = await rootFromPath(tree[m]!, (m + 1) % n, n, path);
        assert.ok(other === null || toHex(other) !== roots[n - 1]);
      }
      assert.equal(await rootFromPath(tree[m]!, n, n, path), null);
      if (path.length) assert.equal(await rootFromPath(tree[m]!, m, n, path.slice(1)), null);
    }
  }
});

test("chain vectors", async () => {
  let chain: Uint8Array = new Uint8Array(32).map((_, i) => i);
  const expected = [
    ["c2973ff22745e38ab7720fcb378b1c1736cd3758be28abd5fba181a627e2ae0e", "e5774de9eef1caf3374b8a60", "4304c22c84a53755ab08ead8d97a8d429be5efa480682d7ad1da27f73e1fbe1d"],
    ["279c9bdf1e30169abc0b7cd65a464ea26f630f49d64137f9db7430a5939e7b43", "a5e939b5ec66e670a978efe7", "26fc86b9b1303ea2e66f53ed0f1de753407e5428caf5e440e6b51c48d4bd4949"],
    ["623443cc2947957e53a670d62f76b11fe57bc3c04b848701d61eb26ec44d005f", "87f8eb5debf65a4c4f47292a", null],
  ];
  for (const [key, nonce, next] of expected) {
    const mk = await messageKey(chain);
    assert.equal(toHex(mk.key), key);
    assert.equal(toHex(mk.nonce), nonce);
    chain = await nextChainKey(chain);
    if (next) assert.equal(toHex(chain), next);
  }
});

test("a sealed message and its signature are the documented ones, and open", async () => {
  const chain = new Uint8Array(32).map((_, i) => i);
  const seed = new Uint8Array(32).fill(7);
  const pair = await pairFromSeed(seed);
  assert.equal(toHex(pair.publicKey), "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c");
  const own = await OwnSenderKey.fromParts(KEY_ID, chain, seed, 0);
  await own.seal("lobby", "alice", utf8("zero"));
  await own.seal("lobby", "alice", utf8("one"));
  const sealed = await own.seal("lobby", "alice", utf8("hello"));
  assert.equal(sealed.iteration, 2);
  assert.equal(toHex(sealed.ciphertext), "0ba11b2d0c3d94762147056b71b9597d603abc38b0");
  assert.equal(
    toHex(sealed.signature),
    "d5cf47286a11693ff9577fdac254ae1c3e1659edb45f5ed8a929a6a38ae11c4393956c5b1cfcd95ad6bfe202bcbfdcb7147b7d318edf6f41dd8a336a65755003",
  );
  const peer = new PeerSenderKey(KEY_ID, pair.publicKey, chain, 0);
  assert.ok(await peer.verifies("lobby", "alice", KEY_ID, 2, sealed.ciphertext, sealed.signature));
  assert.ok(!(await peer.verifies("lobby", "bob", KEY_ID, 2, sealed.ciphertext, sealed.signature)));
  const opened = await peer.open("lobby", "alice", 2, sealed.ciphertext);
  assert.ok(opened.ok);
  assert.equal(new TextDecoder().decode(opened.plaintext), "hello");
  assert.equal(peer.keptCount, 2);
  // The same message again finds no key: opened once.
  const again = await peer.open("lobby", "alice", 2, sealed.ciphertext);
  assert.ok(!again.ok && again.reason === "repeated");
});

test("strict Ed25519: S not below L, small-order keys and R are refused", async () => {
  const pair = await pairFromSeed(new Uint8Array(32).fill(7));
  const own = await OwnSenderKey.fromParts(KEY_ID, new Uint8Array(32), new Uint8Array(32).fill(7));
  const s = await own.seal("r", "a", utf8("x"));
  const data = b.messageSignedBytes("r", "a", 1, KEY_ID, 0, s.ciphertext);
  assert.ok(await verifyStrict(pair.publicKey, s.signature, data));
  // S + L: the same signature modulo L, refused.
  const L = 2n ** 252n + 27742317777372353535851937790883648493n;
  let sv = 0n;
  for (let i = 63; i >= 32; i--) sv = (sv << 8n) | BigInt(s.signature[i]!);
  sv += L;
  const bumped = new Uint8Array(s.signature);
  for (let i = 32; i < 64; i++) {
    bumped[i] = Number(sv & 0xffn);
    sv >>= 8n;
  }
  assert.ok(!(await verifyStrict(pair.publicKey, bumped, data)));
  // The identity point (y = 1) as a public key and as R.
  const identity = new Uint8Array(32);
  identity[0] = 1;
  assert.ok(!(await verifyStrict(identity, s.signature, data)));
  const smallR = new Uint8Array(s.signature);
  smallR.set(identity, 0);
  assert.ok(!(await verifyStrict(pair.publicKey, smallR, data)));
});
