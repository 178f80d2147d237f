/**
 * Our sender keys going out: members' prekeys fetched from the key directory, a new key
 * for a whole room, our current key for members who had no prekey before, and our own
 * prekey kept fresh and published.
 */
import { MAX_KEY_EXCHANGE_USERS, MISSING_PREKEY_RETRY_MS } from "../protocol.js";
import { describeError } from "../transport.js";
import type { ClientCore, JoinedRoom } from "./core.js";
import type { Outgoing } from "./outgoing.js";

export class KeyHandouts {
  constructor(private readonly core: ClientCore, private readonly outgoing: Outgoing) {}

  /** A refusal is a warning, not a failure: whoever has no prekey gets our key later. */
  private async keyExchange(what: string, request: { room?: string; users?: string[] }) {
    try {
      return await this.core.rpc.keyExchange(request);
    } catch (e) {
      this.core.warn(`the key directory refused ${what}: ${describeError(e)}`);
      return null;
    }
  }

  async fetchPrekeys(room: JoinedRoom, names: string[]): Promise<void> {
    for (let start = 0; start < names.length; start += MAX_KEY_EXCHANGE_USERS) {
      const chunk = names.slice(start, start + MAX_KEY_EXCHANGE_USERS);
      const answer = await this.keyExchange(`the keys of ${chunk.join(", ")}`, { users: chunk });
      if (answer) await room.state!.takeBundles(answer.bundles);
    }
  }

  /** A new sender key for everyone in the room, under their prekeys fetched afresh. */
  async handoutNewKey(room: JoinedRoom): Promise<void> {
    const state = room.state!;
    const members = state.currentMembers();
    const answer = members.length ? await this.keyExchange(`the keys of ${room.name}'s members`, { room: room.name }) : null;
    const covered = await state.takeBundles(answer?.bundles ?? [], members);
    const missing = state.currentMembers().filter((n) => !covered.has(n));
    if (missing.length) await this.fetchPrekeys(room, missing);
    room.lastPrekeyAsk = Date.now();
    await this.outgoing.sendDistributions(room, await state.rotate());
  }

  /** Before sending: members that had no prekey get our current key once they have one (every 30 s at most). */
  async handoutToLatecomers(room: JoinedRoom): Promise<void> {
    const state = room.state!;
    const without = state.membersWithoutPrekey();
    if (!without.length || Date.now() - room.lastPrekeyAsk < MISSING_PREKEY_RETRY_MS) return;
    room.lastPrekeyAsk = Date.now();
    await this.fetchPrekeys(room, without);
    const now = without.filter((n) => state.members.get(n)?.prekey);
    if (now.length) await this.outgoing.sendDistributions(room, await state.handoutTo(now));
  }

  /** A new prekey of ours means new sender keys everywhere, handed out under the members' current prekeys. */
  async maintainPrekeys(): Promise<void> {
    let made = false;
    try {
      made = await this.core.prekeys.maintain();
    } catch (e) {
      this.core.warn(`prekey maintenance failed: ${e}`);
      return;
    }
    if (!made) return;
    try {
      await this.core.rpc.keyExchange({ publish: await this.core.prekeys.signedCurrent() });
    } catch (e) {
      this.core.warn(`cannot publish your new prekey (it goes out at the next reconnect): ${describeError(e)}`);
    }
    for (const room of this.core.roomMap.values()) if (room.joined && room.state) await this.handoutNewKey(room);
  }
}
