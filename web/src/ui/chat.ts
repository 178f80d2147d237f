/**
 * The chat screen: rooms, messages with their states, members with trust marks, the
 * key-change banners, safety numbers, invitations and removals, history and the
 * connection status. Everything from other people goes in as text nodes.
 */
import type { ChatClient, ChatEvent, MemberInfo, RoomInfo, TrustState } from "../chat/index.js";
import { byId, errorText, fill, h, localTime } from "./dom.js";

type MessageState = "pending" | "stored" | "failed";

interface MessageItem {
  kind: "message";
  seq: number | null;
  localId: string | null;
  sender: string;
  text: string;
  time: Date;
  own: boolean;
  state: MessageState | null;
  reason: string;
  order: number;
  after: number;
}

interface NoticeItem {
  kind: "notice";
  level: "info" | "warning" | "error";
  text: string;
  detail: string;
  time: Date;
  order: number;
  after: number;
}

type Item = MessageItem | NoticeItem;

interface RoomView {
  name: string;
  items: Item[];
  bySeq: Map<number, MessageItem>;
  byLocal: Map<string, MessageItem>;
  maxSeq: number;
  /** The latest seq of someone else's message: what a read receipt is about. */
  maxOtherSeq: number;
  caughtUp: boolean;
  unread: number;
  historyLimit: number;
  pendingLoaded: boolean;
}

const TRUST_MARKS: Record<TrustState, { mark: string; text: string }> = {
  verified: { mark: "✓✓", text: "verified" },
  trusted: { mark: "✓", text: "trusted" },
  new: { mark: "•", text: "new keys, not verified" },
  changed: { mark: "⚠", text: "keys changed" },
};

export class ChatScreen {
  private readonly views = new Map<string, RoomView>();
  private active: string | null = null;
  private order = 0;
  /** Users whose keys changed and who are not trusted again yet. */
  private readonly changedKeys = new Set<string>();
  private openSafety: string | null = null;
  private safetyText = "";
  private roomsOpen = false;
  private connected = false;
  private globalNotices: NoticeItem[] = [];
  private off: (() => void) | null = null;
  /** Rooms the relay refused: their join() rejects too, with the same reason, shown once. */
  private readonly refused = new Set<string>();
  /** Rooms left, refused or removed from (the library may still list them for a moment). */
  private readonly gone = new Set<string>();

  constructor(
    private readonly root: HTMLElement,
    private readonly client: ChatClient,
    private readonly onLogout: () => void,
  ) {}

  // -- building the page ---------------------------------------------------------------

  async start(): Promise<void> {
    this.build();
    this.off = this.client.on((e) => this.onEvent(e));
    for (const r of this.client.rooms()) this.view(r.name);
    this.active = this.client.rooms()[0]?.name ?? null;
    this.renderAll();
    this.setStatus("connecting…", "connecting");
    try {
      await this.client.connect();
    } catch (e) {
      this.setStatus(`cannot connect: ${errorText(e)}`, "offline");
      byId("reconnect").hidden = false;
    }
    (this.active ? byId("composer") : byId("room-name")).focus();
  }

