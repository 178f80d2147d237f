// The relay (here: a proxy in front of it, for one browser) presents other keys for a
// contact: the browser raises a banner that stays, holds sending to the room with that
// person, shows the safety number, and accepting the new keys releases sending.
import { assert, log, scenario, suffix } from "./lib.mjs";

await scenario("key-change", async (t) => {
  const s = suffix();
  const room = `keys-${s}`;
  const proxy = await t.proxy();
  const alice = await t.user("alice", { url: proxy.url });
  const bob = await t.user("bob");
  await Promise.all([alice.createIdentity(`alice-${s}`), bob.createIdentity(`bob-${s}`)]);
  await alice.join(room);
  await bob.join(room);
  await alice.waitMember(bob.name);
  await bob.send("hi alice, these are my real keys");
  await alice.waitMessage("hi alice, these are my real keys", bob.name);
  const banner = alice.page.locator("#banners .banner");
  assert(await banner.count() === 0, "no banner while the keys are the pinned ones");

  // From now on the proxy presents a new identity for bob; alice's page loads again.
  await proxy.swapIdentityOf(bob.name);
  await alice.page.reload();
  await alice.loginAs(alice.name);
  await banner.first().waitFor({ timeout: 20_000 });
  log(`swapped identities presented: ${proxy.swapped}`);
  const bannerText = await banner.first().textContent();
  assert(bannerText.includes(`${bob.name}'s keys changed`) && bannerText.includes("held"), `banner: ${bannerText}`);
  await alice.page.locator(`#member-list li.member.trust-changed[data-user="${bob.name}"]`).waitFor();

  // Sending is held: the text stays in the box, nothing is shown or sent.
  await alice.send("are you still you?");
  const error = alice.page.locator("#send-error");
  await error.filter({ hasText: "changed" }).waitFor();
  assert(await alice.message("are you still you?").count() === 0, "the held message is not shown as sent");
  assert(await alice.page.locator("#composer").inputValue() === "are you still you?", "the text stays in the box");

  // The banner stays (here, across a moment and the safety number) until handled.
  await banner.getByRole("button", { name: "Compare safety numbers" }).click();
  await banner.locator(".safety-number").filter({ hasText: /^\d{5}( \d{5}){11}$/ }).waitFor();
  await alice.page.waitForTimeout(500);
  assert(await banner.count() === 1, "the banner stays until the user decides");
  await alice.screenshot("banner");

  await banner.getByRole("button", { name: `Accept the new keys of ${bob.name}` }).click();
  await banner.first().waitFor({ state: "detached" });
  await alice.page.locator(`#member-list li.member.trust-trusted[data-user="${bob.name}"]`).waitFor();
  await alice.page.locator("#composer").press("Enter");
  await alice.waitStored("are you still you?");
  assert(await error.textContent() === "", "no error once the keys are accepted");
  await alice.screenshot("accepted");
});
