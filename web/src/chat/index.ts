/** The protocol library's public surface, for the UI. */
export { ChatClient, type ChatClientOptions } from "./client.js";
export type { ChatEvent, MemberInfo, RoomInfo, TrustState, ReceiptMarks } from "./events.js";
export { MemoryVault, IndexedDbVault, type Vault } from "./vault.js";
export { escapeText } from "./envelope.js";