  private build(): void {
    const me = this.client.user;
    const logout = h("button", { type: "button", id: "logout", class: "secondary" }, "Switch identity");
    logout.addEventListener("click", () => {
      document.removeEventListener("visibilitychange", this.onVisibility);
      this.off?.();
      this.client.close();
      this.onLogout();
    });
    const reconnect = h("button", { type: "button", id: "reconnect", class: "secondary", hidden: true }, "Reconnect");
    reconnect.addEventListener("click", () => {
      reconnect.hidden = true;
      this.setStatus("connecting…", "connecting");
      this.client.connect().catch((e) => {
        this.setStatus(`cannot connect: ${errorText(e)}`, "offline");
        reconnect.hidden = false;
      });
    });

    const roomsToggle = h("button", {
      type: "button", id: "rooms-toggle", class: "secondary", "aria-expanded": "false", "aria-controls": "rooms-panel",
    }, "Rooms");
    roomsToggle.addEventListener("click", () => {
      this.roomsOpen = !this.roomsOpen;
      this.renderRooms();
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

    const historyButton = h("button", { type: "button", id: "load-older", class: "secondary" }, "Load older messages");
    historyButton.addEventListener("click", () => void this.loadOlder());
    const leaveButton = h("button", { type: "button", id: "leave-room", class: "secondary" }, "Leave room");
    leaveButton.addEventListener("click", () => void this.leaveRoom());

    const composer = h("form", { id: "composer-form" },
      h("label", { for: "composer", class: "visually-hidden" }, "Message"),
      h("input", { id: "composer", type: "text", autocomplete: "off", placeholder: "Write a message…" }),
      h("button", { type: "submit", id: "send" }, "Send"),
    );
    composer.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void this.sendMessage();
    });

    const inviteForm = h("form", { id: "invite-form", hidden: true },
      h("label", { for: "invite-user" }, "Invite a user"),
      h("input", { id: "invite-user", type: "text", maxlength: 32, spellcheck: "false", autocomplete: "off" }),
      h("button", { type: "submit" }, "Invite"),
    );
    inviteForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void this.invite();
    });

    this.root.replaceChildren(
      h("div", { class: "app" },
        h("header", { class: "topbar" },
          h("h1", {}, "e2ee chat"),
          h("span", { class: "me" }, "signed in as ", h("strong", { id: "me" }, me)),
          h("span", { id: "conn-status", class: "status", role: "status", "aria-live": "polite" }, "connecting…"),
          reconnect,
          logout,
        ),
        h("div", { id: "banners", class: "banners", "aria-live": "assertive" }),
        h("div", { class: "layout" },
          h("nav", { id: "rooms", class: "rooms", "aria-label": "Rooms" },
            roomsToggle,
            h("div", { id: "rooms-panel", class: "rooms-panel" },
              h("ul", { id: "room-list", class: "plain room-list" }),
              joinForm,
            ),
            h("div", { id: "global-notices", class: "global-notices", role: "log", "aria-live": "polite" }),
          ),
          h("main", { id: "room", class: "room", "aria-labelledby": "room-title" },
            h("div", { class: "room-head" },
              h("h2", { id: "room-title" }, "No room"),
              h("span", { id: "room-sync", class: "sync", role: "status" }),
              leaveButton,
            ),
            h("div", { id: "scroller", class: "scroller", tabindex: "0", "aria-label": "Messages" },
              historyButton,
              h("ol", { id: "messages", class: "messages", role: "log", "aria-live": "polite", "aria-label": "Messages" }),
            ),
            h("p", { id: "send-error", class: "error", role: "alert" }),
            composer,
          ),
          h("aside", { id: "members", class: "members", "aria-labelledby": "members-title" },
            h("h2", { id: "members-title" }, "Members"),
            h("ul", { id: "member-list", class: "plain member-list" }),
            inviteForm,
          ),
        ),
      ),
    );
    document.addEventListener("visibilitychange", this.onVisibility);
  }

  private readonly onVisibility = (): void => this.markRead();

  // -- events --------------------------------------------------------------------------

  private view(room: string): RoomView {
    let v = this.views.get(room);
    if (!v) {
      v = {
        name: room, items: [], bySeq: new Map(), byLocal: new Map(), maxSeq: 0, maxOtherSeq: 0, caughtUp: false, unread: 0,
        historyLimit: 0, pendingLoaded: false,
      };
      this.views.set(room, v);
    }
    return v;
  }

  private onEvent(e: ChatEvent): void {
    switch (e.type) {
      case "connected":
        this.connected = true;
        this.setStatus("connected", "online");
        for (const v of this.views.values()) v.caughtUp = false;
        this.renderRooms();
        this.renderHead();
        break;
      case "disconnected":
        this.connected = false;
        for (const v of this.views.values()) v.caughtUp = false;
        if (e.willRetry) {
          this.setStatus(`reconnecting… (${e.reason})`, "reconnecting");
        } else {
          this.setStatus(`disconnected: ${e.reason}`, "offline");
          byId("reconnect").hidden = false;
        }
        this.renderRooms();
        this.renderHead();
        break;
      case "joined": {
        this.gone.delete(e.room);
        const v = this.view(e.room);
        if (!v.pendingLoaded) {
          v.pendingLoaded = true;
          for (const p of this.client.pendingMessages(e.room)) {
            if (!v.byLocal.has(p.localId)) this.addOwnPending(v, p.localId, p.text);
          }
        }
        if (!this.active) this.active = e.room;
        this.renderAll();
        break;
      }
      case "joinRefused":
        this.refused.add(e.room);
        this.globalNotice("error", `cannot join ${e.room}: ${e.reason}`);
        this.dropView(e.room);
        break;
      case "message":
        this.addMessage(e.room, e.seq, e.sender, e.text, e.time, e.own);
        break;
      case "messageState":
        this.onMessageState(e);
        break;
      case "refusedMessage":
        this.notice(e.room, "warning", `a message from ${e.sender} could not be verified and was dropped`, shortReason(e.reason));
        break;
      case "keyChanged":
        this.changedKeys.add(e.user);
        this.renderBanners();
        this.renderMembers();
        break;
      case "memberJoined":
        this.notice(e.room, "info", `${e.user} joined`);
        this.renderMembers();
        break;
      case "memberLeft":
        if (e.user === this.client.user) {
          this.globalNotice("warning", `you were removed from ${e.room}`);
          this.dropView(e.room);
        } else {
          this.notice(e.room, "info", `${e.user} left`);
          this.renderMembers();
        }
        break;
      case "caughtUp":
        this.view(e.room).caughtUp = true;
        this.renderRooms();
        this.renderHead();
        this.markRead();
        break;
      case "receipt":
        if (e.room === this.active) this.renderMessages();
        break;
      case "warning":
        if (e.room && this.views.has(e.room)) this.notice(e.room, "warning", e.message);
        else this.globalNotice("warning", e.message);
        break;
      case "error":
        this.globalNotice("error", e.message);
        break;
    }
  }

  private nextOrder(): number {
    return ++this.order;
  }

  private insert(v: RoomView, item: Item): void {
    v.items.push(item);
    v.items.sort(compareItems);
  }

  private addMessage(room: string, seq: number, sender: string, text: string, time: Date, own: boolean): void {
    const v = this.view(room);
    if (v.bySeq.has(seq)) return;
    const item: MessageItem = {
      kind: "message", seq, localId: null, sender, text, time, own, state: own ? "stored" : null, reason: "",
      order: this.nextOrder(), after: seq,
    };
    v.bySeq.set(seq, item);
    v.maxSeq = Math.max(v.maxSeq, seq);
    if (!own) v.maxOtherSeq = Math.max(v.maxOtherSeq, seq);
    this.insert(v, item);
    if (!own && (room !== this.active || document.hidden)) v.unread++;
    this.afterChange(room);
  }

  private addOwnPending(v: RoomView, localId: string, text: string): MessageItem {
    const item: MessageItem = {
      kind: "message", seq: null, localId, sender: this.client.user, text, time: new Date(), own: true, state: "pending",
      reason: "", order: this.nextOrder(), after: Number.MAX_SAFE_INTEGER,
    };
    v.byLocal.set(localId, item);
    this.insert(v, item);
    return item;
  }

  private onMessageState(e: Extract<ChatEvent, { type: "messageState" }>): void {
    const v = this.view(e.room);
    const item = v.byLocal.get(e.localId) ?? this.addOwnPending(v, e.localId, e.text ?? "");
    item.state = e.state;
    if (e.state === "stored" && e.seq !== undefined) {
      const dup = v.bySeq.get(e.seq);
      if (dup && dup !== item) {
        v.items = v.items.filter((i) => i !== dup);
      }
      item.seq = e.seq;
      item.after = e.seq;
      v.bySeq.set(e.seq, item);
      v.maxSeq = Math.max(v.maxSeq, e.seq);
    }
    if (e.state === "failed") item.reason = e.reason ?? "refused";
    v.items.sort(compareItems);
    this.afterChange(e.room);
  }

  private notice(room: string, level: NoticeItem["level"], text: string, detail = ""): void {
    const v = this.view(room);
    this.insert(v, { kind: "notice", level, text, detail, time: new Date(), order: this.nextOrder(), after: v.maxSeq + 0.5 });
    this.afterChange(room);
  }

  private globalNotice(level: NoticeItem["level"], text: string): void {
    this.globalNotices.push({ kind: "notice", level, text, detail: "", time: new Date(), order: this.nextOrder(), after: 0 });
    this.globalNotices = this.globalNotices.slice(-5);
    this.renderGlobalNotices();
  }

  private afterChange(room: string): void {
    if (room === this.active) {
      this.renderMessages();
      this.markRead();
    }
    this.renderRooms();
  }

  private dropView(room: string): void {
    this.views.delete(room);
    this.gone.add(room);
    if (this.active === room) this.active = this.listedRooms().find((r) => r !== room) ?? null;
    this.renderAll();
  }

  private markRead(): void {
    if (!this.active || document.hidden) return;
    const v = this.views.get(this.active);
    if (!v) return;
    v.unread = 0;
    if (v.maxOtherSeq > 0) this.client.markRead(v.name, v.maxOtherSeq);
  }

  // -- actions -------------------------------------------------------------------------

  private async joinRoom(): Promise<void> {
    const input = byId<HTMLInputElement>("room-name");
    const priv = byId<HTMLInputElement>("room-private");
    const room = input.value.trim();
    if (!room) return;
    input.value = "";
    const existing = this.client.rooms().some((r) => r.name === room);
    this.refused.delete(room);
    this.gone.delete(room);
    this.view(room);
    this.active = room;
    this.roomsOpen = false;
    this.renderAll();
    try {
      await this.client.join(room, { createPrivate: priv.checked && !existing });
      priv.checked = false;
      byId("composer").focus();
    } catch (e) {
      if (!this.refused.has(room)) this.globalNotice("error", errorText(e));
      input.value = room;
      if (!this.client.rooms().some((r) => r.name === room)) this.dropView(room);
      input.focus();
    }
  }

  private async leaveRoom(): Promise<void> {
    const room = this.active;
    if (!room) return;
    try {
      await this.client.leave(room);
      this.globalNotice("info", `you left ${room}`);
      this.dropView(room);
      byId("room-name").focus();
    } catch (e) {
      this.notice(room, "error", `cannot leave: ${errorText(e)}`);
    }
  }

  private async sendMessage(): Promise<void> {
    const input = byId<HTMLInputElement>("composer");
    const error = byId("send-error");
    const room = this.active;
    const text = input.value;
    if (!room || !text.trim()) return;
    error.textContent = "";
    try {
      await this.client.send(room, text);
      if (input.value === text) input.value = "";
    } catch (e) {
      // Kept in the box, to send again once the reason is handled (e.g. keys trusted).
      error.textContent = errorText(e);
    }
  }

  private async loadOlder(): Promise<void> {
    const room = this.active;
    if (!room) return;
    const v = this.view(room);
    const shown = v.items.filter((i) => i.kind === "message").length;
    v.historyLimit = Math.min(100, Math.max(v.historyLimit, shown) + 50);
    const button = byId<HTMLButtonElement>("load-older");
    button.disabled = true;
    let label = "Load older messages";
    try {
      await this.client.history(room, v.historyLimit);
      const now = v.items.filter((i) => i.kind === "message").length;
      if (now === shown) label = v.historyLimit >= 100 ? "No older messages (the relay gives the latest 100)" : "No older messages";
    } catch (e) {
      this.notice(room, "error", `cannot load older messages: ${errorText(e)}`);
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }

  private async invite(): Promise<void> {
    const input = byId<HTMLInputElement>("invite-user");
    const room = this.active;
    const user = input.value.trim();
    if (!room || !user) return;
    try {
      await this.client.invite(room, user);
      input.value = "";
      this.notice(room, "info", `you invited ${user}`);
    } catch (e) {
      this.notice(room, "error", `cannot invite ${user}: ${errorText(e)}`);
    }
  }

  private async kick(user: string): Promise<void> {
    const room = this.active;
    if (!room) return;
    try {
      await this.client.kick(room, user);
      this.notice(room, "info", `you removed ${user}`);
      this.renderMembers();
    } catch (e) {
      this.notice(room, "error", `cannot remove ${user}: ${errorText(e)}`);
    }
  }

  private async trust(user: string): Promise<void> {
    try {
      await this.client.trust(user);
      this.changedKeys.delete(user);
      this.globalNotice("info", `you accepted the new keys of ${user}`);
    } catch (e) {
      this.globalNotice("error", `cannot trust ${user}: ${errorText(e)}`);
    }
    this.renderBanners();
    this.renderMembers();
    byId("composer").focus();
  }

  private async toggleSafety(user: string): Promise<void> {
    if (this.openSafety === user) {
      this.openSafety = null;
      this.renderMembers();
      this.renderBanners();
      return;
    }
    try {
      this.safetyText = await this.client.safetyNumber(user);
    } catch (e) {
      this.safetyText = `no safety number: ${errorText(e)}`;
    }
    this.openSafety = user;
    this.renderMembers();
    this.renderBanners();
  }

  private async verify(user: string): Promise<void> {
    try {
      await this.client.verify(user);
      this.openSafety = null;
    } catch (e) {
      this.globalNotice("error", `cannot mark ${user} verified: ${errorText(e)}`);
    }
    this.renderMembers();
  }

  private selectRoom(room: string): void {
    this.active = room;
    byId("load-older").textContent = "Load older messages";
    this.roomsOpen = false;
    byId("send-error").textContent = "";
    this.renderAll();
    this.markRead();
    byId("composer").focus();
  }

  // -- rendering -----------------------------------------------------------------------

  private setStatus(text: string, cls: string): void {
    const el = byId("conn-status");
    el.textContent = text;
    el.dataset.state = cls;
  }

  private renderAll(): void {
    this.renderRooms();
    this.renderHead();
    this.renderMessages();
    this.renderMembers();
    this.renderBanners();
  }

  private roomInfo(room: string): RoomInfo | undefined {
    return this.client.rooms().find((r) => r.name === room);
  }

  /** The rooms to list: the library's, and those being joined. */
  private listedRooms(): string[] {
    const names = new Set(this.client.rooms().map((r) => r.name));
    for (const name of this.views.keys()) names.add(name);
    return [...names].filter((n) => !this.gone.has(n)).sort();
  }

  private renderRooms(): void {
    const list = byId("room-list");
    const rooms = this.client.rooms();
    const names = this.listedRooms();
    fill(list, ...names.map((name) => {
      const info = rooms.find((r) => r.name === name);
      const v = this.view(name);
      const state = !info ? "joining…" : !info.joined ? "offline" : v.caughtUp ? "caught up" : "catching up…";
      const b = h("button", {
        type: "button", class: "room-button", "data-room": name, "aria-current": name === this.active ? "true" : undefined,
      },
      h("span", { class: "room-name" }, info?.private ? `🔒 ${name}` : `# ${name}`),
      v.unread ? h("span", { class: "unread", "aria-label": `${v.unread} unread` }, String(v.unread)) : null,
      h("span", { class: "room-state" }, state));
      b.addEventListener("click", () => this.selectRoom(name));
      return h("li", {}, b);
    }));
    const panel = byId("rooms-panel");
    panel.classList.toggle("open", this.roomsOpen || this.active === null);
    const toggle = byId("rooms-toggle");
    toggle.setAttribute("aria-expanded", String(this.roomsOpen));
    toggle.textContent = this.active ? `Rooms (${names.length}) · ${this.active}` : `Rooms (${names.length})`;
  }

  private renderHead(): void {
    const title = byId("room-title");
    const sync = byId("room-sync");
    const room = this.active;
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
    const info = this.roomInfo(room);
    title.textContent = info?.private ? `🔒 ${room}` : `# ${room}`;
    const v = this.view(room);
    const state = !info ? "joining…" : !info.joined ? (this.connected ? "joining…" : "offline") : v.caughtUp ? "caught up" : "catching up…";
    sync.textContent = state;
    sync.dataset.state = v.caughtUp && info?.joined ? "caught-up" : "syncing";
    const composer = byId<HTMLInputElement>("composer");
    composer.setAttribute("aria-label", `Message to ${room}`);
  }

  private renderMessages(): void {
    const list = byId("messages");
    const scroller = byId("scroller");
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    const room = this.active;
    if (!room) {
      fill(list, h("li", { class: "empty" }, "Join a room, or create one, with the form in the room list."));
      return;
    }
    const v = this.view(room);
    const receipts = this.client.receipts(room);
    fill(list, ...v.items.map((item) => item.kind === "notice" ? renderNotice(item) : this.renderMessage(item, receipts)));
    if (!v.items.length) list.append(h("li", { class: "empty" }, "No messages yet."));
    if (atBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  private renderMessage(m: MessageItem, receipts: Map<string, { deliveredThrough: number; readThrough: number }>): HTMLElement {
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

  private renderGlobalNotices(): void {
    fill(byId("global-notices"), ...this.globalNotices.map((n) => h("p", { class: `notice ${n.level}` }, n.text)));
  }

  private renderMembers(): void {
    const list = byId("member-list");
    const room = this.active;
    const inviteForm = byId<HTMLFormElement>("invite-form");
    if (!room) {
      fill(list);
      inviteForm.hidden = true;
      return;
    }
    const info = this.roomInfo(room);
    const members = this.client.members(room);
    const iOwn = !!info?.private && info.owner === this.client.user;
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
        type: "button", class: "secondary small", "aria-expanded": String(this.openSafety === m.name),
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
      if (this.openSafety === m.name) li.append(this.safetyPanel(m.name, m.trust));
    }
    return li;
  }

  private safetyPanel(user: string, trust: TrustState): HTMLElement {
    const panel = h("div", { class: "safety", role: "group", "aria-label": `Safety number with ${user}` },
      h("p", { class: "hint" }, `Compare this number with the one ${user} sees (in person or on a call):`),
      h("code", { class: "safety-number" }, this.safetyText),
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

  private renderBanners(): void {
    const box = byId("banners");
    const rooms = this.client.rooms();
    fill(box, ...[...this.changedKeys].sort().map((user) => {
      const where = rooms.filter((r) => r.members.some((m) => m.name === user && m.trust === "changed")).map((r) => r.name);
      const accept = h("button", { type: "button", class: "accept" }, `Accept the new keys of ${user}`);
      accept.addEventListener("click", () => void this.trust(user));
      const compare = h("button", { type: "button", class: "secondary" }, "Compare safety numbers");
      compare.addEventListener("click", () => void this.showBannerSafety(user));
      return h("div", { class: "banner", role: "alert", "data-user": user },
        h("p", {},
          h("strong", {}, `${user}'s keys changed.`),
          ` Sending to ${where.length ? where.join(", ") : "rooms with " + user} is held until you decide. ` +
          `Compare safety numbers with ${user} first, then accept the new keys if they match.`),
        this.openSafety === user ? h("p", {}, "Safety number: ", h("code", { class: "safety-number" }, this.safetyText)) : null,
        h("div", { class: "banner-actions" }, accept, compare),
      );
    }));
  }

  private async showBannerSafety(user: string): Promise<void> {
    try {
      this.safetyText = await this.client.safetyNumber(user);
    } catch (e) {
      this.safetyText = errorText(e);
    }
    this.openSafety = user;
    this.renderBanners();
    this.renderMembers();
  }
}

function compareItems(a: Item, b: Item): number {
  return a.after - b.after || a.order - b.order;
}

function renderNotice(n: NoticeItem): HTMLElement {
  return h("li", { class: `notice ${n.level}`, role: n.level === "info" ? undefined : "note" },
    h("time", { datetime: n.time.toISOString() }, localTime(n.time)), " ", n.level === "warning" ? "⚠ " : "", n.text,
    n.detail ? h("span", { class: "detail" }, ` (${n.detail})`) : null);
}

/** The library's reason without its "dropped a message from X in ROOM:" lead (the line says that). */
function shortReason(reason: string): string {
  return reason.replace(/^dropped a message from \S+ in \S+: /, "");
}
