/** ChatClient against the in-memory relay: messages both ways, leaving, resends, key changes, tampering, history. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { ServerFrameSchema, MessageDeliverySchema, SealedMessageSchema } from "../../src/gen/chat/v2/chat_pb.js";
import { ChatClient, MemoryVault, type ChatEvent } from "../../src/chat/index.js";
import { Identity } from "../../src/chat/crypto/identity.js";
import { FakeRelay } from "./fake-relay.js";

const KEY_BITS = 2048;

function recorder(client: ChatClient) {
  const events: ChatEvent[] = [];
  client.on((e) => events.push(e));
  const waitFor = async <T extends ChatEvent>(pred: (e: ChatEvent) => e is T, timeoutMs = 10_000): Promise<T> => {
    const start = Date.now();
    for (;;) {
      const found = events.find(pred);
      if (found) return found;
      if (Date.now() - start > timeoutMs) throw new Error(`timed out; events: ${JSON.stringify(events.map((e) => e.type))}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  return { events, waitFor };
}

const isMessage = (text: string) => (e: ChatEvent): e is Extract<ChatEvent, { type: "message" }> => e.type === "message" && e.text === text;

async function newClient(relay: FakeRelay, user: string, vault = new MemoryVault()) {
  const client = await ChatClient.createIdentity({ serverUrl: "http://fake", vault, transport: relay.transport, keyBits: KEY_BITS }, user);
  return { client, vault, ...recorder(client) };
}

/** alice and bob, connected to one relay and both in "lobby", alice having seen bob join. */
async function aliceAndBobInLobby() {
  const relay = new FakeRelay();
  const alice = await newClient(relay, "alice");
  const bob = await newClient(relay, "bob");
  await alice.client.connect();
  await bob.client.connect();
  await alice.client.join("lobby");
  await bob.client.join("lobby");
  await alice.waitFor((e): e is ChatEvent => e.type === "memberJoined");
  return { relay, alice, bob };
}

test("two clients chat in a room, both ways, and receipts are never texts", async () => {
  const relay = new FakeRelay();
  const alice = await newClient(relay, "alice");
  const bob = await newClient(relay, "bob");
  assert.deepEqual(await ChatClient.knownUsers(alice.vault), ["alice"]);
  await alice.client.connect();
  await alice.client.join("lobby");
  await bob.client.connect();
  await bob.client.join("lobby");
  await alice.waitFor((e): e is ChatEvent => e.type === "memberJoined" && e.user === "bob");
  const id = await alice.client.send("lobby", "hello bob");
  await alice.waitFor((e): e is ChatEvent => e.type === "messageState" && e.localId === id && e.state === "stored");
  const got = await bob.waitFor(isMessage("hello bob"));
  assert.equal(got.sender, "alice");
  assert.equal(got.own, false);
  await bob.client.send("lobby", "hi alice");
  await alice.waitFor(isMessage("hi alice"));
  // Bob's receipt reaches alice as a receipt event, never as a message.
  await alice.waitFor((e): e is ChatEvent => e.type === "receipt" && e.user === "bob", 5_000);
  assert.ok(!alice.events.some((e) => e.type === "message" && e.text === ""));
  const members = alice.client.members("lobby");
  assert.deepEqual(members.map((m) => [m.name, m.trust, m.you]), [["alice", "verified", true], ["bob", "new", false]]);
  assert.equal(await alice.client.safetyNumber("bob"), await bob.client.safetyNumber("alice"));
  await alice.client.verify("bob");
  assert.equal(alice.client.members("lobby")[1]!.trust, "verified");
  // History: alice reads both messages back, her own included.
  await alice.client.history("lobby", 10);
  const history = alice.events.filter((e) => e.type === "message" && e.fromHistory).map((e) => (e as { text: string }).text);
  assert.deepEqual(history, ["hello bob", "hi alice"]);
  alice.client.close();
  bob.client.close();
});

test("a member who leaves no longer reads; the rest rotate and go on", async () => {
  const { alice, bob } = await aliceAndBobInLobby();
  await bob.client.leave("lobby");
  await alice.waitFor((e): e is ChatEvent => e.type === "memberLeft" && e.user === "bob");
  assert.deepEqual(bob.client.rooms(), []);
  await alice.client.send("lobby", "after bob");
  await alice.waitFor((e): e is ChatEvent => e.type === "messageState" && e.state === "stored");
  assert.ok(!bob.events.some((e) => e.type === "message" && e.text === "after bob"));
  alice.client.close();
  bob.client.close();
});

test("a message whose answer was lost is resent after the reconnect and arrives once", async () => {
  const { relay, alice, bob } = await aliceAndBobInLobby();
  let lost = false;
  relay.loseAnswer = (user, frame) => {
    if (user !== "alice" || frame.kind.case !== "send" || lost) return false;
    lost = true;
    return true;
  };
  const id = await alice.client.send("lobby", "once only");
  await alice.waitFor((e): e is ChatEvent => e.type === "disconnected" && e.willRetry);
  await alice.waitFor((e): e is ChatEvent => e.type === "messageState" && e.localId === id && e.state === "stored", 15_000);
  await bob.waitFor(isMessage("once only"));
  await alice.client.send("lobby", "and then");
  await bob.waitFor(isMessage("and then"));
  assert.equal(bob.events.filter((e) => e.type === "message" && e.text === "once only").length, 1);
  alice.client.close();
  bob.client.close();
});

