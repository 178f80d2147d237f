/**
 * What the screen shows of each room, kept apart from the DOM: its messages (ours with
 * their states, matched by local id until the relay gives them a seq) and notices, in
 * order, with the counts the room list needs.
 */
import type { ChatEvent } from "../../chat/index.js";

export type MessageState = "pending" | "stored" | "failed";

export interface MessageItem {
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

export interface NoticeItem {
  kind: "notice";
  level: "info" | "warning" | "error";
  text: string;
  detail: string;
  time: Date;
  order: number;
  after: number;
}

export type Item = MessageItem | NoticeItem;

export interface RoomView {
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

/** Items sort by the seq they follow; those at the same place by arrival. */
function compareItems(a: Item, b: Item): number {
  return a.after - b.after || a.order - b.order;
}

export class Timelines {
  private readonly views = new Map<string, RoomView>();
  private order = 0;

  view(room: string): RoomView {
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

  /** The view if the screen has one, without making it. */
  find(room: string): RoomView | undefined {
    return this.views.get(room);
  }

  has(room: string): boolean {
    return this.views.has(room);
  }

  rooms(): IterableIterator<string> {
    return this.views.keys();
  }

  all(): IterableIterator<RoomView> {
    return this.views.values();
  }

  drop(room: string): void {
    this.views.delete(room);
  }

  private insert(v: RoomView, item: Item): void {
    v.items.push(item);
    v.items.sort(compareItems);
  }

  /** False for a seq shown already (history repeats what was live). */
  addMessage(room: string, seq: number, sender: string, text: string, time: Date, own: boolean, unseen: boolean): boolean {
    const v = this.view(room);
    if (v.bySeq.has(seq)) return false;
    const item: MessageItem = {
      kind: "message", seq, localId: null, sender, text, time, own, state: own ? "stored" : null, reason: "",
      order: ++this.order, after: seq,
    };
    v.bySeq.set(seq, item);
    v.maxSeq = Math.max(v.maxSeq, seq);
    if (!own) v.maxOtherSeq = Math.max(v.maxOtherSeq, seq);
    this.insert(v, item);
    if (!own && unseen) v.unread++;
    return true;
  }

  /** Ours, not acknowledged yet: it stays last until the relay gives it a seq. */
  addOwnPending(v: RoomView, localId: string, sender: string, text: string): MessageItem {
    const item: MessageItem = {
      kind: "message", seq: null, localId, sender, text, time: new Date(), own: true, state: "pending",
      reason: "", order: ++this.order, after: Number.MAX_SAFE_INTEGER,
    };
    v.byLocal.set(localId, item);
    this.insert(v, item);
    return item;
  }

  /** Once stored, ours takes its seq, replacing the same message if it came back meanwhile as a message event. */
  setState(e: Extract<ChatEvent, { type: "messageState" }>, sender: string): void {
    const v = this.view(e.room);
    const item = v.byLocal.get(e.localId) ?? this.addOwnPending(v, e.localId, sender, e.text ?? "");
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
  }

  /** A notice goes after the latest message seen when it happened. */
  addNotice(room: string, level: NoticeItem["level"], text: string, detail: string): void {
    const v = this.view(room);
    this.insert(v, this.notice(level, text, detail, v.maxSeq + 0.5));
  }

  notice(level: NoticeItem["level"], text: string, detail = "", after = 0): NoticeItem {
    return { kind: "notice", level, text, detail, time: new Date(), order: ++this.order, after };
  }
}
