/** The composer: the message box of the room shown and the error of the last send. */
import { byId, errorText, h } from "../dom.js";
import type { Screen } from "./screen.js";

export class Composer {
  constructor(private readonly screen: Screen) {}

  build(): HTMLElement[] {
    const form = h("form", { id: "composer-form" },
      h("label", { for: "composer", class: "visually-hidden" }, "Message"),
      h("input", { id: "composer", type: "text", autocomplete: "off", placeholder: "Write a message…" }),
      h("button", { type: "submit", id: "send" }, "Send"),
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void this.send();
    });
    return [h("p", { id: "send-error", class: "error", role: "alert" }), form];
  }

  focus(): void {
    byId("composer").focus();
  }

  clearError(): void {
    byId("send-error").textContent = "";
  }

  private async send(): Promise<void> {
    const input = byId<HTMLInputElement>("composer");
    const error = byId("send-error");
    const room = this.screen.active;
    const text = input.value;
    if (!room || !text.trim()) return;
    error.textContent = "";
    try {
      await this.screen.client.send(room, text);
      if (input.value === text) input.value = "";
    } catch (e) {
      // Kept in the box, to send again once the reason is handled (e.g. keys trusted).
      error.textContent = errorText(e);
    }
  }
}
