/**
 * Trust in members' keys: pinned on first sight, refused once they change until the
 * person accepts them, marked verified after comparing safety numbers; and the member
 * lists with those marks.
 */
import { toHex } from "../crypto/bytes.js";
import { formatFingerprint, safetyNumber, type PeerIdentity } from "../crypto/identity.js";
import type { MemberInfo, TrustState } from "../events.js";
import type { ClientCore } from "./core.js";
import type { KeyHandouts } from "./keys.js";
import type { Messages } from "./messages.js";

export class Trust {
  constructor(
    private readonly core: ClientCore,
    private readonly keys: KeyHandouts,
    private readonly messages: Messages,
  ) {}

  /** Whether the keys presented for a peer may be used; a change is announced, not accepted. */
  check(peer: PeerIdentity): boolean {
    const status = this.core.contacts.check(peer.user, peer.fingerprintHex);
    if (status === "changed") {
      this.core.emit({ type: "keyChanged", user: peer.user });
      this.core.warn(
        `${peer.user}'s keys changed: the relay presented new keys (fingerprint ${formatFingerprint(peer.fingerprint)}). ` +
        `Nothing is sent to or accepted from ${peer.user} until you compare safety numbers and trust them.`,
      );
      return false;
    }
    return true;
  }

  private trustState(name: string, trusted: boolean): TrustState {
    if (!trusted) return "changed";
    if (this.core.contacts.verified(name)) return "verified";
    return this.core.contacts.pinnedNow.has(name) ? "new" : "trusted";
  }

  members(room: string): MemberInfo[] {
    const r = this.core.roomMap.get(room);
    const state = r?.state;
    const owner = state?.owner ?? "";
    const out: MemberInfo[] = [{
      name: this.core.user, fingerprint: formatFingerprint(this.core.identity.fingerprint), trust: "verified", owner: owner === this.core.user, you: true,
    }];
    if (!state) return out;
    for (const name of state.currentMembers()) {
      const m = state.members.get(name)!;
      out.push({
        name, fingerprint: formatFingerprint(m.identity.fingerprint), trust: this.trustState(name, m.trusted), owner: owner === name, you: false,
      });
    }
    return out;
  }

  /** The keys a room presents for `user` now, else the ones pinned (a safety number needs either). */
  private presented(user: string): { fingerprint: Uint8Array; trusted: boolean } | null {
    for (const r of this.core.roomMap.values()) {
      const m = r.state?.members.get(user);
      if (m && !m.former) return { fingerprint: m.identity.fingerprint, trusted: m.trusted };
    }
    const pinned = this.core.contacts.fingerprintOf(user);
    if (!pinned) return null;
    return { fingerprint: Uint8Array.from(pinned.match(/../g)!.map((h) => parseInt(h, 16))), trusted: true };
  }

  async safetyNumber(user: string): Promise<string> {
    const p = this.presented(user);
    if (!p) throw new Error(`no keys known for ${user}`);
    return safetyNumber(this.core.user, this.core.identity.fingerprint, user, p.fingerprint);
  }

  trust(user: string): Promise<void> {
    return this.core.serial(async () => {
      const refused = [...this.core.roomMap.values()].filter((r) => r.state?.untrustedMembers().includes(user));
      if (!refused.length) return;
      const accepted = refused[0]!.state!.members.get(user)!.identity;
      this.core.contacts.pin(user, accepted.fingerprintHex);
      this.core.contacts.pinnedNow.delete(user);
      await this.core.contacts.flush();
      for (const r of refused) {
        if (r.state!.members.get(user)!.identity.fingerprintHex !== accepted.fingerprintHex) {
          this.core.warn(`not trusting ${user} in ${r.name}: the relay presents other keys for ${user} there`, r.name);
          continue;
        }
        const { changed, opened } = await r.state!.trustMember(user);
        for (const m of opened) this.messages.received(r, m);
        if (changed && r.joined) await this.keys.handoutNewKey(r);
      }
    });
  }

  async verify(user: string): Promise<void> {
    const p = this.presented(user);
    if (!p) throw new Error(`no keys known for ${user}`);
    if (!p.trusted) throw new Error(`the keys presented for ${user} changed: trust them first`);
    this.core.contacts.setVerified(user, toHex(p.fingerprint));
    this.core.contacts.pinnedNow.delete(user);
    await this.core.contacts.flush();
  }
}
