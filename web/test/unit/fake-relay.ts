/**
 * A small in-memory relay for unit tests of the session layer, served through Connect's
 * router transport: logins, the key directory, OpenSession/SendFrame sessions, rooms with
 * numbered, stored entries, fan-out, catch-up after `after_seq`, resends recognised by
 * (sender, key id, iteration), and hooks to drop a session or tamper with deliveries.
 * It checks little: it is the clients that are under test.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport, type HandlerContext, type Transport } from "@connectrpc/connect";
import {
  AuthService, ChatService, ServerFrameSchema, SenderKeyDeliverySchema, MessageDeliverySchema, PublicIdentitySchema,
  type ClientFrame, type Invitation, type Removal, type MessageDelivery, type PublicIdentity, type SenderKeyDelivery, type ServerFrame, type SignedPrekey,
} from "../../src/gen/chat/v2/chat_pb.js";
import { randomBytes, toHex } from "../../src/chat/crypto/bytes.js";
import { copyLeaf } from "../../src/chat/crypto/binding.js";
import { auditPath, leafHash } from "../../src/chat/crypto/merkle.js";

type Entry =
  | { seq: bigint; kind: "message"; sender: string; delivery: MessageDelivery; ident: string }
  | { seq: bigint; kind: "key"; sender: string; recipient: string; delivery: SenderKeyDelivery };

interface Room {
  name: string;
  members: Set<string>;
  joinedAt: Map<string, bigint>;
  seq: bigint;
  log: Entry[];
  owner: string;
  invitations: Map<string, Invitation>;
  removals: Removal[];
}

class LiveSession {
  readonly id = toHex(randomBytes(16));
  lastFrame = 0n;
  ended: ConnectError | null = null;
  private queue: ServerFrame[] = [];
  private wake: (() => void) | null = null;
  readonly joined = new Set<string>();

  push(frame: ServerFrame): void {
    this.queue.push(frame);
    this.wake?.();
  }

  end(error: ConnectError | null): void {
    this.ended = error ?? new ConnectError("ended", Code.Unavailable);
    this.wake?.();
  }

  async *frames(signal: AbortSignal): AsyncGenerator<ServerFrame> {
    signal.addEventListener("abort", () => this.end(new ConnectError("cancelled", Code.Canceled)));
    for (;;) {
      while (this.queue.length) yield this.queue.shift()!;
      if (this.ended) throw this.ended;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
  }
}

export class FakeRelay {
  readonly identities = new Map<string, PublicIdentity>();
  readonly prekeys = new Map<string, SignedPrekey>();
  readonly tokens = new Map<string, string>();
  readonly sessions = new Map<string, LiveSession>();
  readonly rooms = new Map<string, Room>();
  /** Deliveries to a user go through this first (tests tamper with them). */
  tamper: ((to: string, frame: ServerFrame) => ServerFrame) | null = null;
  /** Called with each client frame after it was handled, before its answer goes out; true drops the answer and ends the session. */
  loseAnswer: ((user: string, frame: ClientFrame) => boolean) | null = null;
  /** A user whose identity the key directory and joins present differently (a relay swapping keys). */
  presentAs = new Map<string, PublicIdentity>();
  /** Lets anyone into private rooms (a relay adding members on its own). */
  openDoors = false;
  readonly transport: Transport;

  constructor() {
    this.transport = createRouterTransport(({ service }) => {
      service(AuthService, {
        createChallenge: () => ({ challenge: randomBytes(32) }),
        login: (req) => {
          const user = req.identity!.user;
          const known = this.identities.get(user);
          if (known && toHex(known.signingPublicKey) !== toHex(req.identity!.signingPublicKey)) {
            throw new ConnectError("the name is taken", Code.AlreadyExists);
          }
          this.identities.set(user, req.identity!);
          const token = toHex(randomBytes(32));
          this.tokens.set(token, user);
          return { sessionToken: token, expiresAtMs: BigInt(Date.now() + 3_600_000), registered: !known };
        },
      });
      service(ChatService, {
        keyExchange: (req, ctx) => {
          const user = this.userOf(ctx);
          if (req.publish) this.prekeys.set(user, req.publish);
          const names: string[] = [];
          if (req.room) {
            const room = this.rooms.get(req.room);
            if (!room) throw new ConnectError("no such room", Code.NotFound);
            names.push(...[...room.members].filter((m) => m !== user).sort());
          }
          for (const u of req.users) if (!names.includes(u)) names.push(u);
          return {
            bundles: names.map((u) => {
              const identity = this.identityOf(u);
              if (!identity) throw new ConnectError(`${u} is not registered`, Code.NotFound);
              return { identity, device: 1, prekey: this.prekeys.get(u) };
            }),
          };
        },
        openSession: (_req, ctx) => this.openSession(this.userOf(ctx), ctx),
        sendFrame: async (req, ctx) => {
          const user = this.userOf(ctx);
          const session = [...this.sessions.values()].find((s) => toHex(req.sessionId) === s.id && this.sessions.get(user) === s);
          if (!session || session.ended) throw new ConnectError("no such session", Code.NotFound);
          if (req.frameNumber === session.lastFrame) return {};
          if (req.frameNumber !== session.lastFrame + 1n) throw new ConnectError("out of order", Code.FailedPrecondition);
          session.lastFrame = req.frameNumber;
          const answer = await this.handle(user, session, req.frame!);
          if (this.loseAnswer?.(user, req.frame!)) {
            session.end(new ConnectError("connection reset", Code.Unavailable));
            return {};
          }
          session.push(answer);
          return {};
        },
      });
    });
  }

  private identityOf(user: string): PublicIdentity | undefined {
    return this.presentAs.get(user) ?? this.identities.get(user);
  }

  private userOf(ctx: HandlerContext): string {
    const token = (ctx.requestHeader.get("authorization") ?? "").replace(/^Bearer /, "");
    const user = this.tokens.get(token);
    if (!user) throw new ConnectError("no valid token", Code.Unauthenticated);
    return user;
  }

  private async *openSession(user: string, ctx: HandlerContext): AsyncGenerator<MessageInitShape<typeof ServerFrameSchema>> {
    this.sessions.get(user)?.end(new ConnectError("another session was opened", Code.Aborted));
    const session = new LiveSession();
    this.sessions.set(user, session);
    yield { requestId: 0n, kind: { case: "sessionOpened", value: { sessionId: Uint8Array.from(session.id.match(/../g)!.map((h) => parseInt(h, 16))) } } };
    yield* session.frames(ctx.signal);
  }

  /** Ends a user's session as a network failure would. */
  dropSession(user: string): void {
    this.sessions.get(user)?.end(new ConnectError("connection reset", Code.Unavailable));
  }

  private deliver(to: string, room: string, frame: ServerFrame): void {
    const session = this.sessions.get(to);
    if (!session || session.ended || !session.joined.has(room)) return;
    session.push(this.tamper ? this.tamper(to, frame) : frame);
  }

  private frame(requestId: bigint, kind: MessageInitShape<typeof ServerFrameSchema>["kind"]): ServerFrame {
    return create(ServerFrameSchema, { requestId, kind });
  }

  private async handle(user: string, session: LiveSession, f: ClientFrame): Promise<ServerFrame> {
    const rid = f.requestId;
    const reject = (code: Code, message: string) => this.frame(rid, { case: "rejection", value: { code, message } });
    const k = f.kind;
    if (k.case === "join") {
      const name = k.value.room;
      let room = this.rooms.get(name);
      if (!room) {
        room = {
          name, members: new Set(), joinedAt: new Map(), seq: 0n, log: [],
          owner: k.value.createPrivate ? user : "", invitations: new Map(), removals: [],
        };
        this.rooms.set(name, room);
      }
      if (session.joined.has(name)) return reject(Code.AlreadyExists, "joined already");
      const resumed = room.members.has(user);
      if (room.owner && !resumed && user !== room.owner && !room.invitations.has(user) && !this.openDoors) {
        return reject(Code.PermissionDenied, "not invited");
      }
      if (!resumed) {
        room.seq++;
        room.members.add(user);
        room.joinedAt.set(user, room.seq);
        for (const m of room.members) {
          if (m !== user) {
            this.deliver(m, name, this.frame(0n, {
              case: "memberJoined", value: { room: name, member: this.identityOf(user), invitation: room.invitations.get(user) },
            }));
          }
        }
      }
      session.joined.add(name);
      const joined = this.frame(rid, {
        case: "joined",
        value: {
          room: name, resumed, lastSeq: room.seq, privateRoom: room.owner !== "", owner: room.owner,
          invitations: [...room.invitations.values()], removals: room.removals,
          members: [...room.members].filter((m) => m !== user).sort().map((m) => create(PublicIdentitySchema, this.identityOf(m)!)),
        },
      });
      session.push(joined);
      if (resumed) {
        const after = k.value.afterSeq ?? room.seq;
        for (const e of room.log) {
          if (e.seq <= after || e.sender === user) continue;
          if (e.kind === "message") session.push(this.frame(0n, { case: "message", value: e.delivery }));
          else if (e.recipient === user) session.push(this.frame(0n, { case: "senderKey", value: e.delivery }));
        }
      }
      return this.frame(0n, { case: "caughtUp", value: { room: name, seq: room.seq } });
    }
    const roomName = k.case === undefined ? "" : k.value.room;
    const room = this.rooms.get(roomName);
    if (!room || !session.joined.has(roomName) || !room.members.has(user)) return reject(Code.PermissionDenied, "not joined");
    switch (k.case) {
      case "send": {
        const s = k.value.sealed!;
        const ident = `${user}/${s.keyId}/${s.iteration}`;
        const seen = room.log.find((e) => e.kind === "message" && e.ident === ident);
        if (seen) return this.frame(rid, { case: "ack", value: { seq: seen.seq } });
        const seq = ++room.seq;
        const delivery = create(MessageDeliverySchema, { room: roomName, sender: user, sealed: s, seq });
        room.log.push({ seq, kind: "message", sender: user, delivery, ident });
        for (const m of room.members) if (m !== user) this.deliver(m, roomName, this.frame(0n, { case: "message", value: delivery }));
        return this.frame(rid, { case: "ack", value: { seq } });
      }
      case "distributeKey": {
        const d = k.value;
        const seq = ++room.seq;
        const leaves = await Promise.all(d.copies.map((c) => leafHash(copyLeaf(c.recipient, c.device, c.prekeyId, c.wrapped))));
        for (let index = 0; index < d.copies.length; index++) {
          const copy = d.copies[index]!;
          if (!room.members.has(copy.recipient)) continue;
          const delivery = create(SenderKeyDeliverySchema, {
            room: roomName, sender: user, header: d.header, copy, index, count: d.copies.length,
            path: await auditPath(leaves, index), signature: d.signature, seq,
          });
          room.log.push({ seq, kind: "key", sender: user, recipient: copy.recipient, delivery });
          if (copy.recipient !== user) this.deliver(copy.recipient, roomName, this.frame(0n, { case: "senderKey", value: delivery }));
        }
        return this.frame(rid, { case: "ack", value: { seq } });
      }
      case "leave": {
        room.members.delete(user);
        session.joined.delete(roomName);
        room.seq++;
        for (const m of room.members) this.deliver(m, roomName, this.frame(0n, { case: "memberLeft", value: { room: roomName, user, reason: 1 } }));
        return this.frame(rid, { case: "ack", value: { seq: 0n } });
      }
      case "invite": {
        if (room.owner !== user) return reject(Code.PermissionDenied, "not the owner");
        const inv = k.value.invitation!;
        room.invitations.set(inv.invitee, inv);
        room.removals = room.removals.filter((r) => r.member !== inv.invitee);
        return this.frame(rid, { case: "ack", value: { seq: 0n } });
      }
      case "kick": {
        if (room.owner !== user) return reject(Code.PermissionDenied, "not the owner");
        const removal = k.value.removal!;
        room.invitations.delete(removal.member);
        room.removals.push(removal);
        if (room.members.has(removal.member)) {
          room.seq++;
          for (const m of room.members) {
            this.deliver(m, roomName, this.frame(0n, { case: "memberLeft", value: { room: roomName, user: removal.member, reason: 4, removal } }));
          }
          room.members.delete(removal.member);
          this.sessions.get(removal.member)?.joined.delete(roomName);
        }
        return this.frame(rid, { case: "ack", value: { seq: 0n } });
      }
      case "history": {
        const since = room.joinedAt.get(user) ?? 0n;
        const messages = room.log.filter((e) => e.kind === "message" && e.seq > since).slice(-k.value.limit);
        const keys = room.log.filter((e) => e.kind === "key" && e.recipient === user);
        return this.frame(rid, {
          case: "history",
          value: {
            room: roomName,
            entries: [
              ...keys.map((e) => ({ kind: { case: "senderKey" as const, value: e.delivery as SenderKeyDelivery } })),
              ...messages.map((e) => ({ kind: { case: "message" as const, value: e.delivery as MessageDelivery } })),
            ],
          },
        });
      }
      default:
        return reject(Code.Unimplemented, "not in the fake relay");
    }
  }
}