test("a client that comes back catches up on what it missed", async () => {
  const { relay, alice, bob } = await aliceAndBobInLobby();
  bob.client.close();
  await alice.client.send("lobby", "while you were away");
  await alice.waitFor((e): e is ChatEvent => e.type === "messageState" && e.state === "stored");
  // Bob opens the page again: the same vault, a new client.
  const bob2 = await ChatClient.login({ serverUrl: "http://fake", vault: bob.vault, transport: relay.transport, keyBits: KEY_BITS }, "bob");
  const rec = recorder(bob2);
  await bob2.connect();
  await rec.waitFor((e): e is ChatEvent => e.type === "caughtUp");
  await rec.waitFor(isMessage("while you were away"));
  alice.client.close();
  bob2.close();
});

test("changed keys hold sending until trusted; tampered messages are refused, never shown", async () => {
  const { relay, alice, bob } = await aliceAndBobInLobby();
  // Tampering: flip a ciphertext byte of every message to alice.
  relay.tamper = (to, frame) => {
    if (to !== "alice" || frame.kind.case !== "message") return frame;
    const d = frame.kind.value;
    const ciphertext = new Uint8Array(d.sealed!.ciphertext);
    ciphertext[0]! ^= 1;
    return create(ServerFrameSchema, {
      requestId: 0n,
      kind: { case: "message", value: create(MessageDeliverySchema, { ...d, sealed: create(SealedMessageSchema, { ...d.sealed!, ciphertext }) }) },
    });
  };
  await bob.client.send("lobby", "tampered");
  await alice.waitFor((e): e is ChatEvent => e.type === "refusedMessage" && e.sender === "bob");
  assert.ok(!alice.events.some((e) => e.type === "message" && e.text === "tampered"));
  relay.tamper = null;
  // The relay now presents other keys as bob's: alice reconnects and sees them.
  relay.presentAs.set("bob", (await Identity.generate("bob", KEY_BITS)).publicIdentity());
  relay.dropSession("alice");
  await alice.waitFor((e): e is ChatEvent => e.type === "keyChanged" && e.user === "bob", 15_000);
  await alice.waitFor((e): e is ChatEvent => e.type === "joined" && alice.events.filter((x) => x.type === "joined").length >= 2);
  assert.equal(alice.client.members("lobby").find((m) => m.name === "bob")!.trust, "changed");
  await assert.rejects(alice.client.send("lobby", "held"), /changed/);
  await alice.client.trust("bob");
  assert.equal(alice.client.members("lobby").find((m) => m.name === "bob")!.trust, "trusted");
  await alice.client.send("lobby", "now it goes");
  alice.client.close();
  bob.client.close();
});

test("private rooms: the owner invites and kicks; a member the relay adds gets no key", async () => {
  const relay = new FakeRelay();
  const alice = await newClient(relay, "alice");
  const bob = await newClient(relay, "bob");
  const carol = await newClient(relay, "carol");
  await alice.client.connect();
  await bob.client.connect();
  await carol.client.connect();
  await alice.client.join("club", { createPrivate: true });
  assert.deepEqual(alice.client.rooms().map((r) => [r.name, r.private, r.owner]), [["club", true, "alice"]]);
  await assert.rejects(carol.client.join("club"), /PermissionDenied|not invited/);
  await carol.waitFor((e): e is ChatEvent => e.type === "joinRefused");
  await alice.client.invite("club", "bob");
  await bob.client.join("club");
  await alice.waitFor((e): e is ChatEvent => e.type === "memberJoined" && e.user === "bob");
  assert.equal(bob.client.members("club").find((m) => m.name === "alice")!.owner, true);
  await alice.client.send("club", "welcome bob");
  await bob.waitFor(isMessage("welcome bob"));
  // The relay lets carol in on its own: nobody admits her, she hears nothing.
  relay.openDoors = true;
  await carol.client.join("club");
  await alice.waitFor((e): e is ChatEvent => e.type === "warning" && /not admitting carol/.test(e.message));
  await alice.client.send("club", "not for carol");
  await bob.waitFor(isMessage("not for carol"));
  assert.ok(!carol.events.some((e) => e.type === "message"));
  // Kicked: bob is out, and what alice says next is not his to read.
  await alice.client.kick("club", "bob");
  await bob.waitFor((e): e is ChatEvent => e.type === "memberLeft" && e.user === "bob");
  assert.deepEqual(bob.client.rooms(), []);
  await alice.waitFor((e): e is ChatEvent => e.type === "memberLeft" && e.user === "bob");
  await alice.client.send("club", "after the kick");
  await alice.waitFor((e): e is ChatEvent => e.type === "messageState" && e.state === "stored" && alice.events.filter((x) => x.type === "messageState" && x.state === "stored").length >= 3);
  assert.ok(!bob.events.some((e) => e.type === "message" && e.text === "after the kick"));
  for (const c of [alice, bob, carol]) c.client.close();
});
