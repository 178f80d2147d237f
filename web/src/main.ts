/** Placeholder entry point: the UI (src/ui/) replaces it. */
import { ChatClient, IndexedDbVault } from "./chat/index.js";

async function main(): Promise<void> {
  const status = document.getElementById("status");
  const vault = await IndexedDbVault.open();
  const users = await ChatClient.knownUsers(vault);
  if (status) status.textContent = users.length ? `identities in this browser: ${users.join(", ")}` : "no identity in this browser yet";
}

void main();
