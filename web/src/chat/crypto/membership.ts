/**
 * Private rooms (PROTOCOL.md, "Private rooms"): the owner's signed invitations and
 * removals, made and checked, and which members a client admits (PrivateRoomRules).
 */
import { create } from "@bufbuild/protobuf";
import { InvitationSchema, RemovalSchema, type Invitation, type Removal } from "../../gen/chat/v2/chat_pb.js";
import { equalBytes } from "./bytes.js";
import { invitationBytes, removalBytes } from "./binding.js";
import type { Identity } from "./identity.js";
import * as rsa from "./rsa.js";
import { isValidUserName, MAX_INVITATIONS_KEPT, MAX_REMOVALS_KEPT } from "../protocol.js";

export async function signInvitation(
  owner: Identity, room: string, invitee: string, fingerprint: Uint8Array, issuedAtMs: bigint,
): Promise<Invitation> {
  const signature = await owner.sign(invitationBytes(room, owner.user, invitee, fingerprint, issuedAtMs));
  return create(InvitationSchema, { room, owner: owner.user, invitee, inviteeFingerprint: fingerprint, issuedAtMs, signature });
}

export async function signRemoval(owner: Identity, room: string, member: string, issuedAtMs: bigint): Promise<Removal> {
  const signature = await owner.sign(removalBytes(room, owner.user, member, issuedAtMs));
  return create(RemovalSchema, { room, owner: owner.user, member, issuedAtMs, signature });
}

export async function invitationVerifies(inv: Invitation, ownerKey: CryptoKey): Promise<boolean> {
  if (inv.inviteeFingerprint.length !== 32) return false;
  return rsa.verify(ownerKey, inv.signature, invitationBytes(inv.room, inv.owner, inv.invitee, inv.inviteeFingerprint, inv.issuedAtMs));
}

export async function removalVerifies(rem: Removal, ownerKey: CryptoKey): Promise<boolean> {
  return rsa.verify(ownerKey, rem.signature, removalBytes(rem.room, rem.owner, rem.member, rem.issuedAtMs));
}

/** What a member of a private room knows of its membership: pinned owner, its keys, invitations, removals. */
export class PrivateRoomRules {
  ownerKey: CryptoKey | null = null;
  readonly invitations: Invitation[] = [];
  readonly removals: Removal[] = [];

  constructor(readonly room: string, readonly owner: string) {}

  learnInvitation(inv: Invitation): void {
    if (inv.room !== this.room || inv.owner !== this.owner) return;
    this.invitations.push(inv);
    if (this.invitations.length > MAX_INVITATIONS_KEPT) this.invitations.shift();
  }

  learnRemoval(rem: Removal): void {
    if (rem.room !== this.room || rem.owner !== this.owner) return;
    this.removals.push(rem);
    if (this.removals.length > MAX_REMOVALS_KEPT) this.removals.shift();
  }

  /** Whether `user`, presented with keys of `fingerprint`, is a member; if not, why. */
  async admits(user: string, fingerprint: Uint8Array): Promise<{ ok: boolean; why: string }> {
    if (!isValidUserName(this.owner)) return { ok: false, why: `the owner's name is not a valid user name` };
    if (!this.ownerKey) return { ok: false, why: `the keys of the room's owner ${this.owner} are unknown` };
    if (user === this.owner) return { ok: true, why: "" };
    let best: Invitation | null = null;
    for (const inv of this.invitations) {
      if (inv.invitee !== user || !equalBytes(inv.inviteeFingerprint, fingerprint)) continue;
      if (best && inv.issuedAtMs <= best.issuedAtMs) continue;
      if (await invitationVerifies(inv, this.ownerKey)) best = inv;
    }
    if (!best) {
      return {
        ok: false,
        why: `no invitation of these keys by the owner ${this.owner} verifies (the server may be adding members ` +
          `on its own; if the owner did invite them before protocol v2, or with other keys, ask the owner to invite them again)`,
      };
    }
    for (const rem of this.removals) {
      if (rem.member === user && rem.issuedAtMs >= best.issuedAtMs && (await removalVerifies(rem, this.ownerKey))) {
        return { ok: false, why: `the owner ${this.owner} removed them` };
      }
    }
    return { ok: true, why: "" };
  }
}
