/**
 * What every part of a ChatClient shares: its identity and keys, the rooms it keeps
 * and their per-room state, the current session, the listeners of its events, and the
 * one queue all state changes go through.
 */
import { toHex } from "../crypto/bytes.js";
import type { Identity } from "../crypto/identity.js";
import type { PrekeyStore } from "../crypto/prekeys.js";
import type { ContactBook } from "../contacts.js";
import type { ChatEvent, ReceiptMarks } from "../events.js";
import type { RoomState } from "../room.js";
import type { Transport } from "@connectrpc/connect";
import { browserTransport, ChatRpc, type Session } from "../transport.js";
import type { Vault } from "../vault.js";

/** How a ChatClient is set up; here, beside the state it configures, so that the
 * façade and its parts do not import each other. */
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

export interface JoinedRoom {
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

export function newJoinedRoom(name: string, createPrivate: boolean, savedSeq: bigint | null): JoinedRoom {
  return {
    name, createPrivate, state: null, joined: false, caughtUp: false, savedSeq, waiters: [], lastPrekeyAsk: 0,
    receipts: new Map(), readThrough: 0n, receiptWanted: false, receiptTimer: null, lastReceiptAt: 0,
  };
}

/** In Node, timers must not keep a process alive on their own; browsers have no unref. */
export function unref(timer: unknown): void {
  (timer as { unref?: () => void }).unref?.();
}

export function newId(): string {
  return toHex(crypto.getRandomValues(new Uint8Array(8)));
}

export class ClientCore {
  readonly rpc: ChatRpc;
  readonly roomMap = new Map<string, JoinedRoom>();
  session: Session | null = null;
  /** Closed by its user: no reconnecting until connect() again. */
  closed = false;
  private readonly listeners = new Set<(event: ChatEvent) => void>();
  private serialChain: Promise<unknown> = Promise.resolve();

  constructor(
    readonly opts: ChatClientOptions,
    readonly identity: Identity,
    readonly prekeys: PrekeyStore,
    readonly contacts: ContactBook,
    token: string,
  ) {
    this.rpc = new ChatRpc(opts.transport ?? browserTransport(opts.serverUrl), token);
  }

  get user(): string {
    return this.identity.user;
  }

  /** Progress is kept per server: the same room name on another relay is another room. */
  get server(): string {
    return this.opts.serverUrl.replace(/\/+$/, "");
  }

  on(listener: (event: ChatEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(event: ChatEvent): void {
    for (const l of [...this.listeners]) {
      try {
        l(event);
      } catch (e) {
        console.error("a ChatClient listener threw", e);
      }
    }
  }

  warn(message: string, room?: string): void {
    this.emit(room ? { type: "warning", room, message } : { type: "warning", message });
  }

  /** Runs state changes one at a time, frames and API calls alike. */
  serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.serialChain.then(fn);
    this.serialChain = run.catch(() => undefined);
    return run;
  }
}
