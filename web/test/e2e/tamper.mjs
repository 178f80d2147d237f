// A message tampered with on its way to a browser (one flipped ciphertext byte, by a
// proxy between that browser and the relay) is refused: the victim sees a warning line,
// never the text, and the next good messages still show. Then the same proxy takes the
// victim offline for a while: the status line says reconnecting, and the catch-up after
// it shows what was missed, once.
import { assert, log, scenario, suffix } from "./lib.mjs";

await scenario("tamper", async (t) => {
  const s = suffix();
  const room = `tamper-${s}`;
  const proxy = await t.proxy();
  const victim = await t.user("alice", { url: proxy.url });
  const bob = await t.user("bob");
  await Promise.all([victim.createIdentity(`alice-${s}`), bob.createIdentity(`bob-${s}`)]);
  await victim.join(room);
  await bob.join(room);
  await victim.waitMember(bob.name);

  await bob.send("a first, untouched message");
  await victim.waitMessage("a first, untouched message", bob.name);
  // Let the receipts of that exchange go by, so that only the next text is touched.
  await victim.page.waitForTimeout(2500);

  proxy.tamperFrom.add(bob.name);
  await bob.send("this one is tampered with");
  await bob.waitStored("this one is tampered with");
  const warning = victim.page.locator("#messages li.notice.warning", { hasText: `a message from ${bob.name} could not be verified and was dropped` });
  await warning.first().waitFor({ timeout: 20_000 });
  proxy.tamperFrom.clear();
  log(`tampered deliveries: ${proxy.tampered}`);
  assert(proxy.tampered >= 1, "the proxy tampered with a delivery");

  await bob.send("and a good one after it");
  await victim.waitMessage("and a good one after it", bob.name);
  const texts = await victim.texts();
  assert(!texts.some((x) => x.includes("tampered")), `the tampered text is not shown: ${JSON.stringify(texts)}`);
  assert(JSON.stringify(texts) === JSON.stringify(["a first, untouched message", "and a good one after it"]),
    `the victim shows ${JSON.stringify(texts)}`);
  await victim.screenshot("victim");

  // Then the victim's network goes away for a while: the status line says so, and on
  // the way back the room catches up on what it missed, once.
  proxy.offline = true;
  proxy.dropConnections();
  await victim.page.locator("#conn-status[data-state='reconnecting']").waitFor();
  await victim.page.locator("#room-sync[data-state='syncing']").waitFor();
  await bob.send("sent while alice was offline");
  await bob.waitStored("sent while alice was offline");
  // What the victim writes meanwhile waits, marked as not stored yet, and goes on the way back.
  await victim.send("written while offline");
  await victim.page.locator("#messages li.msg.own.pending", { hasText: "written while offline" }).waitFor();
  await victim.screenshot("offline");
  proxy.offline = false;
  await victim.page.locator("#conn-status[data-state='online']").waitFor({ timeout: 20_000 });
  await victim.waitCaughtUp(room);
  await victim.waitMessage("sent while alice was offline", bob.name);
  await victim.waitStored("written while offline");
  await bob.waitMessage("written while offline", victim.name);
  await victim.page.waitForTimeout(300);
  const after = await victim.texts();
  assert(JSON.stringify(after) === JSON.stringify([...texts, "sent while alice was offline", "written while offline"]),
    `after the time offline: ${JSON.stringify(after)}`);
  assert(await bob.message("written while offline").count() === 1, "bob got the message written offline once");
});
