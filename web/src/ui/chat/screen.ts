/**
 * What the parts of the chat screen share, implemented by ChatScreen: the client, the
 * room shown, the timelines, and the few actions that touch more than one part.
 */
import type { ChatClient, RoomInfo } from "../../chat/index.js";
import type { NoticeItem, Timelines } from "./timeline.js";

export interface Screen {
  readonly client: ChatClient;
  readonly timelines: Timelines;
  /** The room shown; null before any is joined. */
  active: string | null;
  readonly connected: boolean;
  /** Rooms the relay refused: their join() rejects too, with the same reason, shown once. */
  readonly refused: Set<string>;
  /** Rooms left, refused or removed from (the library may still list them for a moment). */
  readonly gone: Set<string>;
  roomInfo(room: string): RoomInfo | undefined;
  notice(room: string, level: NoticeItem["level"], text: string, detail?: string): void;
  globalNotice(level: NoticeItem["level"], text: string): void;
  selectRoom(room: string): void;
  dropView(room: string): void;
  renderAll(): void;
  /** Members and key-change banners show the same safety number and trust marks. */
  renderTrust(): void;
}
