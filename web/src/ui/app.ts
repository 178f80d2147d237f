/** The browser client: the login screen, then the chat screen, on the relay that served the page. */
import { IndexedDbVault } from "../chat/index.js";
import { ChatScreen } from "./chat.js";
import { errorText, h } from "./dom.js";
import { showLogin } from "./login.js";

export async function startApp(root: HTMLElement): Promise<void> {
  const serverUrl = window.location.origin;
  let vault: IndexedDbVault;
  try {
    vault = await IndexedDbVault.open();
  } catch (e) {
    root.replaceChildren(h("main", { class: "login" }, h("h1", {}, "e2ee chat"),
      h("p", { class: "error", role: "alert" }, `This browser cannot keep keys (IndexedDB): ${errorText(e)}`)));
    return;
  }
  const login = (): Promise<void> => showLogin({
    root, serverUrl, vault,
    onReady: (client) => {
      const screen = new ChatScreen(root, client, () => void login());
      void screen.start();
    },
  });
  await login();
}
