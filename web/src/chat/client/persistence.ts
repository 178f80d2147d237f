/**
 * What a ChatClient keeps in the vault between page loads: the rooms it is in, how far
 * it has read each one (per server), and the durable frames the relay has not
 * acknowledged yet.
 */
import { vaultKeys } from "../vault.js";
import { newJoinedRoom, type ClientCore, type JoinedRoom } from "./core.js";

/** A frame that must reach the relay exactly once, in order: kept in the vault until acknowledged. */
export interface PendingFrame {
  pid: string;
  room: string;
  kind: "send" | "distribute";
  payload: Uint8Array;
  localId?: string;
  text?: string;
  receipt?: boolean;
}

interface KeptRoom {
  name: string;
  createPrivate: boolean;
}

/** Server URL, then room, then the last sequence number processed there. */
type ProgressRecord = Record<string, Record<string, bigint>>;

export class Persistence {
  /** Writes of one record go in order, so that an older snapshot never lands last. */
  private pendingWrites: Promise<void> = Promise.resolve();
  private progressWrites: Promise<void> = Promise.resolve();

  constructor(private readonly core: ClientCore) {}

  async loadPending(): Promise<PendingFrame[]> {
    return (await this.core.opts.vault.get<PendingFrame[]>(vaultKeys.pending(this.core.user))) ?? [];
  }

  async loadRooms(): Promise<JoinedRoom[]> {
    const rooms: JoinedRoom[] = [];
    for (const kept of (await this.core.opts.vault.get<KeptRoom[]>(vaultKeys.rooms(this.core.user))) ?? []) {
      rooms.push(newJoinedRoom(kept.name, kept.createPrivate, await this.savedSeq(kept.name)));
    }
    return rooms;
  }

  async savedSeq(room: string): Promise<bigint | null> {
    const all = (await this.core.opts.vault.get<ProgressRecord>(vaultKeys.progress(this.core.user))) ?? {};
    const seq = all[this.core.server]?.[room];
    return seq === undefined ? null : BigInt(seq);
  }

  saveRoomList(): void {
    const list: KeptRoom[] = [...this.core.roomMap.values()].map((r) => ({ name: r.name, createPrivate: r.createPrivate }));
    void this.core.opts.vault.put(vaultKeys.rooms(this.core.user), list).catch((e) => this.core.warn(`cannot keep the room list: ${e}`));
  }

  /** Every save reads the record again and changes only its own rooms (another tab may write too). */
  saveProgress(room: JoinedRoom, forget = false): void {
    const seq = room.state?.lastSeq ?? null;
    if (!forget && (seq === null || seq === room.savedSeq)) return;
    if (!forget) room.savedSeq = seq;
    const key = vaultKeys.progress(this.core.user);
    this.progressWrites = this.progressWrites.then(async () => {
      const all = (await this.core.opts.vault.get<ProgressRecord>(key)) ?? {};
      const mine = all[this.core.server] ?? {};
      if (forget) delete mine[room.name];
      else mine[room.name] = seq!;
      if (Object.keys(mine).length) all[this.core.server] = mine;
      else delete all[this.core.server];
      await this.core.opts.vault.put(key, all);
    }).catch((e) => this.core.warn(`cannot save progress: ${e}`));
  }

  savePending(pending: readonly PendingFrame[]): Promise<void> {
    const snapshot = pending.map((p) => ({ ...p }));
    this.pendingWrites = this.pendingWrites
      .then(() => this.core.opts.vault.put(vaultKeys.pending(this.core.user), snapshot))
      .catch((e) => this.core.warn(`cannot keep unsent messages: ${e}`));
    return this.pendingWrites;
  }
}
