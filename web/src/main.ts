/** Placeholder entry point: the UI (src/ui/) replaces it. */
import { IndexedDbVault } from "./chat/index.js";

async function main(): Promise<void> {
  const status = document.getElementById("status");
  const vault = await IndexedDbVault.open();
  const users = (await vault.keys("identity/")).map((k) => k.slice("identity/".length));
  if (status) status.textContent = users.length ? `identities in this browser: ${users.join(", ")}` : "no identity in this browser yet";
}

void main();
