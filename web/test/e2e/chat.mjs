// Two browser users and a Rust command-line user in one room: messages every way, and
// one's own message shows the relay stored it (✓).
import { assert, log, scenario, suffix } from "./lib.mjs";

await scenario("chat", async (t) => {
  const s = suffix();
  const room = `lobby-${s}`;
  const alice = await t.user("alice");
  const bob = await t.user("bob");
  // Bob uses the keyboard alone: the name box has the focus, Enter submits, and the
  // focus moves on to the room box, then to the message box.
  const keyboard = bob.page.keyboard;
  await bob.page.locator("#new-user:focus").waitFor();
  await keyboard.type(`bob-${s}`);
  await keyboard.press("Enter");
  bob.name = `bob-${s}`;
  await alice.createIdentity(`alice-${s}`);
  await bob.page.locator("#conn-status[data-state='online']").waitFor({ timeout: 60_000 });
  log("identities made");
  await alice.join(room);
  await bob.page.locator("#room-name:focus").waitFor();
  await keyboard.type(room);
  await keyboard.press("Enter");
  await bob.waitCaughtUp(room);
  await bob.page.locator("#composer:focus").waitFor();
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

  await keyboard.type("bob here, in Chromium too");
  await keyboard.press("Enter");
  await alice.waitMessage("bob here, in Chromium too", bob.name);
  await carol.waitLine(`[${room}] ${bob.name}: bob here, in Chromium too`);
  await bob.waitStored("bob here, in Chromium too");

  carol.say("and carol from the terminal");
  await alice.waitMessage("and carol from the terminal", carol.name);
  await bob.waitMessage("and carol from the terminal", carol.name);
  log("CLI → browsers");

  // Markup from others is shown as text, never made into elements.
  const markup = `<b>bold?</b> <img src="x"> & "quotes"`;
  carol.say(markup);
  await alice.waitMessage(markup, carol.name);
  assert(await alice.page.locator("#messages b, #messages img").count() === 0, "markup in a message made no elements");
  await bob.waitMessage(markup, carol.name);

  // Nothing was refused, and the texts show once each, in order.
  const texts = await bob.texts();
  assert(JSON.stringify(texts) === JSON.stringify(["hello from alice's browser", "bob here, in Chromium too", "and carol from the terminal", markup]),
    `bob's messages: ${JSON.stringify(texts)}`);
  assert(await alice.page.locator("#messages li.notice.warning").count() === 0, "no warnings in alice's room");
  const mark = await alice.message("hello from alice's browser").locator(".state").textContent();
  assert(mark.includes("✓"), `alice's own message is marked stored: ${mark}`);
  await alice.screenshot("alice");
  await bob.screenshot("bob");

  // Safety numbers: alice and bob see the same one; alice marks bob verified.
  await alice.page.getByRole("button", { name: `Safety number with ${bob.name}` }).click();
  await bob.page.getByRole("button", { name: `Safety number with ${alice.name}` }).click();
  const number = await alice.page.locator(`li.member[data-user="${bob.name}"] .safety-number`).textContent();
  const theirs = await bob.page.locator(`li.member[data-user="${alice.name}"] .safety-number`).textContent();
  assert(/^\d{5}( \d{5}){11}$/.test(number) && number === theirs, `safety numbers: ${number} / ${theirs}`);
  await alice.page.getByRole("button", { name: `Mark ${bob.name} verified` }).click();
  await alice.page.locator(`li.member.trust-verified[data-user="${bob.name}"]`).waitFor();

  // A 360-pixel-wide window: nothing wider than the window, the room list folded above the messages.
  await alice.page.setViewportSize({ width: 360, height: 740 });
  const layout = await alice.page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    roomsBottom: document.getElementById("rooms").getBoundingClientRect().bottom,
    roomTop: document.getElementById("room").getBoundingClientRect().top,
    listShown: document.getElementById("room-list").getClientRects().length > 0,
  }));
  assert(layout.scrollWidth <= 360, `the page is ${layout.scrollWidth} px wide at 360`);
  assert(layout.roomsBottom <= layout.roomTop + 1 && !layout.listShown, `narrow layout: ${JSON.stringify(layout)}`);
  await alice.page.getByRole("button", { name: /^Rooms \(1\)/ }).click();
  await alice.page.locator("#room-list").waitFor();
  await alice.screenshot("alice-360px");
  await alice.page.getByRole("button", { name: /^Rooms \(1\)/ }).click();
  await alice.page.setViewportSize({ width: 1000, height: 700 });

  // Bob leaves: alice is told, bob's list is empty.
  await bob.page.getByRole("button", { name: "Leave room" }).click();
  await alice.page.locator("#messages li.notice", { hasText: `${bob.name} left` }).waitFor();
  assert(await bob.page.locator("#room-list li").count() === 0, "bob lists no room after leaving");
  await carol.kill();
});
