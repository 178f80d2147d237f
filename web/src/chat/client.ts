/**
 * ChatClient: the public API the UI uses. It owns the session state machine (ported
 * from the Python client's session.py, plus what a browser needs: reconnecting with
 * backoff and resending what was not acknowledged, exactly once and in order, from the
 * vault): login, the rooms kept in the vault and their progress, frames in and out,
 * key handouts, trust decisions, receipts and history.
 */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, type Transport } from "@connectrpc/connect";
import {
  DistributeSenderKeySchema, LeaveReason, SendMessageSchema,
  type DistributeSenderKey, type History, type Joined, type MemberJoined, type MemberLeft,
  type SendMessage, type ServerFrame,
} from "../gen/chat/v2/chat_pb.js";
import { toHex } from "./crypto/bytes.js";
import { formatFingerprint, Identity, PeerIdentity, safetyNumber, type StoredIdentity } from "./crypto/identity.js";
import { signInvitation, signRemoval } from "./crypto/membership.js";
import { PrekeyStore } from "./crypto/prekeys.js";
import { DEFAULT_KEY_BITS } from "./crypto/rsa.js";
import { ContactBook } from "./contacts.js";
import type { ChatEvent, MemberInfo, ReceiptMarks, RoomInfo, TrustState } from "./events.js";
import {
  isValidRoomName, isValidUserName, MAX_KEY_EXCHANGE_USERS, MISSING_PREKEY_RETRY_MS, PREKEY_MAINTENANCE_MS, RECEIPT_INTERVAL_MS,
} from "./protocol.js";
import { RoomState, type ReceivedMessage } from "./room.js";
import { browserTransport, ChatRpc, codeOf, describeError, login as rpcLogin, Session } from "./transport.js";
import { vaultKeys, type Vault } from "./vault.js";

export interface ChatClientOptions {
  serverUrl: string;
  vault: Vault;
  /** Defaults to gRPC-Web over fetch; Node tests pass connect-node's. */
  transport?: Transport;
  /** RSA size of a new identity and its prekeys (default 3072). */
  keyBits?: number;
  registrationToken?: string;
  /** Send receipts (default true). */
  receipts?: boolean;
}

/** A frame that must reach the relay exactly once, in order: kept in the vault until acknowledged. */
interface PendingFrame {
  pid: string;
  room: string;
  kind: "send" | "distribute";
  payload: Uint8Array;
  localId?: string;
  text?: string;
  receipt?: boolean;
}

interface Outstanding {
  what: "join" | "leave" | "history" | "invite" | "kick" | "send" | "distribute";
  room: string;
  pid?: string;
  resolve?: (value: unknown) => void;
  reject?: (error: Error) => void;
}

interface KeptRoom {
  name: string;
  createPrivate: boolean;
}

interface JoinedRoom {
  name: string;
  createPrivate: boolean;
  state: RoomState | null;
  /** Joined on the current session. */
  joined: boolean;
  caughtUp: boolean;
  savedSeq: bigint | null;
  waiters: { resolve: () => void; reject: (e: Error) => void }[];
  lastPrekeyAsk: number;
  receipts: Map<string, ReceiptMarks>;
  readThrough: bigint;
  receiptWanted: boolean;
  receiptTimer: ReturnType<typeof setTimeout> | null;
  lastReceiptAt: number;
}

const MAX_BACKOFF_MS = 10_000;

/** In Node, timers must not keep a process alive on their own; browsers have no unref. */
function unref(timer: unknown): void {
  (timer as { unref?: () => void }).unref?.();
}

function newId(): string {
  return toHex(crypto.getRandomValues(new Uint8Array(8)));
}

export class ChatClient {
  private readonly listeners = new Set<(event: ChatEvent) => void>();
  private readonly rpc: ChatRpc;
  private readonly roomMap = new Map<string, JoinedRoom>();
  private session: Session | null = null;
  private nextRequestId = 1n;
  private outstanding = new Map<bigint, Outstanding>();
  private pending: PendingFrame[] = [];
  private pendingWrites: Promise<void> = Promise.resolve();
  private progressWrites: Promise<void> = Promise.resolve();
  private serialChain: Promise<unknown> = Promise.resolve();
  private closed = false;
  private reconnecting = false;
  private maintenanceTimer: ReturnType<typeof setInterval> | null = null;

