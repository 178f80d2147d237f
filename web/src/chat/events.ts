/** What the library tells the UI: events, member and room summaries. */

export type TrustState = "new" | "trusted" | "verified" | "changed";

export interface MemberInfo {
  name: string;
  /** 64 upper-case hex digits in 16 groups of 4. */
  fingerprint: string;
  trust: TrustState;
  owner: boolean;
  /** This user (listed first). */
  you: boolean;
}

export interface RoomInfo {
  name: string;
  private: boolean;
  owner: string;
  /** Joined on the current session. */
  joined: boolean;
  caughtUp: boolean;
  members: MemberInfo[];
}

export interface ReceiptMarks {
  deliveredThrough: number;
  readThrough: number;
}

export type ChatEvent =
  | { type: "connected" }
  | { type: "disconnected"; reason: string; willRetry: boolean }
  | { type: "joined"; room: string }
  | { type: "joinRefused"; room: string; reason: string }
  | { type: "message"; room: string; seq: number; sender: string; text: string; time: Date; own: boolean; fromHistory?: boolean }
  | { type: "messageState"; room: string; localId: string; state: "pending" | "stored" | "failed"; seq?: number; reason?: string; text?: string }
  | { type: "refusedMessage"; room: string; sender: string; reason: string }
  | { type: "keyChanged"; user: string }
  | { type: "memberJoined" | "memberLeft"; room: string; user: string }
  | { type: "caughtUp"; room: string }
  | { type: "receipt"; room: string; user: string; deliveredThrough: number; readThrough: number }
  | { type: "warning"; room?: string; message: string }
  | { type: "error"; message: string };
