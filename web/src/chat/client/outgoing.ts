/**
 * Frames out and what is owed for them: the request ids of the current session with
 * the requests the relay has not answered yet, and the durable frames (texts, key
 * handouts, receipts) kept until acknowledged, sent again as they were after a rejoin.
 */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { DistributeSenderKeySchema, SendMessageSchema, type DistributeSenderKey, type SendMessage } from "../../gen/chat/v2/chat_pb.js";
import { describeError, type Session } from "../transport.js";
import { newId, type ClientCore, type JoinedRoom } from "./core.js";
import type { PendingFrame, Persistence } from "./persistence.js";

export interface Outstanding {
  what: "join" | "leave" | "history" | "invite" | "kick" | "send" | "distribute";
  room: string;
  pid?: string;
  resolve?: (value: unknown) => void;
  reject?: (error: Error) => void;
}

export class Outgoing {
  private nextRequestId = 1n;
  private outstanding = new Map<bigint, Outstanding>();
  private pending: PendingFrame[] = [];

  constructor(private readonly core: ClientCore, private readonly persistence: Persistence) {}

  async restorePending(): Promise<void> {
    this.pending = await this.persistence.loadPending();
  }

  /** Request ids belong to one session: a new one starts afresh. */
  startSession(): void {
    this.nextRequestId = 1n;
    this.outstanding = new Map();
  }

  /** A lost session answers nothing more. */
  failOutstanding(error: Error): void {
    for (const o of this.outstanding.values()) o.reject?.(error);
    this.outstanding = new Map();
  }

  /** The request a frame answers, no longer outstanding. */
  takeOutstanding(requestId: bigint): Outstanding | undefined {
    const o = this.outstanding.get(requestId);
    if (o) this.outstanding.delete(requestId);
    return o;
  }

  sendFrame(o: Outstanding, kind: Parameters<Session["send"]>[0]["kind"]): bigint | null {
    const session = this.core.session;
    if (!session) {
      o.reject?.(new Error("not connected to the relay"));
      return null;
    }
    const requestId = this.nextRequestId++;
    this.outstanding.set(requestId, o);
    session.send({ requestId, kind }).catch((e) => {
      if (this.core.session === session) this.core.warn(describeError(e));
    });
    return requestId;
  }

  sendJoin(room: JoinedRoom): void {
    const afterSeq = room.state?.lastSeq ?? room.savedSeq ?? undefined;
    this.sendFrame(
      { what: "join", room: room.name },
      { case: "join", value: { room: room.name, createPrivate: room.createPrivate, afterSeq } },
    );
  }

  /** Sends a durable frame now if the room is joined on this session; else it waits for the rejoin. */
  private sendPending(p: PendingFrame): void {
    const room = this.core.roomMap.get(p.room);
    if (!this.core.session || !room?.joined) return;
    if (p.kind === "send") {
      this.sendFrame({ what: "send", room: p.room, pid: p.pid }, { case: "send", value: fromBinary(SendMessageSchema, p.payload) });
    } else {
      this.sendFrame(
        { what: "distribute", room: p.room, pid: p.pid },
        { case: "distributeKey", value: fromBinary(DistributeSenderKeySchema, p.payload) },
      );
    }
  }

  /** The room's unacknowledged frames, again, as they were and in order (the relay stores a repeat once). */
  resendPending(room: JoinedRoom): void {
    for (const p of this.pending.filter((x) => x.room === room.name)) this.sendPending(p);
  }

  private async queueDurable(p: PendingFrame): Promise<void> {
    this.pending.push(p);
    await this.persistence.savePending(this.pending);
    this.sendPending(p);
  }

  async sendDistributions(room: JoinedRoom, frames: DistributeSenderKey[]): Promise<void> {
    for (const frame of frames) {
      await this.queueDurable({ pid: newId(), room: room.name, kind: "distribute", payload: toBinary(DistributeSenderKeySchema, frame) });
    }
  }

  async sendSealed(room: JoinedRoom, message: SendMessage, extra: Partial<PendingFrame>): Promise<void> {
    await this.queueDurable({ pid: newId(), room: room.name, kind: "send", payload: toBinary(SendMessageSchema, message), ...extra });
  }

  /** The durable frame the relay answered, off the list (and the vault) before anyone is told. */
  async settle(pid: string | undefined): Promise<PendingFrame | undefined> {
    const p = this.pending.find((x) => x.pid === pid);
    if (!p) return undefined;
    this.pending = this.pending.filter((x) => x.pid !== pid);
    await this.persistence.savePending(this.pending);
    return p;
  }

  /** Our texts not acknowledged yet, for the UI to show as sending. */
  pendingMessages(room: string): { localId: string; text: string }[] {
    return this.pending
      .filter((p) => p.room === room && p.localId !== undefined)
      .map((p) => ({ localId: p.localId!, text: p.text ?? "" }));
  }

  /** A room left for good takes its unsent frames with it. */
  dropRoom(room: string): void {
    if (this.pending.some((p) => p.room === room)) {
      this.pending = this.pending.filter((p) => p.room !== room);
      void this.persistence.savePending(this.pending);
    }
  }
}
