/**
 * Receipts both ways: how far each member's receipts say it got in a room, and ours,
 * sealed like a text and sent at most every RECEIPT_INTERVAL_MS, once the room is
 * caught up and something new was delivered or read.
 */
import type { ReceiptMarks } from "../events.js";
import { RECEIPT_INTERVAL_MS } from "../protocol.js";
import type { ReceivedMessage } from "../room.js";
import { unref, type ClientCore, type JoinedRoom } from "./core.js";
import type { Outgoing } from "./outgoing.js";

export class Receipts {
  constructor(private readonly core: ClientCore, private readonly outgoing: Outgoing) {}

  /** A member's receipt; marks only move forward, and nobody has read what was not delivered. */
  received(room: JoinedRoom, m: ReceivedMessage): void {
    const env = m.envelope;
    const before = room.receipts.get(m.sender) ?? { deliveredThrough: 0, readThrough: 0 };
    const delivered = Math.max(before.deliveredThrough, Number(env.deliveredThrough!));
    const read = Math.min(Math.max(before.readThrough, Number(env.readThrough!)), delivered);
    room.receipts.set(m.sender, { deliveredThrough: delivered, readThrough: read });
    this.core.emit({ type: "receipt", room: room.name, user: m.sender, deliveredThrough: delivered, readThrough: read });
  }

  /** Something new was delivered or read: our next receipt says so. */
  due(room: JoinedRoom): void {
    room.receiptWanted = true;
    this.schedule(room);
  }

  schedule(room: JoinedRoom): void {
    if (this.core.opts.receipts === false || !room.receiptWanted || !room.caughtUp || room.receiptTimer) return;
    const wait = Math.max(0, room.lastReceiptAt + RECEIPT_INTERVAL_MS - Date.now());
    room.receiptTimer = setTimeout(() => {
      room.receiptTimer = null;
      void this.core.serial(async () => {
        if (!room.joined || !room.state || !room.receiptWanted || this.core.roomMap.get(room.name) !== room) return;
        room.receiptWanted = false;
        room.lastReceiptAt = Date.now();
        const delivered = room.state.lastSeq;
        const read = room.readThrough < delivered ? room.readThrough : delivered;
        // A receipt goes to everyone in the room, so not while someone's keys are in doubt.
        if (room.state.untrustedMembers().length) return;
        await this.outgoing.sendSealed(room, await room.state.sealReceipt(delivered, read), { receipt: true });
      });
    }, wait);
    unref(room.receiptTimer);
  }

  cancel(room: JoinedRoom): void {
    if (room.receiptTimer) clearTimeout(room.receiptTimer);
  }

  markRead(room: string, seq: number): void {
    const r = this.core.roomMap.get(room);
    if (!r || BigInt(seq) <= r.readThrough) return;
    r.readThrough = BigInt(seq);
    this.due(r);
  }

  of(room: string): Map<string, ReceiptMarks> {
    return new Map(this.core.roomMap.get(room)?.receipts ?? []);
  }
}
