/**
 * The chat screen: wires its parts (chat/: room list, room head, message list,
 * composer, members panel, key-change banners) to the client's events, and owns what
 * spans them: the room shown, the connection status, notices and read marks.
 * Everything from other people goes in as text nodes.
 */
import type { ChatClient, ChatEvent, RoomInfo } from "../chat/index.js";
import { Composer } from "./chat/composer.js";
import { KeyChangeBanners } from "./chat/key-change-banners.js";
import { MembersPanel } from "./chat/members-panel.js";
import { MessageList } from "./chat/message-list.js";
import { RoomHead } from "./chat/room-head.js";
import { RoomList } from "./chat/room-list.js";
import { OpenSafetyNumber } from "./chat/safety-number.js";
import type { Screen } from "./chat/screen.js";
import { Timelines, type NoticeItem } from "./chat/timeline.js";
import { byId, errorText, fill, h } from "./dom.js";

export class ChatScreen implements Screen {
  readonly timelines = new Timelines();
  active: string | null = null;
  connected = false;
  readonly refused = new Set<string>();
  readonly gone = new Set<string>();
  private globalNotices: NoticeItem[] = [];
  private off: (() => void) | null = null;
  private readonly roomList = new RoomList(this);
  private readonly roomHead = new RoomHead(this);
  private readonly messageList = new MessageList(this);
  private readonly composer = new Composer(this);
  private readonly safety: OpenSafetyNumber;
  private readonly members: MembersPanel;
  private readonly banners: KeyChangeBanners;

  constructor(
    private readonly root: HTMLElement,
    readonly client: ChatClient,
    private readonly onLogout: () => void,
  ) {
    this.safety = new OpenSafetyNumber(client);
    this.members = new MembersPanel(this, this.safety);
    this.banners = new KeyChangeBanners(this, this.safety, () => this.composer.focus());
  }

  // -- building the page ---------------------------------------------------------------

  async start(): Promise<void> {
    this.build();
    this.off = this.client.on((e) => this.onEvent(e));
    for (const r of this.client.rooms()) this.timelines.view(r.name);
    this.active = this.client.rooms()[0]?.name ?? null;
    this.renderAll();
    this.setStatus("connecting…", "connecting");
    try {
      await this.client.connect();
    } catch (e) {
      this.setStatus(`cannot connect: ${errorText(e)}`, "offline");
      byId("reconnect").hidden = false;
    }
    if (this.active) this.composer.focus();
    else byId("room-name").focus();
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

    this.root.replaceChildren(
      h("div", { class: "app" },
        h("header", { class: "topbar" },
          h("h1", {}, "e2ee chat"),
          h("span", { class: "me" }, "signed in as ", h("strong", { id: "me" }, me)),
          h("span", { id: "conn-status", class: "status", role: "status", "aria-live": "polite" }, "connecting…"),
          reconnect,
          logout,
        ),
        this.banners.build(),
        h("div", { class: "layout" },
          h("nav", { id: "rooms", class: "rooms", "aria-label": "Rooms" },
            ...this.roomList.build(),
            h("div", { id: "global-notices", class: "global-notices", role: "log", "aria-live": "polite" }),
          ),
          h("main", { id: "room", class: "room", "aria-labelledby": "room-title" },
            this.roomHead.build(),
            this.messageList.build(),
            ...this.composer.build(),
          ),
          this.members.build(),
        ),
      ),
    );
    document.addEventListener("visibilitychange", this.onVisibility);
  }

  private readonly onVisibility = (): void => this.markRead();

  // -- events --------------------------------------------------------------------------

