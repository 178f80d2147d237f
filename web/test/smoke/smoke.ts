/**
 * The library in a real browser, served by the relay itself: identities made and kept in
 * IndexedDB (non-extractable CryptoKeys), a "reload" that logs in from IndexedDB, two
 * clients chatting over gRPC-Web (fetch streaming), history. The result goes to
 * window.__smoke for scripts/browser-smoke.mjs.
 */
import { ChatClient, IndexedDbVault, type ChatEvent } from "../../src/chat/index.js";

declare global {
  interface Window {
    __smoke?: { ok: boolean; log: string[] };
  }
}

const log: string[] = [];
function say(line: string): void {
  log.push(line);
  document.getElementById("log")!.textContent = log.join("\n");
}

function waitFor(events: ChatEvent[], pred: (e: ChatEvent) => boolean, what: string, timeoutMs = 20_000): Promise<ChatEvent> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const tick = () => {
      const found = events.find(pred);
      if (found) return resolve(found);
      if (Date.now() - start > timeoutMs) return reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(events.map((e) => e.type))}`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

async function run(): Promise<void> {
  const serverUrl = location.origin;
  const suffix = Math.random().toString(36).slice(2, 8);
  const room = `smoke-${suffix}`;
  const vaultA = await IndexedDbVault.open(`smoke-a-${suffix}`);
  const vaultB = await IndexedDbVault.open(`smoke-b-${suffix}`);
  const alice = await ChatClient.createIdentity({ serverUrl, vault: vaultA, keyBits: 2048 }, `alice-${suffix}`, say);
  const bob = await ChatClient.createIdentity({ serverUrl, vault: vaultB, keyBits: 2048 }, `bob-${suffix}`, say);
  say(`identities made: ${(await ChatClient.knownUsers(vaultA)).join(", ")}`);
  const stored = await vaultA.get<{ signing: CryptoKeyPair }>(`identity/${alice.user}`);
  if (!stored || stored.signing.privateKey.extractable) throw new Error("the signing key is not kept non-extractable");
  const a: ChatEvent[] = [];
  const b: ChatEvent[] = [];
  alice.on((e) => a.push(e));
  bob.on((e) => b.push(e));
  await alice.connect();
  await alice.join(room);
  await bob.connect();
  await bob.join(room);
  await waitFor(a, (e) => e.type === "memberJoined", "bob's join");
  await alice.send(room, "hello from the browser");
  await waitFor(b, (e) => e.type === "message" && e.text === "hello from the browser", "alice's message");
  say("bob read alice's message");
  alice.close();
  // A reload: the identity and the room come back from IndexedDB.
  const alice2 = await ChatClient.login({ serverUrl, vault: vaultA, keyBits: 2048 }, alice.user);
  const a2: ChatEvent[] = [];
  alice2.on((e) => a2.push(e));
  await bob.send(room, "while you reloaded");
  await alice2.connect();
  await waitFor(a2, (e) => e.type === "message" && e.text === "while you reloaded", "the catch-up after the reload");
  say("alice caught up after the reload");
  await alice2.send(room, "back");
  await waitFor(b, (e) => e.type === "message" && e.text === "back", "alice's message after the reload");
  await alice2.history(room, 10);
  await waitFor(a2, (e) => e.type === "message" && e.fromHistory === true && e.text === "hello from the browser", "history");
  say("history holds alice's own first message");
  alice2.close();
  bob.close();
}

run().then(
  () => {
    say("SMOKE OK");
    window.__smoke = { ok: true, log };
  },
  (e: unknown) => {
    say(`SMOKE FAILED: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    window.__smoke = { ok: false, log };
  },
);
