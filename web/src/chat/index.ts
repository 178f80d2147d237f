/** The protocol library's public surface, for the UI. */
export { ChatClient } from "./client.js";
export type { ChatClientOptions } from "./client/core.js";
export type { ChatEvent, MemberInfo, RoomInfo, TrustState, ReceiptMarks } from "./events.js";
export { MemoryVault, IndexedDbVault, type Vault } from "./vault.js";
export { escapeText } from "./envelope.js";
