/**
 * The rooms a client keeps: joining (or creating) one, leaving it, forgetting it for
 * good, and listing them with their state.
 */
import type { RoomInfo } from "../events.js";
import { isValidRoomName } from "../protocol.js";
import { newJoinedRoom, type ClientCore, type JoinedRoom } from "./core.js";
import type { Outgoing } from "./outgoing.js";
import type { Persistence } from "./persistence.js";
import type { Receipts } from "./receipts.js";
import type { Trust } from "./trust.js";

export class Rooms {
  constructor(
    private readonly core: ClientCore,
    private readonly persistence: Persistence,
    private readonly outgoing: Outgoing,
    private readonly receipts: Receipts,
    private readonly trust: Trust,
  ) {}

  async restore(): Promise<void> {
    for (const room of await this.persistence.loadRooms()) this.core.roomMap.set(room.name, room);
  }

  join(room: string, opts: { createPrivate?: boolean }): Promise<void> {
    if (!isValidRoomName(room)) return Promise.reject(new Error(`room name "${room}" is invalid; use 1 to 64 of letters, digits and _ . # -`));
    return new Promise<void>((resolve, reject) => {
      void this.core.serial(async () => {
        let r = this.core.roomMap.get(room);
        if (r?.joined) return resolve();
        if (!r) {
          r = newJoinedRoom(room, opts.createPrivate ?? false, await this.persistence.savedSeq(room));
          this.core.roomMap.set(room, r);
          this.persistence.saveRoomList();
          if (this.core.session) this.outgoing.sendJoin(r);
        }
        // Offline, the join waits for the next session, unless the client was closed.
        r.waiters.push({ resolve, reject });
        if (!this.core.session && this.core.closed) reject(new Error("not connected to the relay"));
      });
    });
  }

  leave(room: string): Promise<void> {
    return new Promise((resolve, reject) => {
      void this.core.serial(async () => {
        const r = this.core.roomMap.get(room);
        if (!r) return resolve();
        if (!r.joined) {
          this.drop(r);
          return resolve();
        }
        this.outgoing.sendFrame({ what: "leave", room, resolve: () => resolve(), reject }, { case: "leave", value: { room } });
      });
    });
  }

  /** Forgets a room with everything kept for it: a later join is a first join. */
  drop(room: JoinedRoom): void {
    this.receipts.cancel(room);
    this.core.roomMap.delete(room.name);
    this.persistence.saveRoomList();
    this.persistence.saveProgress(room, true);
    this.outgoing.dropRoom(room.name);
  }

  list(): RoomInfo[] {
    return [...this.core.roomMap.values()].map((r) => ({
      name: r.name, private: r.state?.privateRoom ?? r.createPrivate, owner: r.state?.owner ?? "",
      joined: r.joined, caughtUp: r.caughtUp, members: this.trust.members(r.name),
    }));
  }
}
