/**
 * ChatClient: the public API the UI uses, a façade over the parts in client/ (the
 * session state machine ported from the Python client's session.py, plus what a
 * browser needs: reconnecting with backoff and resending what was not acknowledged,
 * exactly once and in order, from the vault).
 *
 * - core: what every part shares (identity, rooms, session, events, the serial queue);
 * - connection: the session with the relay, and reconnecting with backoff;
 * - outgoing: request ids, outstanding requests, durable frames and their resends;
 * - incoming: each frame from the relay and what it changes;
 * - persistence: the room list, progress and unsent frames in the vault;
 * - rooms: join, leave, forget, list; messages: texts out and in, history;
 * - keys: sender-key handouts and our prekey; trust: members' keys and safety numbers;
 * - receipts: theirs and ours; private-rooms: an owner's invitations and removals.
 */
import { Identity, type StoredIdentity } from "./crypto/identity.js";
import { PrekeyStore } from "./crypto/prekeys.js";
import { DEFAULT_KEY_BITS } from "./crypto/rsa.js";
import { ContactBook } from "./contacts.js";
import type { ChatEvent, MemberInfo, ReceiptMarks, RoomInfo } from "./events.js";
import { isValidUserName } from "./protocol.js";
import { browserTransport, login as rpcLogin } from "./transport.js";
import { vaultKeys, type Vault } from "./vault.js";
import { Connection } from "./client/connection.js";
import { ClientCore, type ChatClientOptions } from "./client/core.js";
import { Incoming } from "./client/incoming.js";
import { KeyHandouts } from "./client/keys.js";
import { Messages } from "./client/messages.js";
import { Outgoing } from "./client/outgoing.js";
import { Persistence } from "./client/persistence.js";
import { PrivateRooms } from "./client/private-rooms.js";
import { Receipts } from "./client/receipts.js";
import { Rooms } from "./client/rooms.js";
import { Trust } from "./client/trust.js";

export class ChatClient {
  private readonly core: ClientCore;
  private readonly outgoing: Outgoing;
  private readonly receiptTracker: Receipts;
  private readonly messages: Messages;
  private readonly trustBook: Trust;
  private readonly roomList: Rooms;
  private readonly privateRooms: PrivateRooms;
  private readonly connection: Connection;

  private constructor(opts: ChatClientOptions, readonly identity: Identity, prekeys: PrekeyStore, contacts: ContactBook, token: string) {
    const core = new ClientCore(opts, identity, prekeys, contacts, token);
    const persistence = new Persistence(core);
    const outgoing = new Outgoing(core, persistence);
    const keys = new KeyHandouts(core, outgoing);
    const receipts = new Receipts(core, outgoing);
    const messages = new Messages(core, outgoing, keys, receipts);
    const trust = new Trust(core, keys, messages);
    const rooms = new Rooms(core, persistence, outgoing, receipts, trust);
    const incoming = new Incoming(core, persistence, outgoing, keys, messages, receipts, rooms, trust);
    this.core = core;
    this.outgoing = outgoing;
    this.receiptTracker = receipts;
    this.messages = messages;
    this.trustBook = trust;
    this.roomList = rooms;
    this.privateRooms = new PrivateRooms(core, outgoing, trust);
    this.connection = new Connection(core, outgoing, incoming, keys, receipts);
  }

  get user(): string {
    return this.identity.user;
  }

  // -- making and loading identities ---------------------------------------------------

  /** Makes a new identity (slow: RSA key generation), registers it with Login, keeps it. */
  static async createIdentity(opts: ChatClientOptions, user: string, onProgress?: (msg: string) => void): Promise<ChatClient> {
    if (!isValidUserName(user)) throw new Error(`user name "${user}" is invalid; use 1 to 32 of letters, digits and _ . -`);
    if (await opts.vault.get(vaultKeys.identity(user))) throw new Error(`an identity for ${user} is already stored in this browser`);
    const bits = opts.keyBits ?? DEFAULT_KEY_BITS;
    const identity = await Identity.generate(user, bits, onProgress);
    onProgress?.("registering with the relay...");
    const transport = opts.transport ?? browserTransport(opts.serverUrl);
    const answer = await rpcLogin(transport, identity, opts.registrationToken);
    await opts.vault.put(vaultKeys.identity(user), identity.stored);
    return ChatClient.finish({ ...opts, transport }, identity, answer.sessionToken, onProgress);
  }

