/** The constants and limits of chat.v2 (PROTOCOL.md) shared by every layer, and valid names. */

export const DEVICE = 1;
export const MAX_COPIES_PER_DISTRIBUTION = 96;
export const MAX_FORWARD_JUMP = 25_000;
export const MAX_SKIPPED_KEYS = 2_000;
export const MAX_ITERATION = 0xffffffff;
export const ROTATE_AFTER_MESSAGES = 1_000;
export const ROTATE_AFTER_MS = 7 * 24 * 3600 * 1000;
export const PREKEY_ROTATE_MS = 7 * 24 * 3600 * 1000;
export const PREKEY_KEEP_MS = 14 * 24 * 3600 * 1000;
export const PREKEY_MAINTENANCE_MS = 3600 * 1000;
export const MAX_KEY_EXCHANGE_USERS = 256;
export const MAX_ENVELOPE_BYTES = 32 * 1024;
export const MAX_WAITING_MESSAGES = 1024;
export const ACCEPTED_KEY_IDS_KEPT = 256;
export const MAX_REMEMBERED_SENDERS = 4096;
export const MAX_INVITATIONS_KEPT = 4096;
export const MAX_REMOVALS_KEPT = 4096;
export const MISSING_PREKEY_RETRY_MS = 30_000;
export const RECEIPT_INTERVAL_MS = 2_000;

export function isValidUserName(name: string): boolean {
  return /^[A-Za-z0-9_.-]{1,32}$/.test(name);
}

export function isValidRoomName(name: string): boolean {
  return /^[A-Za-z0-9_.#-]{1,64}$/.test(name);
}
