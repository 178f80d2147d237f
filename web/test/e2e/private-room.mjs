// A private room: its owner creates it, invites another browser user, who joins and
// talks with the owner; a user nobody invited is refused; the owner removes the invitee.
import { assert, log, scenario, suffix } from "./lib.mjs";

await scenario("private-room", async (t) => {
  const s = suffix();
  const room = `secret-${s}`;
  const owner = await t.user("owner");
  const guest = await t.user("guest");
  const stranger = await t.user("stranger");
  await Promise.all([owner.createIdentity(`olga-${s}`), guest.createIdentity(`gus-${s}`), stranger.createIdentity(`sam-${s}`)]);
  log("identities made");

  await owner.join(room, { createPrivate: true });
  await owner.page.locator("#room-title", { hasText: `🔒 ${room}` }).waitFor();
  await owner.page.locator(`#member-list li.member[data-user="${owner.name}"] .badge.owner`).waitFor();

  // Not invited: the relay refuses the stranger.
  await stranger.page.getByLabel("Room", { exact: true }).fill(room);
  await stranger.page.getByRole("button", { name: "Join or create" }).click();
  await stranger.page.locator("#global-notices .notice.error", { hasText: `cannot join ${room}` }).waitFor({ timeout: 20_000 });
  log("the stranger was refused:", await stranger.page.locator("#global-notices").textContent());
  assert(await stranger.page.locator(`#room-list [data-room="${room}"]`).count() === 0, "the refused room is not listed");

  // The owner invites the guest, with the keyboard only.
  const invite = owner.page.getByLabel("Invite a user");
  await invite.fill(guest.name);
  await invite.press("Enter");
  await owner.page.locator("#messages li.notice", { hasText: `you invited ${guest.name}` }).waitFor();
  await guest.join(room);
  await guest.page.locator("#room-title", { hasText: `🔒 ${room}` }).waitFor();
  await owner.waitMember(guest.name);
  await guest.page.locator(`#member-list li.member[data-user="${owner.name}"] .badge.owner`).waitFor();

  await owner.send("welcome to the private room");
  await guest.waitMessage("welcome to the private room", owner.name);
  await guest.send("thanks for the invitation");
  await owner.waitMessage("thanks for the invitation", guest.name);
  await guest.waitStored("thanks for the invitation");
  await owner.screenshot("owner");
  await guest.screenshot("guest");

  // The owner removes the guest: the guest is told and the room goes from its list.
  await owner.page.getByRole("button", { name: `Remove ${guest.name} from the room` }).click();
  await owner.page.locator(`#member-list li.member[data-user="${guest.name}"]`).waitFor({ state: "detached", timeout: 20_000 });
  await guest.page.locator("#global-notices", { hasText: `removed from ${room}` }).waitFor({ timeout: 20_000 });
  assert(await guest.page.locator(`#room-list [data-room="${room}"]`).count() === 0, "the removed guest no longer lists the room");
  await guest.screenshot("guest-removed");
});
