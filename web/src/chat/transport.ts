/**
 * The wire: gRPC-Web through Connect. Logging in (AuthService, retried once with a fresh
 * challenge), KeyExchange, and a session: OpenSession's server stream of ServerFrames
 * (the first is SessionOpened) with SendFrame calls strictly one at a time, numbered
 * 1, 2, 3..., repeating a number only to retry a call whose answer was lost.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import {
  AuthService, ChatService, ClientFrameSchema,
  type ClientFrame, KeyExchangeRequestSchema, type KeyExchangeResponse, type LoginResponse, type ServerFrame,
} from "../gen/chat/v2/chat_pb.js";
import { loginBytes } from "./crypto/binding.js";
import type { Identity } from "./crypto/identity.js";

export const RPC_TIMEOUT_MS = 30_000;

export function browserTransport(serverUrl: string): Transport {
  return createGrpcWebTransport({ baseUrl: serverUrl.replace(/\/+$/, ""), useBinaryFormat: true });
}

export function codeOf(e: unknown): Code | null {
  return e instanceof ConnectError ? e.code : null;
}

export function describeError(e: unknown): string {
  if (e instanceof ConnectError) return `${Code[e.code]}: ${e.rawMessage}`;
  return e instanceof Error ? e.message : String(e);
}

export async function login(transport: Transport, identity: Identity, registrationToken = ""): Promise<LoginResponse> {
  const auth = createClient(AuthService, transport);
  for (let attempt = 0; ; attempt++) {
    const { challenge } = await auth.createChallenge({ user: identity.user }, { timeoutMs: RPC_TIMEOUT_MS });
    const signature = await identity.sign(loginBytes(identity.user, challenge));
    try {
      return await auth.login(
        { identity: identity.publicIdentity(), challenge, signature, registrationToken },
        { timeoutMs: RPC_TIMEOUT_MS },
      );
    } catch (e) {
      // A relay restarted between the two calls forgot its challenge secret: once more.
      if (attempt === 0 && codeOf(e) === Code.Unauthenticated) continue;
      throw e;
    }
  }
}

function auth(token: string): HeadersInit {
  return { authorization: `Bearer ${token}` };
}

export class ChatRpc {
  readonly client: Client<typeof ChatService>;

  constructor(readonly transport: Transport, public token: string) {
    this.client = createClient(ChatService, transport);
  }

  keyExchange(request: MessageInitShape<typeof KeyExchangeRequestSchema>): Promise<KeyExchangeResponse> {
    return this.client.keyExchange(request, { headers: auth(this.token), timeoutMs: RPC_TIMEOUT_MS });
  }
}

/** Retries of one SendFrame whose answer was lost, before the session is taken as broken. */
const SEND_TRIES = 4;

/** One OpenSession/SendFrame session. */
export class Session {
  private nextFrameNumber = 1n;
  private sendChain: Promise<void> = Promise.resolve();
  private broken: Error | null = null;

  private constructor(
    private readonly rpc: ChatRpc,
    readonly sessionId: Uint8Array,
    private readonly stream: AsyncIterator<ServerFrame>,
    private readonly abort: AbortController,
  ) {}

  /** Opens the stream and waits for its SessionOpened. */
  static async open(rpc: ChatRpc): Promise<Session> {
    const abort = new AbortController();
    const stream = rpc.client.openSession({}, { headers: auth(rpc.token), signal: abort.signal })[Symbol.asyncIterator]();
    const first = await stream.next();
    if (first.done || first.value.kind.case !== "sessionOpened") {
      abort.abort();
      throw new Error("the relay did not open the session (no SessionOpened first)");
    }
    return new Session(rpc, first.value.kind.value.sessionId, stream, abort);
  }

  /** The session's frames after SessionOpened; ends (or throws its status) with the session. */
  async *frames(): AsyncGenerator<ServerFrame> {
    for (;;) {
      const next = await this.stream.next();
      if (next.done) return;
      yield next.value;
    }
  }

  /** Queues a frame; frames go out in the order queued, each after the previous one's answer. */
  send(frame: MessageInitShape<typeof ClientFrameSchema>): Promise<void> {
    const message = create(ClientFrameSchema, frame);
    const run = this.sendChain.then(() => this.sendNow(message));
    this.sendChain = run.catch(() => undefined);
    return run;
  }

  private async sendNow(frame: ClientFrame): Promise<void> {
    if (this.broken) throw this.broken;
    const frameNumber = this.nextFrameNumber;
    let lastError: unknown = null;
    for (let attempt = 0; attempt < SEND_TRIES; attempt++) {
      try {
        await this.rpc.client.sendFrame(
          { sessionId: this.sessionId, frameNumber, frame },
          { headers: auth(this.rpc.token), timeoutMs: RPC_TIMEOUT_MS },
        );
        this.nextFrameNumber = frameNumber + 1n;
        return;
      } catch (e) {
        lastError = e;
        const code = codeOf(e);
        // A lost answer, a busy session (UNAVAILABLE) or the user's requests at their
        // bound (RESOURCE_EXHAUSTED) are worth the same number again; anything else ends
        // the session.
        const retry = [Code.Unavailable, Code.DeadlineExceeded, Code.Unknown, Code.Internal, Code.ResourceExhausted];
        if (!retry.includes(code as Code)) break;
        await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
      }
    }
    this.broken = new Error(`the relay did not take a frame: ${describeError(lastError)}`);
    this.close();
    throw this.broken;
  }

  close(): void {
    this.abort.abort();
  }
}
