// Two browser users and a Rust command-line user in one room: messages every way, and
// one's own message shows the relay stored it (✓).
import { assert, log, scenario, suffix } from "./lib.mjs";

await scenario("chat", async (t) => {
  const s = suffix();
  const room = `lobby-${s}`;
  const alice = await t.user("alice");
  const bob = await t.user("bob");
  await Promise.all([alice.createIdentity(`alice-${s}`), bob.createIdentity(`bob-${s}`)]);
  log("identities made");
  await alice.join(room);
  await bob.join(room);
  const carol = t.cli(`carol-${s}`, room);
  await carol.waitJoined();
  log("everyone joined");
  await alice.waitMember(bob.name);
  await alice.waitMember(carol.name);
  await bob.waitMember(carol.name);

  await alice.send("hello from alice's browser");
  await alice.waitStored("hello from alice's browser");
  await bob.waitMessage("hello from alice's browser", alice.name);
  await carol.waitLine(`[${room}] ${alice.name}: hello from alice's browser`);
  log("browser → browser and CLI");

  await bob.send("bob here, in Chromium too");
  await alice.waitMessage("bob here, in Chromium too", bob.name);
  await carol.waitLine(`[${room}] ${bob.name}: bob here, in Chromium too`);
  await bob.waitStored("bob here, in Chromium too");

  carol.say("and carol from the terminal");
  await alice.waitMessage("and carol from the terminal", carol.name);
  await bob.waitMessage("and carol from the terminal", carol.name);
  log("CLI → browsers");

  // Nothing was refused, and the texts show once each, in order.
  const texts = await bob.texts();
  assert(JSON.stringify(texts) === JSON.stringify(["hello from alice's browser", "bob here, in Chromium too", "and carol from the terminal"]),
    `bob's messages: ${JSON.stringify(texts)}`);
  assert(await alice.page.locator("#messages li.notice.warning").count() === 0, "no warnings in alice's room");
  const mark = await alice.message("hello from alice's browser").locator(".state").textContent();
  assert(mark.includes("✓"), `alice's own message is marked stored: ${mark}`);
  await alice.screenshot("alice");
  await bob.screenshot("bob");
});
