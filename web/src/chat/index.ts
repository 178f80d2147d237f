/** The protocol library's public surface, for the UI. */
export { MemoryVault, IndexedDbVault, type Vault } from "./vault.js";
