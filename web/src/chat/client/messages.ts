/**
 * Texts: ours sealed and sent (their state follows as messageState events), and
 * others' turned into message events, whether live, caught up or from history.
 */
import type { History } from "../../gen/chat/v2/chat_pb.js";
import type { ReceivedMessage } from "../room.js";
import { newId, type ClientCore, type JoinedRoom } from "./core.js";
import type { KeyHandouts } from "./keys.js";
import type { Outgoing } from "./outgoing.js";
import type { Receipts } from "./receipts.js";

export class Messages {
  constructor(
    private readonly core: ClientCore,
    private readonly outgoing: Outgoing,
    private readonly keys: KeyHandouts,
    private readonly receipts: Receipts,
  ) {}

  send(room: string, text: string): Promise<string> {
    return this.core.serial(async () => {
      const r = this.core.roomMap.get(room);
      if (!r?.state) throw new Error(`not in ${room}: join it first`);
      if (r.state.out) throw new Error(`you were removed from ${room}`);
      const untrusted = r.state.untrustedMembers();
      if (untrusted.length) {
        throw new Error(`not sent: the keys of ${untrusted.join(", ")} changed; compare safety numbers, then trust them first`);
      }
      const plaintext = r.state.checkText(text);
      if (r.joined) {
        await this.keys.handoutToLatecomers(r);
        if (r.state.rotationDue()) await this.keys.handoutNewKey(r);
      }
      const message = await r.state.sealPlaintext(plaintext);
      const localId = newId();
      this.core.emit({ type: "messageState", room, localId, state: "pending", text });
      await this.outgoing.sendSealed(r, message, { localId, text });
      return localId;
    });
  }

  history(room: string, limit: number): Promise<void> {
    return new Promise((resolve, reject) => {
      void this.core.serial(async () => {
        const r = this.core.roomMap.get(room);
        if (!r?.joined) return reject(new Error(`not in ${room} on this session`));
        this.outgoing.sendFrame(
          { what: "history", room, resolve: () => resolve(), reject },
          { case: "history", value: { room, limit: Math.max(1, Math.min(100, limit)) } },
        );
      });
    });
  }

  received(room: JoinedRoom, m: ReceivedMessage): void {
    const env = m.envelope;
    if (env.kind === "receipt") {
      this.receipts.received(room, m);
      return;
    }
    if (env.kind !== "text") {
      this.core.warn(`${m.sender} sent a kind of message this version cannot show`, room.name);
      return;
    }
    this.core.emit({
      type: "message", room: room.name, seq: Number(m.seq), sender: m.sender, text: env.text,
      time: new Date(Number(env.sentAtMs)), own: false,
    });
    this.receipts.due(room);
  }

  async onHistory(room: JoinedRoom, history: History): Promise<void> {
    if (history.room !== room.name) return;
    for (const m of await room.state!.openHistory(history)) {
      this.core.emit({
        type: "message", room: room.name, seq: Number(m.seq), sender: m.sender, text: m.envelope.text,
        time: new Date(Number(m.envelope.sentAtMs)), own: m.sender === this.core.user, fromHistory: true,
      });
    }
  }
}
