/**
 * The first screen: log in with an identity kept in this browser, or make a new one
 * (RSA key generation takes seconds: progress is shown) and register it with the relay.
 */
import { ChatClient, type Vault } from "../chat/index.js";
import { errorText, h } from "./dom.js";

export interface LoginOptions {
  root: HTMLElement;
  serverUrl: string;
  vault: Vault;
  keyBits?: number;
  onReady: (client: ChatClient) => void;
}

export async function showLogin(opts: LoginOptions): Promise<void> {
  const { root, serverUrl, vault } = opts;
  const known = await ChatClient.knownUsers(vault);
  const progress = h("p", { id: "login-progress", class: "progress", role: "status", "aria-live": "polite" });
  const error = h("p", { id: "login-error", class: "error", role: "alert" });
  const buttons: HTMLButtonElement[] = [];
  const busy = (on: boolean) => {
    for (const b of buttons) b.disabled = on;
    nameInput.disabled = on;
    progress.classList.toggle("busy", on);
  };
  const clientOpts = { serverUrl, vault, ...(opts.keyBits ? { keyBits: opts.keyBits } : {}) };

  const loginAs = async (user: string) => {
    busy(true);
    error.textContent = "";
    progress.textContent = `logging in as ${user}…`;
    try {
      const client = await ChatClient.login(clientOpts, user);
      opts.onReady(client);
    } catch (e) {
      progress.textContent = "";
      error.textContent = `cannot log in as ${user}: ${errorText(e)}`;
      busy(false);
    }
  };

  const nameInput = h("input", {
    id: "new-user", name: "user", type: "text", autocomplete: "username", required: true, maxlength: 32,
    pattern: "[A-Za-z0-9_.\\-]{1,32}", spellcheck: "false", "aria-describedby": "new-user-hint",
  });
  const createButton = h("button", { type: "submit" }, "Create identity");
  buttons.push(createButton);
  const form = h("form", { id: "create-form", class: "card" },
    h("h2", {}, "New identity"),
    h("label", { for: "new-user" }, "User name"),
    nameInput,
    h("p", { id: "new-user-hint", class: "hint" }, "1 to 32 letters, digits, _ . or -. Your keys are made here and never leave this browser."),
    createButton,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const user = nameInput.value.trim();
    if (!user) return;
    busy(true);
    error.textContent = "";
    progress.textContent = "making your keys (this takes a few seconds)…";
    try {
      const client = await ChatClient.createIdentity(clientOpts, user, (msg) => { progress.textContent = msg; });
      progress.textContent = "registered";
      opts.onReady(client);
    } catch (e) {
      progress.textContent = "";
      error.textContent = `cannot create ${user}: ${errorText(e)}`;
      busy(false);
      nameInput.focus();
    }
  });

  const knownSection = known.length
    ? h("section", { class: "card", "aria-labelledby": "known-title" },
      h("h2", { id: "known-title" }, "Identities in this browser"),
      h("ul", { id: "known-users", class: "plain" }, ...known.map((user) => {
        const b = h("button", { type: "button", class: "login-as", "data-user": user }, `Log in as ${user}`);
        b.addEventListener("click", () => void loginAs(user));
        buttons.push(b);
        return h("li", {}, b);
      })))
    : null;

  root.replaceChildren(
    h("main", { id: "login", class: "login" },
      h("h1", {}, "e2ee chat"),
      h("p", { class: "lede" }, `End-to-end encrypted: the relay at ${serverUrl} only ever sees ciphertext.`),
      knownSection,
      form,
      progress,
      error,
    ),
  );
  (known.length ? buttons[1] : nameInput)?.focus();
}
