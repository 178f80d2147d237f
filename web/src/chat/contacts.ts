/**
 * Pinned keys (PROTOCOL.md, "Trusting keys"): each contact's fingerprint pinned on first
 * use and whether it was verified, and the owner pinned for each private room. Held in
 * memory so trust checks are synchronous; every change is written through to the vault.
 */
import { vaultKeys, type Vault } from "./vault.js";

export interface ContactsRecord {
  contacts: Record<string, { fingerprint: string; verified: boolean }>;
  privateRooms: Record<string, string>;
}

export type PinStatus = "new" | "same" | "changed";

export class ContactBook {
  private writes: Promise<void> = Promise.resolve();
  /** Users pinned by this client instance: shown as 'new' until verified. */
  readonly pinnedNow = new Set<string>();

  private constructor(private readonly vault: Vault, private readonly user: string, private readonly data: ContactsRecord) {}

  static async open(vault: Vault, user: string): Promise<ContactBook> {
    const data = (await vault.get<ContactsRecord>(vaultKeys.contacts(user))) ?? { contacts: {}, privateRooms: {} };
    return new ContactBook(vault, user, data);
  }

  private save(): void {
    const snapshot = structuredClone(this.data);
    this.writes = this.writes.then(() => this.vault.put(vaultKeys.contacts(this.user), snapshot)).catch(() => undefined);
  }

  /** Resolves once every change so far is in the vault. */
  flush(): Promise<void> {
    return this.writes;
  }

  fingerprintOf(user: string): string | null {
    return this.data.contacts[user]?.fingerprint ?? null;
  }

  verified(user: string): boolean {
    return this.data.contacts[user]?.verified ?? false;
  }

  /** Trust on first use: pins an unknown user; says whether the keys are the pinned ones. */
  check(user: string, fingerprintHex: string): PinStatus {
    const pinned = this.data.contacts[user];
    if (!pinned) {
      this.data.contacts[user] = { fingerprint: fingerprintHex, verified: false };
      this.pinnedNow.add(user);
      this.save();
      return "new";
    }
    return pinned.fingerprint === fingerprintHex ? "same" : "changed";
  }

  /** Accepts new keys: a contact verified before goes back to unverified. */
  pin(user: string, fingerprintHex: string): void {
    this.data.contacts[user] = { fingerprint: fingerprintHex, verified: false };
    this.save();
  }

  setVerified(user: string, fingerprintHex: string): void {
    this.data.contacts[user] = { fingerprint: fingerprintHex, verified: true };
    this.save();
  }

  pinnedOwner(room: string): string | null {
    return this.data.privateRooms[room] ?? null;
  }

  /** Never replaced once pinned: returns the owner in force. */
  pinOwner(room: string, owner: string): string {
    const pinned = this.data.privateRooms[room];
    if (pinned !== undefined) return pinned;
    this.data.privateRooms[room] = owner;
    this.save();
    return owner;
  }
}
