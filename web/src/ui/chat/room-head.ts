/**
 * The head of the room shown: its name, whether it is caught up, and leaving it; with
 * no room, the room's controls are hidden.
 */
import { byId, errorText, h } from "../dom.js";
import type { Screen } from "./screen.js";

export class RoomHead {
  constructor(private readonly screen: Screen) {}

  build(): HTMLElement {
    const leaveButton = h("button", { type: "button", id: "leave-room", class: "secondary" }, "Leave room");
    leaveButton.addEventListener("click", () => void this.leaveRoom());
    return h("div", { class: "room-head" },
      h("h2", { id: "room-title" }, "No room"),
      h("span", { id: "room-sync", class: "sync", role: "status" }),
      leaveButton,
    );
  }

  render(): void {
    const title = byId("room-title");
    const sync = byId("room-sync");
    const room = this.screen.active;
    const hasRoom = room !== null;
    byId<HTMLButtonElement>("leave-room").hidden = !hasRoom;
    byId<HTMLButtonElement>("load-older").hidden = !hasRoom;
    byId<HTMLFormElement>("composer-form").hidden = !hasRoom;
    if (!room) {
      title.textContent = "No room yet";
      sync.textContent = "join or create one";
      sync.dataset.state = "";
      return;
    }
    const info = this.screen.roomInfo(room);
    title.textContent = info?.private ? `🔒 ${room}` : `# ${room}`;
    const v = this.screen.timelines.view(room);
    const state = !info ? "joining…" : !info.joined ? (this.screen.connected ? "joining…" : "offline") : v.caughtUp ? "caught up" : "catching up…";
    sync.textContent = state;
    sync.dataset.state = v.caughtUp && info?.joined ? "caught-up" : "syncing";
    const composer = byId<HTMLInputElement>("composer");
    composer.setAttribute("aria-label", `Message to ${room}`);
  }

  private async leaveRoom(): Promise<void> {
    const room = this.screen.active;
    if (!room) return;
    try {
      await this.screen.client.leave(room);
      this.screen.globalNotice("info", `you left ${room}`);
      this.screen.dropView(room);
      byId("room-name").focus();
    } catch (e) {
      this.screen.notice(room, "error", `cannot leave: ${errorText(e)}`);
    }
  }
}