  private constructor(
    private readonly opts: ChatClientOptions,
    readonly identity: Identity,
    private readonly prekeys: PrekeyStore,
    private readonly contacts: ContactBook,
    token: string,
  ) {
    this.rpc = new ChatRpc(opts.transport ?? browserTransport(opts.serverUrl), token);
  }

  get user(): string {
    return this.identity.user;
  }

  private get server(): string {
    return this.opts.serverUrl.replace(/\/+$/, "");
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
    client.pending = (await opts.vault.get<PendingFrame[]>(vaultKeys.pending(identity.user))) ?? [];
    for (const kept of (await opts.vault.get<KeptRoom[]>(vaultKeys.rooms(identity.user))) ?? []) {
      client.roomMap.set(kept.name, client.newRoom(kept.name, kept.createPrivate, await client.savedSeq(kept.name)));
    }
    return client;
  }

  static async knownUsers(vault: Vault): Promise<string[]> {
    return (await vault.keys("identity/")).map((k) => k.slice("identity/".length));
  }

  // -- events --------------------------------------------------------------------------

  on(listener: (event: ChatEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(event: ChatEvent): void {
    for (const l of [...this.listeners]) {
      try {
        l(event);
      } catch (e) {
        console.error("a ChatClient listener threw", e);
      }
    }
  }

  private warn(message: string, room?: string): void {
    this.emit(room ? { type: "warning", room, message } : { type: "warning", message });
  }

  /** Runs state changes one at a time, frames and API calls alike. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.serialChain.then(fn);
    this.serialChain = run.catch(() => undefined);
    return run;
  }

  // -- the vault -----------------------------------------------------------------------

  private newRoom(name: string, createPrivate: boolean, savedSeq: bigint | null): JoinedRoom {
    return {
      name, createPrivate, state: null, joined: false, caughtUp: false, savedSeq, waiters: [], lastPrekeyAsk: 0,
      receipts: new Map(), readThrough: 0n, receiptWanted: false, receiptTimer: null, lastReceiptAt: 0,
    };
  }

  private async savedSeq(room: string): Promise<bigint | null> {
    const all = (await this.opts.vault.get<Record<string, Record<string, bigint>>>(vaultKeys.progress(this.user))) ?? {};
    const seq = all[this.server]?.[room];
    return seq === undefined ? null : BigInt(seq);
  }

  private saveRoomList(): void {
    const list: KeptRoom[] = [...this.roomMap.values()].map((r) => ({ name: r.name, createPrivate: r.createPrivate }));
    void this.opts.vault.put(vaultKeys.rooms(this.user), list).catch((e) => this.warn(`cannot keep the room list: ${e}`));
  }

  /** Every save reads the record again and changes only its own rooms (another tab may write too). */
  private saveProgress(room: JoinedRoom, forget = false): void {
    const seq = room.state?.lastSeq ?? null;
    if (!forget && (seq === null || seq === room.savedSeq)) return;
    if (!forget) room.savedSeq = seq;
    const key = vaultKeys.progress(this.user);
    this.progressWrites = this.progressWrites.then(async () => {
      const all = (await this.opts.vault.get<Record<string, Record<string, bigint>>>(key)) ?? {};
      const mine = all[this.server] ?? {};
      if (forget) delete mine[room.name];
      else mine[room.name] = seq!;
      if (Object.keys(mine).length) all[this.server] = mine;
      else delete all[this.server];
      await this.opts.vault.put(key, all);
    }).catch((e) => this.warn(`cannot save progress: ${e}`));
  }

  private savePending(): Promise<void> {
    const snapshot = this.pending.map((p) => ({ ...p }));
    this.pendingWrites = this.pendingWrites
      .then(() => this.opts.vault.put(vaultKeys.pending(this.user), snapshot))
      .catch((e) => this.warn(`cannot keep unsent messages: ${e}`));
    return this.pendingWrites;
  }

  // -- connecting ----------------------------------------------------------------------

  /** Publishes the prekey, opens the session and joins every room kept, catching up. */
  async connect(): Promise<void> {
    this.closed = false;
    await this.establish();
    if (!this.maintenanceTimer) {
      this.maintenanceTimer = setInterval(() => void this.serial(() => this.maintainPrekeys()), PREKEY_MAINTENANCE_MS);
      unref(this.maintenanceTimer);
    }
  }

  private async establish(): Promise<void> {
    let session: Session;
    try {
      session = await this.openSession();
    } catch (e) {
      if (codeOf(e) !== Code.Unauthenticated) throw e;
      // The token expired (12 h by default): log in again, once.
      this.rpc.token = (await rpcLogin(this.rpc.transport, this.identity, this.opts.registrationToken)).sessionToken;
      session = await this.openSession();
    }
    await this.serial(async () => this.startSession(session));
    void this.readSession(session);
  }

  private async openSession(): Promise<Session> {
    await this.rpc.keyExchange({ publish: await this.prekeys.signedCurrent() });
    return Session.open(this.rpc);
  }

  private startSession(session: Session): void {
    this.session = session;
    this.nextRequestId = 1n;
    this.outstanding = new Map();
    this.emit({ type: "connected" });
    for (const room of this.roomMap.values()) {
      room.joined = false;
      room.caughtUp = false;
      this.sendJoin(room);
    }
  }

  private async readSession(session: Session): Promise<void> {
    let error: unknown = null;
    try {
      for await (const frame of session.frames()) {
        if (this.session !== session) break;
        await this.serial(() => this.onFrame(frame)).catch((e) => this.emit({ type: "error", message: describeError(e) }));
      }
    } catch (e) {
      error = e;
    }
    await this.serial(async () => {
      if (this.session !== session) return;
      this.session = null;
      for (const room of this.roomMap.values()) room.joined = false;
      for (const o of this.outstanding.values()) o.reject?.(new Error("the connection to the relay was lost"));
      this.outstanding = new Map();
    });
    if (this.closed) return;
    const code = codeOf(error);
    const reason = error ? describeError(error) : "the relay ended the session";
    if (code === Code.Aborted) {
      this.emit({ type: "disconnected", reason: `${this.user} opened another session (${reason})`, willRetry: false });
      return;
    }
    if (code === Code.PermissionDenied) {
      // A removal during a catch-up ends the stream; the rejoin tells which room.
      this.warn(reason);
    }
    this.emit({ type: "disconnected", reason, willRetry: true });
    void this.reconnect();
  }

  private async reconnect(): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    let delay = 500;
    try {
      while (!this.closed) {
        await new Promise((r) => setTimeout(r, delay));
        if (this.closed) return;
        try {
          await this.establish();
          return;
        } catch (e) {
          if (codeOf(e) === Code.PermissionDenied || codeOf(e) === Code.AlreadyExists) {
            this.emit({ type: "disconnected", reason: describeError(e), willRetry: false });
            return;
          }
          this.emit({ type: "disconnected", reason: describeError(e), willRetry: true });
          delay = Math.min(delay * 2, MAX_BACKOFF_MS);
        }
      }
    } finally {
      this.reconnecting = false;
    }
  }

  close(): void {
    this.closed = true;
    if (this.maintenanceTimer) clearInterval(this.maintenanceTimer);
    this.maintenanceTimer = null;
    for (const room of this.roomMap.values()) if (room.receiptTimer) clearTimeout(room.receiptTimer);
    this.session?.close();
    this.session = null;
  }

  // -- frames out ----------------------------------------------------------------------

  private sendFrame(o: Outstanding, kind: Parameters<Session["send"]>[0]["kind"]): bigint | null {
    const session = this.session;
    if (!session) {
      o.reject?.(new Error("not connected to the relay"));
      return null;
    }
    const requestId = this.nextRequestId++;
    this.outstanding.set(requestId, o);
    session.send({ requestId, kind }).catch((e) => {
      if (this.session === session) this.warn(describeError(e));
    });
    return requestId;
  }

  private sendJoin(room: JoinedRoom): void {
    const afterSeq = room.state?.lastSeq ?? room.savedSeq ?? undefined;
    this.sendFrame(
      { what: "join", room: room.name },
      { case: "join", value: { room: room.name, createPrivate: room.createPrivate, afterSeq } },
    );
  }

  /** Sends a durable frame now if the room is joined on this session; else it waits for the rejoin. */
  private sendPending(p: PendingFrame): void {
    const room = this.roomMap.get(p.room);
    if (!this.session || !room?.joined) return;
    if (p.kind === "send") {
      this.sendFrame({ what: "send", room: p.room, pid: p.pid }, { case: "send", value: fromBinary(SendMessageSchema, p.payload) });
    } else {
      this.sendFrame(
        { what: "distribute", room: p.room, pid: p.pid },
        { case: "distributeKey", value: fromBinary(DistributeSenderKeySchema, p.payload) },
      );
    }
  }

  private async queueDurable(p: PendingFrame): Promise<void> {
    this.pending.push(p);
    await this.savePending();
    this.sendPending(p);
  }

  private async sendDistributions(room: JoinedRoom, frames: DistributeSenderKey[]): Promise<void> {
    for (const frame of frames) {
      await this.queueDurable({ pid: newId(), room: room.name, kind: "distribute", payload: toBinary(DistributeSenderKeySchema, frame) });
    }
  }

  private async sendSealed(room: JoinedRoom, message: SendMessage, extra: Partial<PendingFrame>): Promise<void> {
    await this.queueDurable({ pid: newId(), room: room.name, kind: "send", payload: toBinary(SendMessageSchema, message), ...extra });
  }

  // -- the key directory ---------------------------------------------------------------

  private async keyExchange(what: string, request: { room?: string; users?: string[] }) {
    try {
      return await this.rpc.keyExchange(request);
    } catch (e) {
      this.warn(`the key directory refused ${what}: ${describeError(e)}`);
      return null;
    }
  }

  private async fetchPrekeys(room: JoinedRoom, names: string[]): Promise<void> {
    for (let start = 0; start < names.length; start += MAX_KEY_EXCHANGE_USERS) {
      const chunk = names.slice(start, start + MAX_KEY_EXCHANGE_USERS);
      const answer = await this.keyExchange(`the keys of ${chunk.join(", ")}`, { users: chunk });
      if (answer) await room.state!.takeBundles(answer.bundles);
    }
  }

  /** A new sender key for everyone in the room, under their prekeys fetched afresh. */
  private async handoutNewKey(room: JoinedRoom): Promise<void> {
    const state = room.state!;
    const members = state.currentMembers();
    const answer = members.length ? await this.keyExchange(`the keys of ${room.name}'s members`, { room: room.name }) : null;
    const covered = await state.takeBundles(answer?.bundles ?? [], members);
    const missing = state.currentMembers().filter((n) => !covered.has(n));
    if (missing.length) await this.fetchPrekeys(room, missing);
    room.lastPrekeyAsk = Date.now();
    await this.sendDistributions(room, await state.rotate());
  }

  /** Before sending: members that had no prekey get our current key once they have one (every 30 s at most). */
  private async handoutToLatecomers(room: JoinedRoom): Promise<void> {
    const state = room.state!;
    const without = state.membersWithoutPrekey();
    if (!without.length || Date.now() - room.lastPrekeyAsk < MISSING_PREKEY_RETRY_MS) return;
    room.lastPrekeyAsk = Date.now();
    await this.fetchPrekeys(room, without);
    const now = without.filter((n) => state.members.get(n)?.prekey);
    if (now.length) await this.sendDistributions(room, await state.handoutTo(now));
  }

  private async maintainPrekeys(): Promise<void> {
    let made = false;
    try {
      made = await this.prekeys.maintain();
    } catch (e) {
      this.warn(`prekey maintenance failed: ${e}`);
      return;
    }
    if (!made) return;
    try {
      await this.rpc.keyExchange({ publish: await this.prekeys.signedCurrent() });
    } catch (e) {
      this.warn(`cannot publish your new prekey (it goes out at the next reconnect): ${describeError(e)}`);
    }
    for (const room of this.roomMap.values()) if (room.joined && room.state) await this.handoutNewKey(room);
  }

  // -- trust ---------------------------------------------------------------------------

  private checkTrust(peer: PeerIdentity): boolean {
    const status = this.contacts.check(peer.user, peer.fingerprintHex);
    if (status === "changed") {
      this.emit({ type: "keyChanged", user: peer.user });
      this.warn(
        `${peer.user}'s keys changed: the relay presented new keys (fingerprint ${formatFingerprint(peer.fingerprint)}). ` +
        `Nothing is sent to or accepted from ${peer.user} until you compare safety numbers and trust them.`,
      );
      return false;
    }
    return true;
  }

  // -- frames in -----------------------------------------------------------------------

  private async onFrame(frame: ServerFrame): Promise<void> {
    if (frame.requestId !== 0n) {
      await this.onAnswer(frame);
    } else {
      const kind = frame.kind;
      if (kind.case === undefined || kind.case === "ack" || kind.case === "rejection" || kind.case === "joined" ||
        kind.case === "history" || kind.case === "sessionOpened") {
        return;
      }
      const room = this.roomMap.get(kind.value.room);
      if (!room?.joined || !room.state) return;
      switch (kind.case) {
        case "memberJoined": await this.onMemberJoined(room, kind.value); break;
        case "memberLeft": await this.onMemberLeft(room, kind.value); break;
        case "message": {
          const m = await room.state.open(kind.value);
          if (m) this.received(room, m);
          break;
        }
        case "senderKey":
          for (const m of await room.state.acceptSenderKey(kind.value)) this.received(room, m);
          break;
        case "caughtUp":
          room.state.caughtUp();
          room.caughtUp = true;
          this.emit({ type: "caughtUp", room: room.name });
          this.scheduleReceipt(room);
          break;
      }
    }
    for (const room of this.roomMap.values()) if (room.joined) this.saveProgress(room);
  }

  private async onAnswer(frame: ServerFrame): Promise<void> {
    const o = this.outstanding.get(frame.requestId);
    if (!o) return;
    this.outstanding.delete(frame.requestId);
    const room = this.roomMap.get(o.room);
    const kind = frame.kind;
    if (kind.case === "rejection") {
      const reason = `${Code[kind.value.code] ?? kind.value.code}: ${kind.value.message}`;
      await this.onRejection(o, room, reason);
      return;
    }
    switch (o.what) {
      case "join":
        if (kind.case === "joined" && room) await this.onJoined(room, kind.value);
        return;
      case "history":
        if (kind.case === "history" && room?.state) await this.onHistory(room, kind.value);
        o.resolve?.(undefined);
        return;
      case "send":
      case "distribute":
        await this.onDurableAck(o, kind.case === "ack" ? kind.value.seq : 0n);
        return;
      case "leave":
        if (room) this.dropRoom(room);
        o.resolve?.(undefined);
        return;
      default:
        o.resolve?.(undefined);
    }
  }

  private async onRejection(o: Outstanding, room: JoinedRoom | undefined, reason: string): Promise<void> {
    if (o.what === "join") {
      this.emit({ type: "joinRefused", room: o.room, reason });
      if (room) {
        for (const w of room.waiters) w.reject(new Error(`cannot join ${o.room}: ${reason}`));
        room.waiters = [];
        this.dropRoom(room);
      }
      return;
    }
    if (o.what === "send" || o.what === "distribute") {
      const p = this.pending.find((x) => x.pid === o.pid);
      this.pending = this.pending.filter((x) => x.pid !== o.pid);
      await this.savePending();
      if (p?.localId) this.emit({ type: "messageState", room: o.room, localId: p.localId, state: "failed", reason, text: p.text });
      else this.warn(`the relay refused a ${p?.receipt ? "receipt" : "key distribution"} in ${o.room}: ${reason}`, o.room);
      return;
    }
    if (o.what === "history") this.warn(`the relay refused the history of ${o.room}: ${reason}`, o.room);
    o.reject?.(new Error(reason));
  }

  private async onDurableAck(o: Outstanding, seq: bigint): Promise<void> {
    const p = this.pending.find((x) => x.pid === o.pid);
    if (!p) return;
    this.pending = this.pending.filter((x) => x.pid !== o.pid);
    await this.savePending();
    const room = this.roomMap.get(p.room);
    if (p.kind === "send") {
      const sealed = fromBinary(SendMessageSchema, p.payload).sealed;
      if (room?.state && sealed) await room.state.acknowledged(sealed.keyId, sealed.iteration);
      if (p.localId) this.emit({ type: "messageState", room: p.room, localId: p.localId, state: "stored", seq: Number(seq), text: p.text });
    }
  }

  private async onJoined(room: JoinedRoom, joined: Joined): Promise<void> {
    const fresh = room.state === null;
    if (fresh) {
      room.state = await RoomState.create(room.name, this.identity, this.prekeys, {
        warn: (m) => this.warn(m, room.name),
        refused: (sender, reason) => this.emit({ type: "refusedMessage", room: room.name, sender, reason }),
        trust: (peer) => this.checkTrust(peer),
        owners: this.contacts,
      });
    }
    const afterSeq = fresh ? room.savedSeq : room.state!.lastSeq;
    await room.state!.onJoined(joined, afterSeq);
    room.joined = true;
    this.saveProgress(room);
    // What was not acknowledged goes again first, as it was, in order; then a new key.
    for (const p of this.pending.filter((x) => x.room === room.name)) this.sendPending(p);
    await this.handoutNewKey(room);
    this.emit({ type: "joined", room: room.name });
    for (const w of room.waiters) w.resolve();
    room.waiters = [];
  }

  private async onMemberJoined(room: JoinedRoom, event: MemberJoined): Promise<void> {
    if (!event.member) return;
    const name = await room.state!.memberJoined(event.member, event.invitation);
    if (!name) return;
    this.emit({ type: "memberJoined", room: room.name, user: name });
    if (!room.state!.members.get(name)?.prekey) await this.fetchPrekeys(room, [name]);
    await this.sendDistributions(room, await room.state!.handoutTo([name]));
  }

  private async onMemberLeft(room: JoinedRoom, event: MemberLeft): Promise<void> {
    if (event.user === this.user) {
      if (event.reason === LeaveReason.KICKED) {
        room.state!.out = true;
        this.emit({ type: "memberLeft", room: room.name, user: this.user });
        this.warn(`the owner of ${room.name} removed you from it`, room.name);
        this.dropRoom(room);
      }
      return;
    }
    if (!isValidUserName(event.user)) return;
    if (!room.state!.memberLeft(event.user, event.removal)) return;
    room.receipts.delete(event.user);
    this.emit({ type: "memberLeft", room: room.name, user: event.user });
    await this.handoutNewKey(room);
  }

  private received(room: JoinedRoom, m: ReceivedMessage): void {
    const env = m.envelope;
    if (env.kind === "receipt") {
      const before = room.receipts.get(m.sender) ?? { deliveredThrough: 0, readThrough: 0 };
      const delivered = Math.max(before.deliveredThrough, Number(env.deliveredThrough!));
      const read = Math.min(Math.max(before.readThrough, Number(env.readThrough!)), delivered);
      room.receipts.set(m.sender, { deliveredThrough: delivered, readThrough: read });
      this.emit({ type: "receipt", room: room.name, user: m.sender, deliveredThrough: delivered, readThrough: read });
      return;
    }
    if (env.kind !== "text") {
      this.warn(`${m.sender} sent a kind of message this version cannot show`, room.name);
      return;
    }
    this.emit({
      type: "message", room: room.name, seq: Number(m.seq), sender: m.sender, text: env.text,
      time: new Date(Number(env.sentAtMs)), own: false,
    });
    room.receiptWanted = true;
    this.scheduleReceipt(room);
  }

  private async onHistory(room: JoinedRoom, history: History): Promise<void> {
    if (history.room !== room.name) return;
    for (const m of await room.state!.openHistory(history)) {
      this.emit({
        type: "message", room: room.name, seq: Number(m.seq), sender: m.sender, text: m.envelope.text,
        time: new Date(Number(m.envelope.sentAtMs)), own: m.sender === this.user, fromHistory: true,
      });
    }
  }

  private dropRoom(room: JoinedRoom): void {
    if (room.receiptTimer) clearTimeout(room.receiptTimer);
    this.roomMap.delete(room.name);
    this.saveRoomList();
    this.saveProgress(room, true);
    if (this.pending.some((p) => p.room === room.name)) {
      this.pending = this.pending.filter((p) => p.room !== room.name);
      void this.savePending();
    }
  }

  // -- receipts ------------------------------------------------------------------------

  private scheduleReceipt(room: JoinedRoom): void {
    if (this.opts.receipts === false || !room.receiptWanted || !room.caughtUp || room.receiptTimer) return;
    const wait = Math.max(0, room.lastReceiptAt + RECEIPT_INTERVAL_MS - Date.now());
    room.receiptTimer = setTimeout(() => {
      room.receiptTimer = null;
      void this.serial(async () => {
        if (!room.joined || !room.state || !room.receiptWanted || this.roomMap.get(room.name) !== room) return;
        room.receiptWanted = false;
        room.lastReceiptAt = Date.now();
        const delivered = room.state.lastSeq;
        const read = room.readThrough < delivered ? room.readThrough : delivered;
        if (room.state.untrustedMembers().length) return;
        await this.sendSealed(room, await room.state.sealReceipt(delivered, read), { receipt: true });
      });
    }, wait);
    unref(room.receiptTimer);
  }

  /** The person has seen the room's messages up to `seq`: the next receipt says so. */
  markRead(room: string, seq: number): void {
    const r = this.roomMap.get(room);
    if (!r || BigInt(seq) <= r.readThrough) return;
    r.readThrough = BigInt(seq);
    r.receiptWanted = true;
    this.scheduleReceipt(r);
  }

  /** Our texts not acknowledged yet (kept across page loads; they go again on the next join). */
  pendingMessages(room: string): { localId: string; text: string }[] {
    return this.pending
      .filter((p) => p.room === room && p.localId !== undefined)
      .map((p) => ({ localId: p.localId!, text: p.text ?? "" }));
  }

  /** What each member's receipts said last: how far it got in the room. */
  receipts(room: string): Map<string, ReceiptMarks> {
    return new Map(this.roomMap.get(room)?.receipts ?? []);
  }

  // -- the API -------------------------------------------------------------------------

  /** Joins (or creates) a room; resolves once joined and our key is handed out. */
  join(room: string, opts: { createPrivate?: boolean } = {}): Promise<void> {
    if (!isValidRoomName(room)) return Promise.reject(new Error(`room name "${room}" is invalid; use 1 to 64 of letters, digits and _ . # -`));
    return new Promise<void>((resolve, reject) => {
      void this.serial(async () => {
        let r = this.roomMap.get(room);
        if (r?.joined) return resolve();
        if (!r) {
          r = this.newRoom(room, opts.createPrivate ?? false, await this.savedSeq(room));
          this.roomMap.set(room, r);
          this.saveRoomList();
          if (this.session) this.sendJoin(r);
        }
        r.waiters.push({ resolve, reject });
        if (!this.session && this.closed) reject(new Error("not connected to the relay"));
      });
    });
  }

  /** Leaves a room for good (a later join is a first join). */
  leave(room: string): Promise<void> {
    return new Promise((resolve, reject) => {
      void this.serial(async () => {
        const r = this.roomMap.get(room);
        if (!r) return resolve();
        if (!r.joined) {
          this.dropRoom(r);
          return resolve();
        }
        this.sendFrame({ what: "leave", room, resolve: () => resolve(), reject }, { case: "leave", value: { room } });
      });
    });
  }

  /** Seals and sends a text; resolves with its local id once queued (messageState events follow). */
  send(room: string, text: string): Promise<string> {
    return this.serial(async () => {
      const r = this.roomMap.get(room);
      if (!r?.state) throw new Error(`not in ${room}: join it first`);
      if (r.state.out) throw new Error(`you were removed from ${room}`);
      const untrusted = r.state.untrustedMembers();
      if (untrusted.length) {
        throw new Error(`not sent: the keys of ${untrusted.join(", ")} changed; compare safety numbers, then trust them first`);
      }
      const plaintext = r.state.checkText(text);
      if (r.joined) {
        await this.handoutToLatecomers(r);
        if (r.state.rotationDue()) await this.handoutNewKey(r);
      }
      const message = await r.state.sealPlaintext(plaintext);
      const localId = newId();
      this.emit({ type: "messageState", room, localId, state: "pending", text });
      await this.sendSealed(r, message, { localId, text });
      return localId;
    });
  }

  /** Asks for the latest `limit` messages; they arrive as message events with fromHistory. */
  history(room: string, limit = 50): Promise<void> {
    return new Promise((resolve, reject) => {
      void this.serial(async () => {
        const r = this.roomMap.get(room);
        if (!r?.joined) return reject(new Error(`not in ${room} on this session`));
        this.sendFrame(
          { what: "history", room, resolve: () => resolve(), reject },
          { case: "history", value: { room, limit: Math.max(1, Math.min(100, limit)) } },
        );
      });
    });
  }

  /** Owner only: signs an invitation for the keys pinned for `user` (pinned now if new). */
  invite(room: string, user: string): Promise<void> {
    return new Promise((resolve, reject) => {
      void this.serial(async () => {
        if (!isValidUserName(user)) return reject(new Error(`invalid user name "${user}"`));
        if (user === this.user) return reject(new Error("you cannot invite yourself"));
        let answer;
        try {
          answer = await this.rpc.keyExchange({ users: [user] });
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
        if (!this.checkTrust(peer)) return reject(new Error(`not inviting ${user}: its keys changed (compare safety numbers, then trust them)`));
        const invitation = await signInvitation(this.identity, room, user, peer.fingerprint, BigInt(Date.now()));
        this.sendFrame({ what: "invite", room, resolve: () => resolve(), reject }, { case: "invite", value: { room, invitation } });
      });
    });
  }

  /** Owner only: signs a removal of `user`. */
  kick(room: string, user: string): Promise<void> {
    return new Promise((resolve, reject) => {
      void this.serial(async () => {
        if (!isValidUserName(user) || user === this.user) return reject(new Error(`cannot remove "${user}"`));
        const removal = await signRemoval(this.identity, room, user, BigInt(Date.now()));
        this.sendFrame({ what: "kick", room, resolve: () => resolve(), reject }, { case: "kick", value: { room, removal } });
      });
    });
  }

  private trustState(name: string, trusted: boolean): TrustState {
    if (!trusted) return "changed";
    if (this.contacts.verified(name)) return "verified";
    return this.contacts.pinnedNow.has(name) ? "new" : "trusted";
  }

  members(room: string): MemberInfo[] {
    const r = this.roomMap.get(room);
    const state = r?.state;
    const owner = state?.owner ?? "";
    const out: MemberInfo[] = [{
      name: this.user, fingerprint: formatFingerprint(this.identity.fingerprint), trust: "verified", owner: owner === this.user, you: true,
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

  rooms(): RoomInfo[] {
    return [...this.roomMap.values()].map((r) => ({
      name: r.name, private: r.state?.privateRoom ?? r.createPrivate, owner: r.state?.owner ?? "",
      joined: r.joined, caughtUp: r.caughtUp, members: this.members(r.name),
    }));
  }

  private presented(user: string): { fingerprint: Uint8Array; trusted: boolean } | null {
    for (const r of this.roomMap.values()) {
      const m = r.state?.members.get(user);
      if (m && !m.former) return { fingerprint: m.identity.fingerprint, trusted: m.trusted };
    }
    const pinned = this.contacts.fingerprintOf(user);
    if (!pinned) return null;
    return { fingerprint: Uint8Array.from(pinned.match(/../g)!.map((h) => parseInt(h, 16))), trusted: true };
  }

  /** The safety number of this user and `user` (the keys presented now), 60 digits in 12 groups. */
  async safetyNumber(user: string): Promise<string> {
    const p = this.presented(user);
    if (!p) throw new Error(`no keys known for ${user}`);
    return safetyNumber(this.user, this.identity.fingerprint, user, p.fingerprint);
  }

  /** Accepts the keys presented for `user`; each room where they were refused gets a new key of ours. */
  trust(user: string): Promise<void> {
    return this.serial(async () => {
      const refused = [...this.roomMap.values()].filter((r) => r.state?.untrustedMembers().includes(user));
      if (!refused.length) return;
      const accepted = refused[0]!.state!.members.get(user)!.identity;
      this.contacts.pin(user, accepted.fingerprintHex);
      this.contacts.pinnedNow.delete(user);
      await this.contacts.flush();
      for (const r of refused) {
        if (r.state!.members.get(user)!.identity.fingerprintHex !== accepted.fingerprintHex) {
          this.warn(`not trusting ${user} in ${r.name}: the relay presents other keys for ${user} there`, r.name);
          continue;
        }
        const { changed, opened } = await r.state!.trustMember(user);
        for (const m of opened) this.received(r, m);
        if (changed && r.joined) await this.handoutNewKey(r);
      }
    });
  }

  /** Marks the keys presented for `user` verified (after comparing safety numbers). */
  async verify(user: string): Promise<void> {
    const p = this.presented(user);
    if (!p) throw new Error(`no keys known for ${user}`);
    if (!p.trusted) throw new Error(`the keys presented for ${user} changed: trust them first`);
    this.contacts.setVerified(user, toHex(p.fingerprint));
    this.contacts.pinnedNow.delete(user);
    await this.contacts.flush();
  }
}
