/**
 * The session with the relay: opened with our current prekey published (logging in
 * again if the token expired), read frame by frame, and when it ends, opened again with
 * backoff until the client is closed. Every new session rejoins each room kept and
 * catches up from the last sequence number processed there.
 */
import { Code } from "@connectrpc/connect";
import { PREKEY_MAINTENANCE_MS } from "../protocol.js";
import { codeOf, describeError, login as rpcLogin, Session } from "../transport.js";
import { unref, type ClientCore } from "./core.js";
import type { Incoming } from "./incoming.js";
import type { KeyHandouts } from "./keys.js";
import type { Outgoing } from "./outgoing.js";
import type { Receipts } from "./receipts.js";

const MAX_BACKOFF_MS = 10_000;

export class Connection {
  private reconnecting = false;
  private maintenanceTimer: ReturnType<typeof setInterval> | null = null;

  constructor(
    private readonly core: ClientCore,
    private readonly outgoing: Outgoing,
    private readonly incoming: Incoming,
    private readonly keys: KeyHandouts,
    private readonly receipts: Receipts,
  ) {}

  async connect(): Promise<void> {
    this.core.closed = false;
    await this.establish();
    if (!this.maintenanceTimer) {
      this.maintenanceTimer = setInterval(() => void this.core.serial(() => this.keys.maintainPrekeys()), PREKEY_MAINTENANCE_MS);
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
      this.core.rpc.token = (await rpcLogin(this.core.rpc.transport, this.core.identity, this.core.opts.registrationToken)).sessionToken;
      session = await this.openSession();
    }
    await this.core.serial(async () => this.startSession(session));
    void this.readSession(session);
  }

  private async openSession(): Promise<Session> {
    await this.core.rpc.keyExchange({ publish: await this.core.prekeys.signedCurrent() });
    return Session.open(this.core.rpc);
  }

  private startSession(session: Session): void {
    this.core.session = session;
    this.outgoing.startSession();
    this.core.emit({ type: "connected" });
    for (const room of this.core.roomMap.values()) {
      room.joined = false;
      room.caughtUp = false;
      this.outgoing.sendJoin(room);
    }
  }

  private async readSession(session: Session): Promise<void> {
    let error: unknown = null;
    try {
      for await (const frame of session.frames()) {
        if (this.core.session !== session) break;
        await this.core.serial(() => this.incoming.onFrame(frame)).catch((e) => this.core.emit({ type: "error", message: describeError(e) }));
      }
    } catch (e) {
      error = e;
    }
    await this.core.serial(async () => {
      if (this.core.session !== session) return;
      this.core.session = null;
      for (const room of this.core.roomMap.values()) room.joined = false;
      this.outgoing.failOutstanding(new Error("the connection to the relay was lost"));
    });
    if (this.core.closed) return;
    const code = codeOf(error);
    const reason = error ? describeError(error) : "the relay ended the session";
    if (code === Code.Aborted) {
      this.core.emit({ type: "disconnected", reason: `${this.core.user} opened another session (${reason})`, willRetry: false });
      return;
    }
    if (code === Code.PermissionDenied) {
      // A removal during a catch-up ends the stream; the rejoin tells which room.
      this.core.warn(reason);
    }
    this.core.emit({ type: "disconnected", reason, willRetry: true });
    void this.reconnect();
  }

  private async reconnect(): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    let delay = 500;
    try {
      while (!this.core.closed) {
        await new Promise((r) => setTimeout(r, delay));
        if (this.core.closed) return;
        try {
          await this.establish();
          return;
        } catch (e) {
          if (codeOf(e) === Code.PermissionDenied || codeOf(e) === Code.AlreadyExists) {
            this.core.emit({ type: "disconnected", reason: describeError(e), willRetry: false });
            return;
          }
          this.core.emit({ type: "disconnected", reason: describeError(e), willRetry: true });
          delay = Math.min(delay * 2, MAX_BACKOFF_MS);
        }
      }
    } finally {
      this.reconnecting = false;
    }
  }

  close(): void {
    this.core.closed = true;
    if (this.maintenanceTimer) clearInterval(this.maintenanceTimer);
    this.maintenanceTimer = null;
    for (const room of this.core.roomMap.values()) this.receipts.cancel(room);
    this.core.session?.close();
    this.core.session = null;
  }
}
