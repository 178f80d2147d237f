/**
 * The key-change banners: one per person whose keys changed and who is not trusted
 * again yet, saying where sending is held, with their safety number and "accept".
 */
import { byId, errorText, fill, h } from "../dom.js";
import type { OpenSafetyNumber } from "./safety-number.js";
import type { Screen } from "./screen.js";

export class KeyChangeBanners {
  private readonly changedKeys = new Set<string>();

  constructor(
    private readonly screen: Screen,
    private readonly safety: OpenSafetyNumber,
    private readonly afterTrust: () => void,
  ) {}

  build(): HTMLElement {
    return h("div", { id: "banners", class: "banners", "aria-live": "assertive" });
  }

  keyChanged(user: string): void {
    this.changedKeys.add(user);
  }

  render(): void {
    const box = byId("banners");
    const rooms = this.screen.client.rooms();
    fill(box, ...[...this.changedKeys].sort().map((user) => {
      const where = rooms.filter((r) => r.members.some((m) => m.name === user && m.trust === "changed")).map((r) => r.name);
      const accept = h("button", { type: "button", class: "accept" }, `Accept the new keys of ${user}`);
      accept.addEventListener("click", () => void this.trust(user));
      const compare = h("button", { type: "button", class: "secondary" }, "Compare safety numbers");
      compare.addEventListener("click", () => void this.showSafety(user));
      return h("div", { class: "banner", role: "alert", "data-user": user },
        h("p", {},
          h("strong", {}, `${user}'s keys changed.`),
          ` Sending to ${where.length ? where.join(", ") : "rooms with " + user} is held until you decide. ` +
          `Compare safety numbers with ${user} first, then accept the new keys if they match.`),
        this.safety.user === user ? h("p", {}, "Safety number: ", h("code", { class: "safety-number" }, this.safety.text)) : null,
        h("div", { class: "banner-actions" }, accept, compare),
      );
    }));
  }

  private async trust(user: string): Promise<void> {
    try {
      await this.screen.client.trust(user);
      this.changedKeys.delete(user);
      this.screen.globalNotice("info", `you accepted the new keys of ${user}`);
    } catch (e) {
      this.screen.globalNotice("error", `cannot trust ${user}: ${errorText(e)}`);
    }
    this.screen.renderTrust();
    this.afterTrust();
  }

  private async showSafety(user: string): Promise<void> {
    await this.safety.open(user, errorText);
    this.screen.renderTrust();
  }
}
