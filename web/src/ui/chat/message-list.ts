/**
 * The message list of the room shown: messages with their states (sending, stored and
 * seen by whom, refused) and notices, kept scrolled to the bottom when it was there,
 * and the button that asks for older messages.
 */
import type { ReceiptMarks } from "../../chat/index.js";
import { byId, errorText, fill, h, localTime } from "../dom.js";
import type { Screen } from "./screen.js";
import type { MessageItem, NoticeItem } from "./timeline.js";

const LOAD_OLDER = "Load older messages";

export class MessageList {
  constructor(private readonly screen: Screen) {}

  build(): HTMLElement {
    const historyButton = h("button", { type: "button", id: "load-older", class: "secondary" }, LOAD_OLDER);
    historyButton.addEventListener("click", () => void this.loadOlder());
    return h("div", { id: "scroller", class: "scroller", tabindex: "0", "aria-label": "Messages" },
      historyButton,
      h("ol", { id: "messages", class: "messages", role: "log", "aria-live": "polite", "aria-label": "Messages" }),
    );
  }

  /** What the button said about the last room does not hold for another. */
  resetLoadOlder(): void {
    byId("load-older").textContent = LOAD_OLDER;
  }

  render(): void {
    const list = byId("messages");
    const scroller = byId("scroller");
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    const room = this.screen.active;
    if (!room) {
      fill(list, h("li", { class: "empty" }, "Join a room, or create one, with the form in the room list."));
      return;
    }
    const v = this.screen.timelines.view(room);
    const receipts = this.screen.client.receipts(room);
    fill(list, ...v.items.map((item) => item.kind === "notice" ? renderNotice(item) : renderMessage(item, receipts)));
    if (!v.items.length) list.append(h("li", { class: "empty" }, "No messages yet."));
    if (atBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  /** Asks for 50 more than shown each time; the relay gives the latest 100 at most. */
  private async loadOlder(): Promise<void> {
    const room = this.screen.active;
    if (!room) return;
    const v = this.screen.timelines.view(room);
    const shown = v.items.filter((i) => i.kind === "message").length;
    v.historyLimit = Math.min(100, Math.max(v.historyLimit, shown) + 50);
    const button = byId<HTMLButtonElement>("load-older");
    button.disabled = true;
    let label = LOAD_OLDER;
    try {
      await this.screen.client.history(room, v.historyLimit);
      const now = v.items.filter((i) => i.kind === "message").length;
      if (now === shown) label = v.historyLimit >= 100 ? "No older messages (the relay gives the latest 100)" : "No older messages";
    } catch (e) {
      this.screen.notice(room, "error", `cannot load older messages: ${errorText(e)}`);
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }
}

function renderMessage(m: MessageItem, receipts: Map<string, ReceiptMarks>): HTMLElement {
  const li = h("li", { class: `msg${m.own ? " own" : ""}${m.state ? ` ${m.state}` : ""}` },
    h("span", { class: "meta" },
      h("span", { class: "sender" }, m.own ? `${m.sender} (you)` : m.sender),
      " ",
      h("time", { datetime: m.time.toISOString(), title: m.time.toLocaleString() }, localTime(m.time)),
    ),
    h("span", { class: "text" }, m.text),
  );
  if (m.seq !== null) li.dataset.seq = String(m.seq);
  if (m.localId) li.dataset.localId = m.localId;
  if (m.own && m.state) {
    let mark: HTMLElement;
    if (m.state === "pending") mark = h("span", { class: "state", title: "not stored by the relay yet" }, "sending…");
    else if (m.state === "stored") {
      const readers = m.seq === null ? [] : [...receipts].filter(([, r]) => r.readThrough >= m.seq!).map(([u]) => u);
      mark = h("span", { class: "state", title: "stored by the relay" }, "✓",
        h("span", { class: "visually-hidden" }, " stored"),
        readers.length ? h("span", { class: "readers" }, ` seen by ${readers.join(", ")}`) : null);
    } else mark = h("span", { class: "state", title: "the relay refused it" }, `✗ not sent: ${m.reason}`);
    li.append(mark);
  }
  return li;
}

function renderNotice(n: NoticeItem): HTMLElement {
  return h("li", { class: `notice ${n.level}`, role: n.level === "info" ? undefined : "note" },
    h("time", { datetime: n.time.toISOString() }, localTime(n.time)), " ", n.level === "warning" ? "⚠ " : "", n.text,
    n.detail ? h("span", { class: "detail" }, ` (${n.detail})`) : null);
}
