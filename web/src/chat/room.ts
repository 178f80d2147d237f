/**
 * The end-to-end state of one room, with no I/O (RoomState), ported from the Python
 * client's room.py: members checked, pinned and (in a private room) admitted; their
 * prekeys; our own ratcheting sender key and its distributions; members' sender keys
 * checked (Merkle path and RSA-PSS before any RSA decryption) and followed (Ed25519
 * before anything is derived); messages waiting for a key; the seq for catch-up; history.
 */
import { create } from "@bufbuild/protobuf";
import {
  SealedMessageSchema, SendMessageSchema,
  type DistributeSenderKey, type History, type Invitation, type Joined, type KeyBundle,
  type MessageDelivery, type PublicIdentity, type Removal, type SendMessage, type SenderKeyDelivery,
} from "../gen/chat/v2/chat_pb.js";
import { hex64 } from "./crypto/bytes.js";
import { buildDistributions, deliveryVerifies, unwrapDelivery, type CopyTarget } from "./crypto/distribution.js";
import { PeerIdentity, type Identity } from "./crypto/identity.js";
import { PrivateRoomRules } from "./crypto/membership.js";
import { checkPrekey, type PeerPrekey } from "./crypto/prekeys.js";
import { OwnSenderKey, PeerSenderKey } from "./crypto/senderkey.js";
import { decodeEnvelope, encodeReceipt, encodeText, EnvelopeError, type Envelope } from "./envelope.js";
import {
  ACCEPTED_KEY_IDS_KEPT, DEVICE, MAX_ENVELOPE_BYTES, MAX_REMEMBERED_SENDERS, MAX_WAITING_MESSAGES,
  ROTATE_AFTER_MESSAGES, ROTATE_AFTER_MS, isValidRoomName, isValidUserName,
} from "./protocol.js";

export interface OwnPrekeys {
  privateKey(id: bigint): CryptoKey | null;
  readonly current: { id: bigint; pair: CryptoKeyPair };
}

export interface OwnerPins {
  pinnedOwner(room: string): string | null;
  pinOwner(room: string, owner: string): string;
}

export interface Member {
  identity: PeerIdentity;
  /** False when the relay presents keys other than the pinned ones. */
  trusted: boolean;
  /** The latest sender key of an untrusted member (checked, not unwrapped). */
  heldKey: SenderKeyDelivery | null;
  /** Only known to open what a catch-up or history holds of it. */
  former: boolean;
  prekey: PeerPrekey | null;
}

export interface ReceivedMessage {
  room: string;
  sender: string;
  envelope: Envelope;
  seq: bigint;
}

export interface RoomOptions {
  warn: (message: string) => void;
  /** A message dropped (tampered, undecryptable, untrusted sender): never shown as one. */
  refused?: (sender: string, reason: string) => void;
  trust: (peer: PeerIdentity) => boolean;
  owners: OwnerPins;
  rotateAfterMessages?: number;
  rotateAfterMs?: number;
}

export class MessageTooLong extends Error {}

/** Where the numbering starts after a Joined, and what to warn about. */
export function startingSeq(resumed: boolean, afterSeq: bigint | null, latest: bigint): [bigint, string | null] {
  if (afterSeq !== null && resumed) {
    if (afterSeq <= latest) return [afterSeq, null];
    return [latest, `this client has seen the room up to ${afterSeq}, but the relay's latest is ${latest}: ` +
      `the relay seems restored from an older backup; continuing from ${latest}`];
  }
  if (afterSeq) {
    return [latest, "the relay no longer counted you as a member, so you joined again: what was said while you were away is not available"];
  }
  return [latest, null];
}

export class RoomState {
  readonly user: string;
  readonly members = new Map<string, Member>();
  private readonly peerKeys = new Map<string, PeerSenderKey>();
  private readonly acceptedKeyIds = new Map<string, bigint[]>();
  private pending: MessageDelivery[] = [];
  ownKey!: OwnSenderKey;
  lastSeq = 0n;
  private: PrivateRoomRules | null = null;
  /** The owner removed us: no key goes out any more. */
  out = false;
  /** Who holds our current key. */
  keyHolders = new Set<string>();
  privateRoom = false;
  owner = "";

  private constructor(readonly room: string, readonly identity: Identity, readonly prekeys: OwnPrekeys, private readonly opts: RoomOptions) {
    this.user = identity.user;
  }