  private onEvent(e: ChatEvent): void {
    switch (e.type) {
      case "connected":
        this.connected = true;
        this.setStatus("connected", "online");
        for (const v of this.timelines.all()) v.caughtUp = false;
        this.roomList.render();
        this.roomHead.render();
        break;
      case "disconnected":
        this.connected = false;
        for (const v of this.timelines.all()) v.caughtUp = false;
        if (e.willRetry) {
          this.setStatus(`reconnecting… (${e.reason})`, "reconnecting");
        } else {
          this.setStatus(`disconnected: ${e.reason}`, "offline");
          byId("reconnect").hidden = false;
        }
        this.roomList.render();
        this.roomHead.render();
        break;
      case "joined": {
        this.gone.delete(e.room);
        const v = this.timelines.view(e.room);
        if (!v.pendingLoaded) {
          v.pendingLoaded = true;
          for (const p of this.client.pendingMessages(e.room)) {
            if (!v.byLocal.has(p.localId)) this.timelines.addOwnPending(v, p.localId, this.client.user, p.text);
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
      case "message": {
        const unseen = e.room !== this.active || document.hidden;
        if (this.timelines.addMessage(e.room, e.seq, e.sender, e.text, e.time, e.own, unseen)) this.afterChange(e.room);
        break;
      }
      case "messageState":
        this.timelines.setState(e, this.client.user);
        this.afterChange(e.room);
        break;
      case "refusedMessage":
        this.notice(e.room, "warning", `a message from ${e.sender} could not be verified and was dropped`, shortReason(e.reason));
        break;
      case "keyChanged":
        this.banners.keyChanged(e.user);
        this.renderTrust();
        break;
      case "memberJoined":
        this.notice(e.room, "info", `${e.user} joined`);
        this.members.render();
        break;
      case "memberLeft":
        if (e.user === this.client.user) {
          this.globalNotice("warning", `you were removed from ${e.room}`);
          this.dropView(e.room);
        } else {
          this.notice(e.room, "info", `${e.user} left`);
          this.members.render();
        }
        break;
      case "caughtUp":
        this.timelines.view(e.room).caughtUp = true;
        this.roomList.render();
        this.roomHead.render();
        this.markRead();
        break;
      case "receipt":
        if (e.room === this.active) this.messageList.render();
        break;
      case "warning":
        if (e.room && this.timelines.has(e.room)) this.notice(e.room, "warning", e.message);
        else this.globalNotice("warning", e.message);
        break;
      case "error":
        this.globalNotice("error", e.message);
        break;
    }
  }

  notice(room: string, level: NoticeItem["level"], text: string, detail = ""): void {
    this.timelines.addNotice(room, level, text, detail);
    this.afterChange(room);
  }

  /** Notices about no room in particular: the latest five, under the room list. */
  globalNotice(level: NoticeItem["level"], text: string): void {
    this.globalNotices.push(this.timelines.notice(level, text));
    this.globalNotices = this.globalNotices.slice(-5);
    fill(byId("global-notices"), ...this.globalNotices.map((n) => h("p", { class: `notice ${n.level}` }, n.text)));
  }

  private afterChange(room: string): void {
    if (room === this.active) {
      this.messageList.render();
      this.markRead();
    }
    this.roomList.render();
  }

  dropView(room: string): void {
    this.timelines.drop(room);
    this.gone.add(room);
    if (this.active === room) this.active = this.roomList.listedRooms().find((r) => r !== room) ?? null;
    this.renderAll();
  }

  /** Only what the person can see counts as read: the room shown, in a visible tab. */
  private markRead(): void {
    if (!this.active || document.hidden) return;
    const v = this.timelines.find(this.active);
    if (!v) return;
    v.unread = 0;
    if (v.maxOtherSeq > 0) this.client.markRead(v.name, v.maxOtherSeq);
  }

  selectRoom(room: string): void {
    this.active = room;
    this.messageList.resetLoadOlder();
    this.roomList.fold();
    this.composer.clearError();
    this.renderAll();
    this.markRead();
    this.composer.focus();
  }

  roomInfo(room: string): RoomInfo | undefined {
    return this.client.rooms().find((r) => r.name === room);
  }

  // -- rendering -----------------------------------------------------------------------

  private setStatus(text: string, cls: string): void {
    const el = byId("conn-status");
    el.textContent = text;
    el.dataset.state = cls;
  }

  renderAll(): void {
    this.roomList.render();
    this.roomHead.render();
    this.messageList.render();
    this.members.render();
    this.banners.render();
  }

  renderTrust(): void {
    this.members.render();
    this.banners.render();
  }
}

/** The library's reason without its "dropped a message from X in ROOM:" lead (the line says that). */
function shortReason(reason: string): string {
  return reason.replace(/^dropped a message from \S+ in \S+: /, "");
}
