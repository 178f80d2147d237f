/**
 * Two ChatClients in one room over a real chat-server, through gRPC-Web (HTTP/1.1) from
 * Node. The server comes from CHAT_SERVER_URL (already running), or CHAT_SERVER_BIN (a
 * chat-server binary started here on a free loopback port); without either, skipped.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { ChatClient, MemoryVault, type ChatEvent } from "../../src/chat/index.js";

const KEY_BITS = 2048;

async function startServer(): Promise<{ url: string; child: ChildProcess | null } | null> {
  if (process.env.CHAT_SERVER_URL) return { url: process.env.CHAT_SERVER_URL, child: null };
  const bin = process.env.CHAT_SERVER_BIN;
  if (!bin) return null;
  const dataDir = mkdtempSync(join(tmpdir(), "chat-web-it-"));
  const child = spawn(bin, ["--listen", "127.0.0.1:0", "--data-dir", dataDir], { stdio: ["ignore", "pipe", "pipe"] });
  const url = await new Promise<string>((resolve, reject) => {
    let seen = "";
    const onData = (chunk: Buffer) => {
      seen += chunk.toString();
      const m = /listening on (\S+)/.exec(seen.replace(/\x1b\[[0-9;]*m/g, ""));
      if (m) resolve(`http://${m[1]}`);
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.on("exit", (code) => reject(new Error(`chat-server exited (${code}): ${seen}`)));
    setTimeout(() => reject(new Error(`chat-server did not say where it listens: ${seen}`)), 20_000).unref();
  });
  return { url, child };
}

function recorder(client: ChatClient) {
  const events: ChatEvent[] = [];
  client.on((e) => events.push(e));
  const waitFor = async (pred: (e: ChatEvent) => boolean, what: string, timeoutMs = 20_000): Promise<ChatEvent> => {
    const start = Date.now();
    for (;;) {
      const found = events.find(pred);
      if (found) return found;
      if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}; events: ${JSON.stringify(events)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  return { events, waitFor };
}

let serverPromise: ReturnType<typeof startServer> | null = null;
function server() {
  serverPromise ??= startServer();
  return serverPromise;
}
after(async () => (await serverPromise)?.child?.kill());

test("two browser clients chat over a real relay", async (t) => {
  const server = await serverOr(t);
  if (!server) return;
  {
    const opts = (vault: MemoryVault) => options(server.url, vault);
    const suffix = Math.random().toString(36).slice(2, 8);
    const room = `web-${suffix}`;
    const aliceVault = new MemoryVault();
    const alice = await ChatClient.createIdentity(opts(aliceVault), `alice-${suffix}`);
    const bob = await ChatClient.createIdentity(opts(new MemoryVault()), `bob-${suffix}`);
    const a = recorder(alice);
    const b = recorder(bob);
    await alice.connect();
    await alice.join(room);
    await bob.connect();
    await bob.join(room);
    await a.waitFor((e) => e.type === "memberJoined" && e.user === bob.user, "bob's join");
    const id = await alice.send(room, "hello over gRPC-Web");
    await a.waitFor((e) => e.type === "messageState" && e.localId === id && e.state === "stored", "the ack");
    await b.waitFor((e) => e.type === "message" && e.text === "hello over gRPC-Web" && e.sender === alice.user, "alice's message");
    await bob.send(room, "and back");
    await a.waitFor((e) => e.type === "message" && e.text === "and back", "bob's answer");
    assert.equal(await alice.safetyNumber(bob.user), await bob.safetyNumber(alice.user));
    // History holds both, alice's own included.
    await alice.history(room, 10);
    await a.waitFor((e) => e.type === "message" && e.fromHistory === true && e.text === "and back", "history");
    // Alice comes back with the same vault: catches up on what bob said meanwhile.
    alice.close();
    const away = await bob.send(room, "while you were away");
    await b.waitFor((e) => e.type === "messageState" && e.localId === away && e.state === "stored", "bob's ack");
    const alice2 = await ChatClient.login(opts(aliceVault), alice.user);
    const a2 = recorder(alice2);
    await alice2.connect();
    await a2.waitFor((e) => e.type === "message" && e.text === "while you were away", "the catch-up");
    await alice2.send(room, "back again");
    await b.waitFor((e) => e.type === "message" && e.text === "back again", "alice's message after coming back");
    assert.ok(!b.events.some((e) => e.type === "refusedMessage"), JSON.stringify(b.events.filter((e) => e.type === "refusedMessage")));
    if (process.env.CHAT_DEBUG) {
      for (const [who, events] of [["alice", a.events], ["alice2", a2.events], ["bob", b.events]] as const) {
        for (const e of events) if (e.type === "warning" || e.type === "error" || e.type === "disconnected") console.log(who, JSON.stringify(e));
      }
    }
    assert.ok(![...a.events, ...a2.events, ...b.events].some((e) => e.type === "error"));
    alice2.close();
    bob.close();
  }
});

async function serverOr(t: { skip: (why: string) => void }) {
  const s = await server();
  if (!s) t.skip("set CHAT_SERVER_URL or CHAT_SERVER_BIN to run against a real chat-server");
  return s;
}

function options(url: string, vault = new MemoryVault()) {
  const transport = createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: true });
  return { serverUrl: url, vault, transport, keyBits: KEY_BITS };
}

test("a private room over a real relay: invite, kick, and a stranger refused", async (t) => {
  const s = await serverOr(t);
  if (!s) return;
  const suffix = Math.random().toString(36).slice(2, 8);
  const room = `club-${suffix}`;
  const alice = await ChatClient.createIdentity(options(s.url), `alice-${suffix}`);
  const bob = await ChatClient.createIdentity(options(s.url), `bob-${suffix}`);
  const carol = await ChatClient.createIdentity(options(s.url), `carol-${suffix}`);
  const [a, b, c] = [recorder(alice), recorder(bob), recorder(carol)];
  for (const client of [alice, bob, carol]) await client.connect();
  await alice.join(room, { createPrivate: true });
  await assert.rejects(carol.join(room), /PermissionDenied/);
  await c.waitFor((e) => e.type === "joinRefused", "carol refused");
  await alice.invite(room, bob.user);
  await bob.join(room);
  await a.waitFor((e) => e.type === "memberJoined" && e.user === bob.user, "bob joined");
  assert.deepEqual(bob.rooms().map((r) => [r.private, r.owner]), [[true, alice.user]]);
  await alice.send(room, "welcome");
  await b.waitFor((e) => e.type === "message" && e.text === "welcome", "bob reads the owner");
  await alice.kick(room, bob.user);
  await b.waitFor((e) => e.type === "memberLeft" && e.user === bob.user, "bob removed");
  await a.waitFor((e) => e.type === "memberLeft" && e.user === bob.user, "alice sees bob go");
  assert.deepEqual(bob.rooms(), []);
  assert.ok(![...a.events, ...b.events, ...c.events].some((e) => e.type === "error" || e.type === "refusedMessage"));
  for (const client of [alice, bob, carol]) client.close();
});

test("a second session of the same user ends the first, which does not reconnect", async (t) => {
  const s = await serverOr(t);
  if (!s) return;
  const suffix = Math.random().toString(36).slice(2, 8);
  const vault = new MemoryVault();
  const first = await ChatClient.createIdentity(options(s.url, vault), `dave-${suffix}`);
  const r = recorder(first);
  await first.connect();
  await first.join(`solo-${suffix}`);
  const second = await ChatClient.login(options(s.url, vault), first.user);
  await second.connect();
  const ended = await r.waitFor((e) => e.type === "disconnected", "the first session ending");
  assert.equal((ended as { willRetry: boolean }).willRetry, false);
  first.close();
  second.close();
});