  static async create(room: string, identity: Identity, prekeys: OwnPrekeys, opts: RoomOptions): Promise<RoomState> {
    if (!isValidRoomName(room)) throw new Error(`invalid room name "${room}"`);
    const state = new RoomState(room, identity, prekeys, opts);
    state.ownKey = await OwnSenderKey.generate();
    return state;
  }

  private warn(message: string): void {
    this.opts.warn(message);
  }

  private refuse(sender: string, message: string): void {
    if (this.opts.refused) this.opts.refused(sender, message);
    else this.opts.warn(message);
  }

  // -- members -------------------------------------------------------------------------

  isCurrentMember(user: string): boolean {
    const m = this.members.get(user);
    return m !== undefined && !m.former;
  }

  currentMembers(): string[] {
    return [...this.members].filter(([, m]) => !m.former).map(([n]) => n).sort();
  }

  untrustedMembers(): string[] {
    return [...this.members].filter(([, m]) => !m.former && !m.trusted).map(([n]) => n).sort();
  }

  membersWithoutPrekey(): string[] {
    return [...this.members].filter(([, m]) => !m.former && m.trusted && m.prekey === null).map(([n]) => n).sort();
  }

  private async checkIdentity(identity: PublicIdentity, what: string): Promise<PeerIdentity | null> {
    if (identity.user === this.user) {
      this.warn(`ignoring a member under your own name (${this.user}) in ${what} of ${this.room}`);
      return null;
    }
    try {
      return await PeerIdentity.check(identity);
    } catch (e) {
      this.warn(`ignoring member "${identity.user}" in ${what} of ${this.room}: ${(e as Error).message}`);
      return null;
    }
  }

  private async admitted(peer: PeerIdentity, what: string): Promise<boolean> {
    if (!this.private) return true;
    const { ok, why } = await this.private.admits(peer.user, peer.fingerprint);
    if (!ok) {
      this.warn(`not admitting ${peer.user} (${what}) to the private room ${this.room}: ${why}; ${peer.user} gets no key from you and is not heard`);
    }
    return ok;
  }

  private async addMember(identity: PublicIdentity, what: string, former = false): Promise<string | null> {
    const known = this.members.get(identity.user);
    if (known && (former || !known.former)) {
      if (!former) this.warn(`ignoring a second announcement of member ${identity.user} in ${what} of ${this.room}`);
      return null;
    }
    const peer = await this.checkIdentity(identity, what);
    if (!peer) return null;
    const trusted = this.opts.trust(peer);
    if (!former && !(await this.admitted(peer, what))) return null;
    if (known) this.peerKeys.delete(peer.user);
    this.members.set(peer.user, { identity: peer, trusted, heldKey: null, former, prekey: null });
    return peer.user;
  }

  private forgetKeysOf(name: string): void {
    this.peerKeys.delete(name);
    const kept = this.pending.filter((m) => m.sender !== name);
    const dropped = this.pending.length - kept.length;
    this.pending = kept;
    if (dropped) this.warn(`dropped ${dropped} message(s) from ${name} in ${this.room}: its sender key never arrived`);
  }

  // -- private rooms -------------------------------------------------------------------

  private async setupPrivate(joined: Joined): Promise<void> {
    let pinned = this.opts.owners.pinnedOwner(this.room);
    if (joined.privateRoom) {
      if (pinned === null) pinned = this.opts.owners.pinOwner(this.room, joined.owner);
      if (joined.owner !== pinned) {
        this.warn(`the relay says ${this.room} is owned by "${joined.owner}", but its pinned owner is ${pinned}: keeping ${pinned}'s rule`);
      }
    } else if (pinned !== null) {
      this.warn(`the relay calls ${this.room} open, but it is a private room owned by ${pinned}: keeping its rule`);
    }
    this.privateRoom = pinned !== null;
    this.owner = pinned ?? "";
    if (pinned === null) {
      this.private = null;
      return;
    }
    const rules = new PrivateRoomRules(this.room, pinned);
    for (const inv of joined.invitations) rules.learnInvitation(inv);
    for (const rem of joined.removals) rules.learnRemoval(rem);
    if (pinned === this.user) {
      rules.ownerKey = this.identity.signingPublicKey;
    } else {
      for (const identity of [...joined.members, ...joined.formerMembers]) {
        if (identity.user === pinned) await this.takeOwnerKeys(rules, identity);
      }
      if (!rules.ownerKey) {
        this.warn(`the keys of ${pinned}, the owner of ${this.room}, are unknown: your key goes to nobody in ${this.room} for now`);
      }
    }
    this.private = rules;
  }

