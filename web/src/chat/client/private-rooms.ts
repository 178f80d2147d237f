/**
 * An owner's actions in a private room: invitations signed for the keys we trust for
 * the invitee, and removals signed for the relay to enforce.
 */
import { PeerIdentity } from "../crypto/identity.js";
import { signInvitation, signRemoval } from "../crypto/membership.js";
import { isValidUserName } from "../protocol.js";
import { describeError } from "../transport.js";
import type { ClientCore } from "./core.js";
import type { Outgoing } from "./outgoing.js";
import type { Trust } from "./trust.js";

export class PrivateRooms {
  constructor(
    private readonly core: ClientCore,
    private readonly outgoing: Outgoing,
    private readonly trust: Trust,
  ) {}

  invite(room: string, user: string): Promise<void> {
    return new Promise((resolve, reject) => {
      void this.core.serial(async () => {
        if (!isValidUserName(user)) return reject(new Error(`invalid user name "${user}"`));
        if (user === this.core.user) return reject(new Error("you cannot invite yourself"));
        let answer;
        try {
          answer = await this.core.rpc.keyExchange({ users: [user] });
        } catch (e) {
          return reject(new Error(`cannot get the keys of ${user}: ${describeError(e)}`));
        }
        const bundle = answer.bundles.find((b) => b.identity?.user === user);
        if (!bundle?.identity) return reject(new Error(`the key directory has no keys for ${user}`));
        let peer: PeerIdentity;
        try {
          peer = await PeerIdentity.check(bundle.identity);
        } catch (e) {
          return reject(new Error(`not inviting ${user}: the keys the relay presents do not verify (${(e as Error).message})`));
        }
        // The invitation names a fingerprint: only one we trust may get into the room.
        if (!this.trust.check(peer)) return reject(new Error(`not inviting ${user}: its keys changed (compare safety numbers, then trust them)`));
        const invitation = await signInvitation(this.core.identity, room, user, peer.fingerprint, BigInt(Date.now()));
        this.outgoing.sendFrame({ what: "invite", room, resolve: () => resolve(), reject }, { case: "invite", value: { room, invitation } });
      });
    });
  }

  kick(room: string, user: string): Promise<void> {
    return new Promise((resolve, reject) => {
      void this.core.serial(async () => {
        if (!isValidUserName(user) || user === this.core.user) return reject(new Error(`cannot remove "${user}"`));
        const removal = await signRemoval(this.core.identity, room, user, BigInt(Date.now()));
        this.outgoing.sendFrame({ what: "kick", room, resolve: () => resolve(), reject }, { case: "kick", value: { room, removal } });
      });
    });
  }
}
