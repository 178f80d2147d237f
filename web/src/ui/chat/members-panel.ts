/**
 * The members panel of the room shown: each member's trust mark, their safety number
 * and "mark verified", and for the owner of a private room, invitations and removals.
 */
import type { MemberInfo, TrustState } from "../../chat/index.js";
import { byId, errorText, fill, h } from "../dom.js";
import type { OpenSafetyNumber } from "./safety-number.js";
import type { Screen } from "./screen.js";

const TRUST_MARKS: Record<TrustState, { mark: string; text: string }> = {
  verified: { mark: "✓✓", text: "verified" },
  trusted: { mark: "✓", text: "trusted" },
  new: { mark: "•", text: "new keys, not verified" },
  changed: { mark: "⚠", text: "keys changed" },
};

export class MembersPanel {
  constructor(private readonly screen: Screen, private readonly safety: OpenSafetyNumber) {}

  build(): HTMLElement {
    const inviteForm = h("form", { id: "invite-form", hidden: true },
      h("label", { for: "invite-user" }, "Invite a user"),
      h("input", { id: "invite-user", type: "text", maxlength: 32, spellcheck: "false", autocomplete: "off" }),
      h("button", { type: "submit" }, "Invite"),
    );
    inviteForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void this.invite();
    });
    return h("aside", { id: "members", class: "members", "aria-labelledby": "members-title" },
      h("h2", { id: "members-title" }, "Members"),
      h("ul", { id: "member-list", class: "plain member-list" }),
      inviteForm,
    );
  }

  render(): void {
    const { client, active: room } = this.screen;
    const list = byId("member-list");
    const inviteForm = byId<HTMLFormElement>("invite-form");
    if (!room) {
      fill(list);
      inviteForm.hidden = true;
      return;
    }
    const info = this.screen.roomInfo(room);
    const members = client.members(room);
    const iOwn = !!info?.private && info.owner === client.user;
    inviteForm.hidden = !iOwn;
    fill(list, ...members.map((m) => this.renderMember(m, iOwn)));
  }

  private renderMember(m: MemberInfo, iOwn: boolean): HTMLElement {
    const trust = TRUST_MARKS[m.trust];
    const li = h("li", { class: `member trust-${m.trust}`, "data-user": m.name },
      h("span", { class: "member-name" }, m.name),
      m.you ? h("span", { class: "badge" }, "you") : h("span", { class: "trust", title: trust.text }, `${trust.mark} ${trust.text}`),
      m.owner ? h("span", { class: "badge owner" }, "owner") : null,
    );
    if (!m.you) {
      const actions = h("div", { class: "member-actions" });
      const safety = h("button", {
        type: "button", class: "secondary small", "aria-expanded": String(this.safety.user === m.name),
      }, `Safety number`);
      safety.setAttribute("aria-label", `Safety number with ${m.name}`);
      safety.addEventListener("click", () => void this.toggleSafety(m.name));
      actions.append(safety);
      if (iOwn) {
        const kick = h("button", { type: "button", class: "secondary small danger", "aria-label": `Remove ${m.name} from the room` }, "Remove");
        kick.addEventListener("click", () => void this.kick(m.name));
        actions.append(kick);
      }
      li.append(actions);
      if (this.safety.user === m.name) li.append(this.safetyPanel(m.name, m.trust));
    }
    return li;
  }

  private safetyPanel(user: string, trust: TrustState): HTMLElement {
    const panel = h("div", { class: "safety", role: "group", "aria-label": `Safety number with ${user}` },
      h("p", { class: "hint" }, `Compare this number with the one ${user} sees (in person or on a call):`),
      h("code", { class: "safety-number" }, this.safety.text),
    );
    if (trust === "changed") {
      panel.append(h("p", { class: "hint" }, "Their keys changed: accept them in the banner above first."));
    } else if (trust !== "verified") {
      const b = h("button", { type: "button", class: "small" }, `Mark ${user} verified`);
      b.addEventListener("click", () => void this.verify(user));
      panel.append(b);
    } else {
      panel.append(h("p", { class: "hint" }, "verified ✓✓"));
    }
    return panel;
  }

  private async toggleSafety(user: string): Promise<void> {
    if (this.safety.user === user) this.safety.close();
    else await this.safety.open(user, (e) => `no safety number: ${errorText(e)}`);
    this.screen.renderTrust();
  }

  private async verify(user: string): Promise<void> {
    try {
      await this.screen.client.verify(user);
      this.safety.close();
    } catch (e) {
      this.screen.globalNotice("error", `cannot mark ${user} verified: ${errorText(e)}`);
    }
    this.render();
  }

  private async invite(): Promise<void> {
    const input = byId<HTMLInputElement>("invite-user");
    const room = this.screen.active;
    const user = input.value.trim();
    if (!room || !user) return;
    try {
      await this.screen.client.invite(room, user);
      input.value = "";
      this.screen.notice(room, "info", `you invited ${user}`);
    } catch (e) {
      this.screen.notice(room, "error", `cannot invite ${user}: ${errorText(e)}`);
    }
  }

  private async kick(user: string): Promise<void> {
    const room = this.screen.active;
    if (!room) return;
    try {
      await this.screen.client.kick(room, user);
      this.screen.notice(room, "info", `you removed ${user}`);
      this.render();
    } catch (e) {
      this.screen.notice(room, "error", `cannot remove ${user}: ${errorText(e)}`);
    }
  }
}