  private async takeOwnerKeys(rules: PrivateRoomRules, identity: PublicIdentity): Promise<void> {
    let peer: PeerIdentity;
    try {
      peer = await PeerIdentity.check(identity);
    } catch {
      return;
    }
    if (this.opts.trust(peer)) rules.ownerKey = peer.signingKey;
  }

  // -- membership events ---------------------------------------------------------------

  /** Our join was accepted; the caller then fetches prekeys and calls rotate(). */
  async onJoined(joined: Joined, afterSeq: bigint | null): Promise<void> {
    const [seq, warning] = startingSeq(joined.resumed, afterSeq, joined.lastSeq);
    this.lastSeq = seq;
    if (warning) this.warn(`[${this.room}] ${warning}`);
    await this.setupPrivate(joined);
    const present = new Set<string>();
    for (const identity of joined.members) {
      present.add(identity.user);
      const known = this.members.get(identity.user);
      if (known && !known.former) {
        // A reconnect lists members we know: keep them unless the relay now presents other keys.
        const again = await this.checkIdentity(identity, "Joined");
        if (!again || again.fingerprintHex === known.identity.fingerprintHex) continue;
        this.members.delete(identity.user);
        this.forgetKeysOf(identity.user);
      }
      await this.addMember(identity, "Joined");
    }
    for (const name of this.currentMembers()) {
      if (!present.has(name)) {
        this.members.delete(name);
        this.forgetKeysOf(name);
      }
    }
    for (const identity of joined.formerMembers) await this.addMember(identity, "Joined (former members)", true);
  }

  caughtUp(): void {
    for (const [name, m] of [...this.members]) {
      if (m.former) {
        this.members.delete(name);
        this.forgetKeysOf(name);
      }
    }
  }

  async memberJoined(identity: PublicIdentity, invitation: Invitation | undefined): Promise<string | null> {
    if (this.private) {
      if (invitation) this.private.learnInvitation(invitation);
      if (identity.user === this.private.owner && !this.private.ownerKey) await this.takeOwnerKeys(this.private, identity);
    }
    return this.addMember(identity, "MemberJoined");
  }

  /** True if it was a current member: then the caller rotates. */
  memberLeft(user: string, removal: Removal | undefined): boolean {
    if (this.private && removal) this.private.learnRemoval(removal);
    if (!this.isCurrentMember(user)) return false;
    this.members.delete(user);
    this.keyHolders.delete(user);
    this.forgetKeysOf(user);
    return true;
  }

  /** The user accepted new keys of `user`: take its held key. True if the caller must rotate. */
  async trustMember(user: string): Promise<{ changed: boolean; opened: ReceivedMessage[] }> {
    const member = this.members.get(user);
    if (!member || member.trusted) return { changed: false, opened: [] };
    member.trusted = true;
    const held = member.heldKey;
    member.heldKey = null;
    const opened = held ? await this.acceptSenderKey(held) : [];
    return { changed: true, opened };
  }

  // -- prekeys -------------------------------------------------------------------------

  async takeBundles(bundles: KeyBundle[], freshFor: string[] = []): Promise<Set<string>> {
    for (const name of freshFor) {
      const m = this.members.get(name);
      if (m) m.prekey = null;
    }
    const covered = new Set<string>();
    for (const bundle of bundles) {
      const name = bundle.identity?.user ?? "";
      const member = this.members.get(name);
      if (!member || member.former || bundle.device !== DEVICE || !bundle.identity) continue;
      covered.add(name);
      let peer: PeerIdentity;
      try {
        peer = await PeerIdentity.check(bundle.identity);
      } catch (e) {
        this.warn(`ignoring the key bundle of ${name}: ${(e as Error).message}`);
        continue;
      }
      if (peer.fingerprintHex !== member.identity.fingerprintHex) {
        this.warn(`ignoring the key bundle of ${name}: its identity is not the one ${name} joined with`);
        continue;
      }
      if (!bundle.prekey) {
        member.prekey = null;
        continue;
      }
      try {
        member.prekey = await checkPrekey(member.identity, bundle.prekey);
      } catch (e) {
        member.prekey = null;
        this.warn(`[${this.room}] ${name} gets no key from you for now: its prekey does not verify: ${(e as Error).message}`);
      }
    }
    return covered;
  }

  // -- handing our key out -------------------------------------------------------------

