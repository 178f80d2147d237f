/**
 * The room list: each room with its unread count and sync state, the form to join or
 * create one, and the toggle that folds the list on narrow screens.
 */
import { byId, errorText, fill, h } from "../dom.js";
import type { Screen } from "./screen.js";

export class RoomList {
  private open = false;

  constructor(private readonly screen: Screen) {}

  build(): HTMLElement[] {
    const roomsToggle = h("button", {
      type: "button", id: "rooms-toggle", class: "secondary", "aria-expanded": "false", "aria-controls": "rooms-panel",
    }, "Rooms");
    roomsToggle.addEventListener("click", () => {
      this.open = !this.open;
      this.render();
    });

    const joinForm = h("form", { id: "join-form" },
      h("label", { for: "room-name" }, "Room"),
      h("input", { id: "room-name", type: "text", required: true, maxlength: 64, spellcheck: "false", autocomplete: "off", pattern: "[A-Za-z0-9_.#\\-]{1,64}" }),
      h("label", { class: "check" },
        h("input", { id: "room-private", type: "checkbox" }),
        " private (when creating)"),
      h("button", { type: "submit" }, "Join or create"),
    );
    joinForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void this.joinRoom();
    });

    return [
      roomsToggle,
      h("div", { id: "rooms-panel", class: "rooms-panel" },
        h("ul", { id: "room-list", class: "plain room-list" }),
        joinForm,
      ),
    ];
  }

  /** Choosing a room folds the list away on narrow screens. */
  fold(): void {
    this.open = false;
  }

  /** The rooms to list: the library's, and those being joined. */
  listedRooms(): string[] {
    const names = new Set(this.screen.client.rooms().map((r) => r.name));
    for (const name of this.screen.timelines.rooms()) names.add(name);
    return [...names].filter((n) => !this.screen.gone.has(n)).sort();
  }

  render(): void {
    const { client, timelines, active } = this.screen;
    const list = byId("room-list");
    const rooms = client.rooms();
    const names = this.listedRooms();
    fill(list, ...names.map((name) => {
      const info = rooms.find((r) => r.name === name);
      const v = timelines.view(name);
      const state = !info ? "joining…" : !info.joined ? "offline" : v.caughtUp ? "caught up" : "catching up…";
      const b = h("button", {
        type: "button", class: "room-button", "data-room": name, "aria-current": name === active ? "true" : undefined,
      },
      h("span", { class: "room-name" }, info?.private ? `🔒 ${name}` : `# ${name}`),
      v.unread ? h("span", { class: "unread", "aria-label": `${v.unread} unread` }, String(v.unread)) : null,
      h("span", { class: "room-state" }, state));
      b.addEventListener("click", () => this.screen.selectRoom(name));
      return h("li", {}, b);
    }));
    const panel = byId("rooms-panel");
    panel.classList.toggle("open", this.open || active === null);
    const toggle = byId("rooms-toggle");
    toggle.setAttribute("aria-expanded", String(this.open));
    toggle.textContent = active ? `Rooms (${names.length}) · ${active}` : `Rooms (${names.length})`;
  }

  private async joinRoom(): Promise<void> {
    const screen = this.screen;
    const input = byId<HTMLInputElement>("room-name");
    const priv = byId<HTMLInputElement>("room-private");
    const room = input.value.trim();
    if (!room) return;
    input.value = "";
    const existing = screen.client.rooms().some((r) => r.name === room);
    screen.refused.delete(room);
    screen.gone.delete(room);
    screen.timelines.view(room);
    screen.active = room;
    this.open = false;
    screen.renderAll();
    try {
      await screen.client.join(room, { createPrivate: priv.checked && !existing });
      priv.checked = false;
      byId("composer").focus();
    } catch (e) {
      if (!screen.refused.has(room)) screen.globalNotice("error", errorText(e));
      input.value = room;
      if (!screen.client.rooms().some((r) => r.name === room)) screen.dropView(room);
      input.focus();
    }
  }
}
