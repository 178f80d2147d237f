// A page closed and opened again catches up exactly once, in order: what was sent while
// it was closed shows once each, in order, and nothing from before comes back twice —
// not even after "Load older messages" brings the history in.
import { assert, log, scenario, suffix } from "./lib.mjs";

await scenario("reload", async (t) => {
  const s = suffix();
  const room = `catchup-${s}`;
  const alice = await t.user("alice");
  const bob = await t.user("bob");
  await Promise.all([alice.createIdentity(`alice-${s}`), bob.createIdentity(`bob-${s}`)]);
  await alice.join(room);
  await bob.join(room);
  await alice.waitMember(bob.name);

  const before = ["before 1", "before 2", "before 3"];
  await alice.send(before[0]);
  await alice.waitStored(before[0]);
  await alice.send(before[1]);
  await alice.waitStored(before[1]);
  await bob.send(before[2]);
  await alice.waitMessage(before[2], bob.name);
  await bob.waitMessage(before[1], alice.name);
  log("before the reload:", await alice.texts());

  // Alice closes the page: her session ends; bob goes on talking.
  await alice.page.close();
  const away = ["while away 1", "while away 2", "while away 3", "while away 4"];
  for (const text of away) {
    await bob.send(text);
    await bob.waitStored(text);
  }
  log("bob sent while alice was away");

  // Alice opens the client again in the same browser profile: her identity is listed.
  alice.page = await alice.context.newPage();
  alice.watch(alice.page);
  await alice.page.goto("/");
  await alice.loginAs(alice.name);
  await alice.waitCaughtUp(room);
  await alice.waitMessage(away[3], bob.name);
  // Give any duplicate a moment to show up.
  await alice.page.waitForTimeout(500);
  let texts = await alice.texts();
  assert(JSON.stringify(texts) === JSON.stringify(away), `after the catch-up alice shows ${JSON.stringify(texts)}`);
  assert(await alice.page.locator("#room-sync").textContent() === "caught up", "the room says caught up");
  await alice.screenshot("after-reload");

  // The history brings back what came before, once, and merges with what is shown.
  await alice.page.getByRole("button", { name: /Load older messages/ }).click();
  await alice.waitMessage(before[0]);
  await alice.page.waitForTimeout(300);
  texts = await alice.texts();
  assert(JSON.stringify(texts) === JSON.stringify([...before, ...away]), `with the history alice shows ${JSON.stringify(texts)}`);

  // And she can talk again.
  await alice.send("back again");
  await alice.waitStored("back again");
  await bob.waitMessage("back again", alice.name);
  const bobTexts = await bob.texts();
  assert(JSON.stringify(bobTexts) === JSON.stringify([...before, ...away, "back again"]), `bob shows ${JSON.stringify(bobTexts)}`);
  await alice.screenshot("with-history");
});