  private recipients(names: Iterable<string>): Member[] {
    const out: Member[] = [];
    for (const name of [...new Set(names)].sort()) {
      const m = this.members.get(name);
      if (!m || m.former || !m.trusted || name === this.user) continue;
      if (!m.prekey) {
        this.warn(`[${this.room}] ${name} gets no key from you for now: it has published no verified prekey yet`);
        continue;
      }
      out.push(m);
    }
    return out;
  }

  private async distributions(recipients: Member[], ownCopy: boolean): Promise<DistributeSenderKey[]> {
    if (this.out) return [];
    const { iteration, chainKey } = this.ownKey.handout();
    const targets: CopyTarget[] = [];
    if (ownCopy) {
      const current = this.prekeys.current;
      targets.push({ recipient: this.user, prekeyId: current.id, prekey: current.pair.publicKey });
    }
    for (const m of recipients) targets.push({ recipient: m.identity.user, prekeyId: m.prekey!.prekeyId, prekey: m.prekey!.publicKey });
    if (targets.length === 0) return [];
    return buildDistributions({
      room: this.room, sender: this.user, keyId: this.ownKey.keyId, iteration,
      signingPublicKey: this.ownKey.signingPublicKey, chainKey, sign: (d) => this.identity.sign(d),
    }, targets);
  }

  /** A new sender key for every trusted current member with a verified prekey, and ourselves. */
  async rotate(): Promise<DistributeSenderKey[]> {
    this.ownKey = await OwnSenderKey.generate();
    const recipients = this.recipients(this.members.keys());
    const frames = await this.distributions(recipients, true);
    this.keyHolders = new Set(frames.length ? recipients.map((m) => m.identity.user) : []);
    return frames;
  }

  /** Our current key, from its hand-out point, for a newcomer (or one that was owed it). */
  async handoutTo(names: string[]): Promise<DistributeSenderKey[]> {
    const recipients = this.recipients(names);
    if (!recipients.length) return [];
    const frames = await this.distributions(recipients, false);
    for (const m of recipients) this.keyHolders.add(m.identity.user);
    return frames;
  }

  sealedFor(): string[] {
    return [...this.keyHolders].filter((n) => this.isCurrentMember(n) && this.members.get(n)!.trusted).sort();
  }

  async acknowledged(keyId: bigint, iteration: number): Promise<void> {
    if (this.ownKey.keyId === keyId) await this.ownKey.acknowledged(iteration);
  }

  // -- sealing -------------------------------------------------------------------------

  rotationDue(): boolean {
    return this.ownKey.dueForRotation(
      Date.now(), this.opts.rotateAfterMessages ?? ROTATE_AFTER_MESSAGES, this.opts.rotateAfterMs ?? ROTATE_AFTER_MS,
    );
  }

  async sealPlaintext(plaintext: Uint8Array): Promise<SendMessage> {
    const s = await this.ownKey.seal(this.room, this.user, plaintext);
    return create(SendMessageSchema, {
      room: this.room,
      sealed: create(SealedMessageSchema, { keyId: s.keyId, iteration: s.iteration, device: DEVICE, ciphertext: s.ciphertext, signature: s.signature }),
    });
  }

  checkText(text: string): Uint8Array {
    const plaintext = encodeText(this.user, text, Date.now());
    if (plaintext.length > MAX_ENVELOPE_BYTES) {
      throw new MessageTooLong(`the message is ${plaintext.length} bytes long; the limit is ${MAX_ENVELOPE_BYTES} bytes`);
    }
    return plaintext;
  }

  sealReceipt(deliveredThrough: bigint, readThrough: bigint): Promise<SendMessage> {
    return this.sealPlaintext(encodeReceipt(this.user, Date.now(), deliveredThrough, readThrough));
  }

  // -- receiving keys ------------------------------------------------------------------

  private memberFor(room: string, sender: string, what: string): Member | null {
    if (room !== this.room) {
      this.warn(`dropped ${what} for another room ("${room}")`);
      return null;
    }
    if (!isValidUserName(sender) || sender === this.user) {
      this.warn(`dropped ${what} from an invalid sender "${sender}"`);
      return null;
    }
    const m = this.members.get(sender);
    if (!m) {
      this.warn(`dropped ${what} from ${sender}, who is not a member of ${this.room}`);
      return null;
    }
    return m;
  }

  private accepted(sender: string): bigint[] {
    let ids = this.acceptedKeyIds.get(sender);
    if (!ids) {
      ids = [];
      this.acceptedKeyIds.set(sender, ids);
      while (this.acceptedKeyIds.size > MAX_REMEMBERED_SENDERS) {
        this.acceptedKeyIds.delete(this.acceptedKeyIds.keys().next().value as string);
      }
    } else {
      this.acceptedKeyIds.delete(sender);
      this.acceptedKeyIds.set(sender, ids);
    }
    return ids;
  }