  /** Logs in with the identity kept in the vault. */
  static async login(opts: ChatClientOptions, user: string): Promise<ChatClient> {
    const stored = await opts.vault.get<StoredIdentity>(vaultKeys.identity(user));
    if (!stored) throw new Error(`no identity for ${user} in this browser`);
    const identity = await Identity.load(stored);
    const transport = opts.transport ?? browserTransport(opts.serverUrl);
    const answer = await rpcLogin(transport, identity, opts.registrationToken);
    return ChatClient.finish({ ...opts, transport }, identity, answer.sessionToken);
  }

  private static async finish(opts: ChatClientOptions, identity: Identity, token: string, onProgress?: (msg: string) => void): Promise<ChatClient> {
    const prekeys = await PrekeyStore.open(opts.vault, identity, opts.keyBits ?? DEFAULT_KEY_BITS);
    await prekeys.maintain(Date.now(), onProgress);
    const contacts = await ContactBook.open(opts.vault, identity.user);
    const client = new ChatClient(opts, identity, prekeys, contacts, token);
    await client.outgoing.restorePending();
    await client.roomList.restore();
    return client;
  }

  static async knownUsers(vault: Vault): Promise<string[]> {
    return (await vault.keys("identity/")).map((k) => k.slice("identity/".length));
  }

  // -- the session ---------------------------------------------------------------------

  on(listener: (event: ChatEvent) => void): () => void {
    return this.core.on(listener);
  }

  /** Publishes the prekey, opens the session and joins every room kept, catching up. */
  connect(): Promise<void> {
    return this.connection.connect();
  }

  close(): void {
    this.connection.close();
  }

  // -- rooms and messages --------------------------------------------------------------

  /** Joins (or creates) a room; resolves once joined and our key is handed out. */
  join(room: string, opts: { createPrivate?: boolean } = {}): Promise<void> {
    return this.roomList.join(room, opts);
  }

  /** Leaves a room for good (a later join is a first join). */
  leave(room: string): Promise<void> {
    return this.roomList.leave(room);
  }

  rooms(): RoomInfo[] {
    return this.roomList.list();
  }

  /** Seals and sends a text; resolves with its local id once queued (messageState events follow). */
  send(room: string, text: string): Promise<string> {
    return this.messages.send(room, text);
  }

  /** Our texts not acknowledged yet (kept across page loads; they go again on the next join). */
  pendingMessages(room: string): { localId: string; text: string }[] {
    return this.outgoing.pendingMessages(room);
  }

  /** Asks for the latest `limit` messages; they arrive as message events with fromHistory. */
  history(room: string, limit = 50): Promise<void> {
    return this.messages.history(room, limit);
  }

  // -- receipts ------------------------------------------------------------------------

  /** The person has seen the room's messages up to `seq`: the next receipt says so. */
  markRead(room: string, seq: number): void {
    this.receiptTracker.markRead(room, seq);
  }

  /** What each member's receipts said last: how far it got in the room. */
  receipts(room: string): Map<string, ReceiptMarks> {
    return this.receiptTracker.of(room);
  }

  // -- private rooms -------------------------------------------------------------------

  /** Owner only: signs an invitation for the keys pinned for `user` (pinned now if new). */
  invite(room: string, user: string): Promise<void> {
    return this.privateRooms.invite(room, user);
  }

  /** Owner only: signs a removal of `user`. */
  kick(room: string, user: string): Promise<void> {
    return this.privateRooms.kick(room, user);
  }

  // -- members and trust ---------------------------------------------------------------

  members(room: string): MemberInfo[] {
    return this.trustBook.members(room);
  }

  /** The safety number of this user and `user` (the keys presented now), 60 digits in 12 groups. */
  safetyNumber(user: string): Promise<string> {
    return this.trustBook.safetyNumber(user);
  }

  /** Accepts the keys presented for `user`; each room where they were refused gets a new key of ours. */
  trust(user: string): Promise<void> {
    return this.trustBook.trust(user);
  }

  /** Marks the keys presented for `user` verified (after comparing safety numbers). */
  verify(user: string): Promise<void> {
    return this.trustBook.verify(user);
  }
}
