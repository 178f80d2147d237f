/**
 * Frames in: each frame the relay sends, routed to its room or to the request it
 * answers, and what it changes there: a join completed (and what was owed sent again),
 * members come and gone, messages and keys opened, durable frames acknowledged or refused.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { LeaveReason, SendMessageSchema, type Joined, type MemberJoined, type MemberLeft, type ServerFrame } from "../../gen/chat/v2/chat_pb.js";
import { isValidUserName } from "../protocol.js";
import { RoomState } from "../room.js";
import type { ClientCore, JoinedRoom } from "./core.js";
import type { KeyHandouts } from "./keys.js";
import type { Messages } from "./messages.js";
import type { Outgoing, Outstanding } from "./outgoing.js";
import type { Persistence } from "./persistence.js";
import type { Receipts } from "./receipts.js";
import type { Rooms } from "./rooms.js";
import type { Trust } from "./trust.js";

export class Incoming {
  constructor(
    private readonly core: ClientCore,
    private readonly persistence: Persistence,
    private readonly outgoing: Outgoing,
    private readonly keys: KeyHandouts,
    private readonly messages: Messages,
    private readonly receipts: Receipts,
    private readonly rooms: Rooms,
    private readonly trust: Trust,
  ) {}

  async onFrame(frame: ServerFrame): Promise<void> {
    if (frame.requestId !== 0n) {
      await this.onAnswer(frame);
    } else {
      const kind = frame.kind;
      if (kind.case === undefined || kind.case === "ack" || kind.case === "rejection" || kind.case === "joined" ||
        kind.case === "history" || kind.case === "sessionOpened") {
        return;
      }
      const room = this.core.roomMap.get(kind.value.room);
      if (!room?.joined || !room.state) return;
      switch (kind.case) {
        case "memberJoined": await this.onMemberJoined(room, kind.value); break;
        case "memberLeft": await this.onMemberLeft(room, kind.value); break;
        case "message": {
          const m = await room.state.open(kind.value);
          if (m) this.messages.received(room, m);
          break;
        }
        case "senderKey":
          for (const m of await room.state.acceptSenderKey(kind.value)) this.messages.received(room, m);
          break;
        case "caughtUp":
          room.state.caughtUp();
          room.caughtUp = true;
          this.core.emit({ type: "caughtUp", room: room.name });
          this.receipts.schedule(room);
          break;
      }
    }
    for (const room of this.core.roomMap.values()) if (room.joined) this.persistence.saveProgress(room);
  }

  private async onAnswer(frame: ServerFrame): Promise<void> {
    const o = this.outgoing.takeOutstanding(frame.requestId);
    if (!o) return;
    const room = this.core.roomMap.get(o.room);
    const kind = frame.kind;
    if (kind.case === "rejection") {
      const reason = `${Code[kind.value.code] ?? kind.value.code}: ${kind.value.message}`;
      await this.onRejection(o, room, reason);
      return;
    }
    switch (o.what) {
      case "join":
        if (kind.case === "joined" && room) await this.onJoined(room, kind.value);
        return;
      case "history":
        if (kind.case === "history" && room?.state) await this.messages.onHistory(room, kind.value);
        o.resolve?.(undefined);
        return;
      case "send":
      case "distribute":
        await this.onDurableAck(o, kind.case === "ack" ? kind.value.seq : 0n);
        return;
      case "leave":
        if (room) this.rooms.drop(room);
        o.resolve?.(undefined);
        return;
      default:
        o.resolve?.(undefined);
    }
  }

  private async onRejection(o: Outstanding, room: JoinedRoom | undefined, reason: string): Promise<void> {
    if (o.what === "join") {
      this.core.emit({ type: "joinRefused", room: o.room, reason });
      if (room) {
        for (const w of room.waiters) w.reject(new Error(`cannot join ${o.room}: ${reason}`));
        room.waiters = [];
        this.rooms.drop(room);
      }
      return;
    }
    if (o.what === "send" || o.what === "distribute") {
      const p = await this.outgoing.settle(o.pid);
      if (p?.localId) this.core.emit({ type: "messageState", room: o.room, localId: p.localId, state: "failed", reason, text: p.text });
      else this.core.warn(`the relay refused a ${p?.receipt ? "receipt" : "key distribution"} in ${o.room}: ${reason}`, o.room);
      return;
    }
    if (o.what === "history") this.core.warn(`the relay refused the history of ${o.room}: ${reason}`, o.room);
    o.reject?.(new Error(reason));
  }

  private async onDurableAck(o: Outstanding, seq: bigint): Promise<void> {
    const p = await this.outgoing.settle(o.pid);
    if (!p) return;
    const room = this.core.roomMap.get(p.room);
    if (p.kind === "send") {
      const sealed = fromBinary(SendMessageSchema, p.payload).sealed;
      if (room?.state && sealed) await room.state.acknowledged(sealed.keyId, sealed.iteration);
      if (p.localId) this.core.emit({ type: "messageState", room: p.room, localId: p.localId, state: "stored", seq: Number(seq), text: p.text });
    }
  }

  private async onJoined(room: JoinedRoom, joined: Joined): Promise<void> {
    const fresh = room.state === null;
    if (fresh) {
      room.state = await RoomState.create(room.name, this.core.identity, this.core.prekeys, {
        warn: (m) => this.core.warn(m, room.name),
        refused: (sender, reason) => this.core.emit({ type: "refusedMessage", room: room.name, sender, reason }),
        trust: (peer) => this.trust.check(peer),
        owners: this.core.contacts,
      });
    }
    const afterSeq = fresh ? room.savedSeq : room.state!.lastSeq;
    await room.state!.onJoined(joined, afterSeq);
    room.joined = true;
    this.persistence.saveProgress(room);
    // What was not acknowledged goes again first, as it was, in order; then a new key.
    this.outgoing.resendPending(room);
    await this.keys.handoutNewKey(room);
    this.core.emit({ type: "joined", room: room.name });
    for (const w of room.waiters) w.resolve();
    room.waiters = [];
  }

  private async onMemberJoined(room: JoinedRoom, event: MemberJoined): Promise<void> {
    if (!event.member) return;
    const name = await room.state!.memberJoined(event.member, event.invitation);
    if (!name) return;
    this.core.emit({ type: "memberJoined", room: room.name, user: name });
    if (!room.state!.members.get(name)?.prekey) await this.keys.fetchPrekeys(room, [name]);
    await this.outgoing.sendDistributions(room, await room.state!.handoutTo([name]));
  }

  private async onMemberLeft(room: JoinedRoom, event: MemberLeft): Promise<void> {
    if (event.user === this.core.user) {
      if (event.reason === LeaveReason.KICKED) {
        room.state!.out = true;
        this.core.emit({ type: "memberLeft", room: room.name, user: this.core.user });
        this.core.warn(`the owner of ${room.name} removed you from it`, room.name);
        this.rooms.drop(room);
      }
      return;
    }
    if (!isValidUserName(event.user)) return;
    if (!room.state!.memberLeft(event.user, event.removal)) return;
    room.receipts.delete(event.user);
    this.core.emit({ type: "memberLeft", room: room.name, user: event.user });
    await this.keys.handoutNewKey(room);
  }
}