  /** "Receiving a sender key", in its order; returns the waiting messages that now open. */
  async acceptSenderKey(d: SenderKeyDelivery): Promise<ReceivedMessage[]> {
    if (d.room === this.room && d.seq > this.lastSeq) this.lastSeq = d.seq;
    const sender = d.sender;
    const member = this.memberFor(d.room, sender, "a sender key");
    if (!member) return [];
    const current = this.peerKeys.get(sender);
    if (current && d.header && current.keyId === d.header.keyId) return [];
    if (!(await deliveryVerifies(member.identity.signingKey, d))) {
      this.warn(`dropped a sender key from ${sender} in ${this.room}: its signature does not verify (tampered with, or not made by ${sender})`);
      return [];
    }
    if (!member.trusted) {
      member.heldKey = d;
      this.warn(`kept aside a sender key from ${sender} in ${this.room}: ${sender}'s keys changed and are not trusted`);
      return [];
    }
    const keyId = d.header!.keyId;
    const accepted = this.accepted(sender);
    if (accepted.includes(keyId)) {
      this.warn(`dropped a sender key from ${sender} in ${this.room}: key id ${hex64(keyId)} was already accepted once (replayed)`);
      return [];
    }
    const unwrapped = await unwrapDelivery(d, this.user, (id) => this.prekeys.privateKey(id));
    if ("error" in unwrapped) {
      this.warn(`dropped a sender key from ${sender} in ${this.room}: ${unwrapped.error}`);
      return [];
    }
    let key: PeerSenderKey;
    try {
      key = new PeerSenderKey(keyId, d.header!.signingPublicKey, unwrapped.chainKey, d.header!.iteration);
    } catch {
      this.warn(`dropped a sender key from ${sender} in ${this.room}: it does not unwrap`);
      return [];
    }
    accepted.push(keyId);
    if (accepted.length > ACCEPTED_KEY_IDS_KEPT) accepted.shift();
    this.peerKeys.set(sender, key);
    return this.releasePending(sender);
  }

  private async releasePending(sender: string): Promise<ReceivedMessage[]> {
    const waiting = this.pending.filter((m) => m.sender === sender);
    if (!waiting.length) return [];
    this.pending = this.pending.filter((m) => m.sender !== sender);
    const opened: ReceivedMessage[] = [];
    for (const d of waiting) {
      const m = await this.openWithKey(d);
      if (m) opened.push(m);
    }
    return opened;
  }

  // -- opening -------------------------------------------------------------------------

  private buffer(d: MessageDelivery): void {
    if (this.pending.length >= MAX_WAITING_MESSAGES) {
      const oldest = this.pending.shift()!;
      this.warn(`dropped a message from ${oldest.sender} in ${this.room}: too many messages waiting for their sender's key`);
    }
    this.pending.push(d);
  }

  get waitingCount(): number {
    return this.pending.length;
  }

  private isNew(d: MessageDelivery): boolean {
    if (d.room !== this.room || d.seq === 0n) return true;
    if (d.seq <= this.lastSeq) return false;
    this.lastSeq = d.seq;
    return true;
  }

  /** The message to show, or null: a duplicate (silently), dropped (a warning) or waiting for its key. */
  async open(d: MessageDelivery): Promise<ReceivedMessage | null> {
    if (!this.isNew(d)) return null;
    const sender = d.sender;
    const member = this.memberFor(d.room, sender, "a message");
    if (!member) return null;
    if (!member.trusted) {
      this.refuse(sender, `dropped a message from ${sender} in ${this.room}: ${sender}'s keys changed and are not trusted`);
      return null;
    }
    if (!this.peerKeys.has(sender)) {
      this.buffer(d);
      return null;
    }
    return this.openWithKey(d);
  }

  private async openWithKey(d: MessageDelivery): Promise<ReceivedMessage | null> {
    const key = this.peerKeys.get(d.sender);
    if (!key) return null;
    const envelope = await this.openSealed(key, d, true);
    return envelope ? { room: this.room, sender: d.sender, envelope, seq: d.seq } : null;
  }

