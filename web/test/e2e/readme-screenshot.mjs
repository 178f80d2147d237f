// Not a test: makes the README's picture of the web client (docs/web-client.png), a
// conversation among three browser users at 1000x700. Run by hand:
//   CHAT_SERVER_URL=http://127.0.0.1:PORT SCREENSHOT_DIR=../docs node test/e2e/readme-screenshot.mjs
import { scenario } from "./lib.mjs";

await scenario("readme-screenshot", async (t) => {
  const room = "design-review";
  const alice = await t.user("alice");
  const bob = await t.user("bob");
  const carol = await t.user("carol");
  await Promise.all([alice.createIdentity("alice"), bob.createIdentity("bob"), carol.createIdentity("carol")]);
  await alice.join(room);
  await bob.join(room);
  await carol.join(room);
  await alice.waitMember("carol");
  const lines = [
    [bob, "The relay only ever stores ciphertext, right?"],
    [alice, "Right: every message is sealed in this tab with a sender key, and signed."],
    [carol, "And the keys never leave the browser: they are non-extractable CryptoKeys in IndexedDB."],
    [bob, "Nice. Let's compare safety numbers before the review."],
    [alice, "Done for you, bob: marked verified ✓✓"],
  ];
  for (const [who, text] of lines) {
    await who.send(text);
    await who.waitStored(text);
    for (const other of [alice, bob, carol]) if (other !== who) await other.waitMessage(text);
  }
  await alice.page.getByRole("button", { name: "Safety number with bob" }).click();
  await alice.page.getByRole("button", { name: "Mark bob verified" }).click();
  await alice.page.locator("li.member.trust-verified[data-user='bob']").waitFor();
  await alice.page.locator("#composer").fill("See you at 3 pm");
  await alice.page.waitForTimeout(2500); // the read receipts come in
  await alice.screenshot("web-client");
});