  private async openSealed(key: PeerSenderKey, d: MessageDelivery, live: boolean): Promise<Envelope | null> {
    const sender = d.sender;
    const sealed = d.sealed;
    const warn = live ? (m: string) => this.refuse(sender, m) : () => undefined;
    if (!sealed) {
      warn(`dropped a message from ${sender} in ${this.room}: nothing sealed in it`);
      return null;
    }
    if (sealed.keyId !== key.keyId) {
      warn(`dropped a message from ${sender} in ${this.room}: it is under a sender key that is not ${sender}'s current one (stale or replayed, or its sender key never arrived)`);
      return null;
    }
    if (sealed.signature.length !== 64 || sealed.device !== DEVICE ||
      !(await key.verifies(d.room, sender, sealed.keyId, sealed.iteration, sealed.ciphertext, sealed.signature))) {
      warn(`dropped a message from ${sender} in ${this.room}: its signature does not verify (tampered with or corrupted, or not sent by ${sender})`);
      return null;
    }
    const result = await key.open(d.room, sender, sealed.iteration, sealed.ciphertext);
    if (!result.ok) {
      if (result.reason === "ahead") warn(`[${this.room}] dropped a message from ${sender}: ${result.detail}`);
      else if (result.reason === "repeated") warn(`dropped a repeated message from ${sender} in ${this.room}: ${result.detail}`);
      else warn(`dropped a message from ${sender} in ${this.room}: it was tampered with or corrupted, or is claimed for the wrong room, sender, key or iteration`);
      return null;
    }
    try {
      return decodeEnvelope(result.plaintext, sender);
    } catch (e) {
      if (e instanceof EnvelopeError) {
        warn(`dropped an invalid message from ${sender} in ${this.room}: ${e.message}`);
        return null;
      }
      throw e;
    }
  }

  // -- history -------------------------------------------------------------------------

  private async historySigners(former: PublicIdentity[]): Promise<Map<string, CryptoKey>> {
    const signers = new Map<string, CryptoKey>([[this.user, this.identity.signingPublicKey]]);
    for (const [n, m] of this.members) if (m.trusted) signers.set(n, m.identity.signingKey);
    for (const identity of former) {
      if (identity.user === this.user || signers.has(identity.user) || this.members.has(identity.user)) continue;
      try {
        const peer = await PeerIdentity.check(identity);
        if (this.opts.trust(peer)) signers.set(peer.user, peer.signingKey);
      } catch (e) {
        this.warn(`ignoring former member "${identity.user}" in the history of ${this.room}: ${(e as Error).message}`);
      }
    }
    return signers;
  }

  /** Opens a History apart from the live state: its texts in seq order. */
  async openHistory(history: History): Promise<ReceivedMessage[]> {
    const signers = await this.historySigners(history.formerMembers);
    const keys = new Map<string, PeerSenderKey>();
    const tried = new Set<string>();
    const messages: ReceivedMessage[] = [];
    let rejected = 0;
    let unreadable = 0;
    for (const entry of history.entries) {
      if (entry.kind.case === "senderKey") {
        const d = entry.kind.value;
        if (d.room !== this.room || !d.header) {
          rejected++;
          continue;
        }
        const ident = `${d.sender}/${d.header.keyId}`;
        if (tried.has(ident)) continue;
        const signingKey = signers.get(d.sender);
        if (!signingKey || !(await deliveryVerifies(signingKey, d))) {
          rejected++;
          continue;
        }
        tried.add(ident);
        const unwrapped = await unwrapDelivery(d, this.user, (id) => this.prekeys.privateKey(id));
        if ("error" in unwrapped) {
          rejected++;
          continue;
        }
        try {
          keys.set(ident, new PeerSenderKey(d.header.keyId, d.header.signingPublicKey, unwrapped.chainKey, d.header.iteration));
        } catch {
          rejected++;
        }
      } else if (entry.kind.case === "message") {
        const d = entry.kind.value;
        const key = keys.get(`${d.sender}/${d.sealed?.keyId}`);
        let envelope: Envelope | null = null;
        if (key && d.room === this.room && signers.has(d.sender)) envelope = await this.openSealed(key, d, false);
        if (!envelope) unreadable++;
        else if (envelope.kind === "text") messages.push({ room: this.room, sender: d.sender, envelope, seq: d.seq });
      }
    }
    messages.sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
    const parts: string[] = [];
    if (unreadable) parts.push(`${unreadable} older message(s) could not be verified or decrypted`);
    if (rejected) parts.push(`${rejected} sender key(s) were rejected (bad signature, unknown sender, erased prekey or not for you)`);
    if (parts.length) this.warn(`history of ${this.room}: ${parts.join("; ")}`);
    return messages;
  }
}
