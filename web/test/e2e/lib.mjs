// Shared helpers of the browser tests: a real Chromium (playwright-core), one browser
// context per user (each with its own IndexedDB), the Rust command-line client, and
// screenshots. Run by tests/web.rs with CHAT_SERVER_URL, CHAT_CLIENT_BIN, SCREENSHOT_DIR.
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";

export const SERVER = requireEnv("CHAT_SERVER_URL").replace(/\/+$/, "");
export const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR ?? mkdtempSync(join(tmpdir(), "web-screenshots-"));
export const TIMEOUT = 20_000;

export function requireEnv(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`set ${name}`);
    process.exit(2);
  }
  return v;
}

export function suffix() {
  return Math.random().toString(36).slice(2, 7);
}

export function log(...args) {
  console.log(`[${(performance.now() / 1000).toFixed(1)}s]`, ...args);
}

/** Runs a scenario: launches Chromium, closes everything at the end, exits non-zero on failure. */
export async function scenario(name, body) {
  const cleanups = [];
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-dev-shm-usage"],
  });
  const users = [];
  const ctx = {
    browser,
    /** A browser user: its own context (IndexedDB), on the page the relay serves. */
    async user(label, opts = {}) {
      const context = await browser.newContext({ viewport: opts.viewport ?? { width: 1000, height: 700 }, baseURL: opts.url ?? SERVER });
      const page = await context.newPage();
      const u = new BrowserUser(label, context, page);
      users.push(u);
      await page.goto("/");
      return u;
    },
    cli(...args) {
      const c = new CliUser(...args);
      cleanups.push(() => c.kill());
      return c;
    },
    /** A rewriting proxy in front of the relay (see proxy.ts); a user opened with `{ url: proxy.url }` goes through it. */
    async proxy() {
      const { startProxy } = await loadProxyModule();
      const p = await startProxy(SERVER);
      cleanups.push(() => p.close());
      return p;
    },
    onCleanup(fn) {
      cleanups.push(fn);
    },
  };
  let failed = null;
  try {
    await body(ctx);
  } catch (e) {
    failed = e;
  }
  for (const u of users) {
    if (failed) {
      try {
        const path = join(SCREENSHOT_DIR, `failure-${u.label}.png`);
        mkdirSync(SCREENSHOT_DIR, { recursive: true });
        await u.page.screenshot({ path });
        console.log(`screenshot of ${u.label} at the failure: ${path}`);
      } catch { /* the page may be gone */ }
    }
    u.report(!!failed);
  }
  for (const fn of cleanups.reverse()) {
    try { await fn(); } catch { /* best effort */ }
  }
  await browser.close();
  if (failed) {
    console.error(`${name}: FAILED:`, failed);
    process.exit(1);
  }
  const cspErrors = users.flatMap((u) => u.consoleLines.filter((l) => /Content Security Policy|Refused to/i.test(l)));
  if (cspErrors.length) {
    console.error(`${name}: FAILED: the page broke its Content Security Policy:\n${cspErrors.join("\n")}`);
    process.exit(1);
  }
  console.log(`${name}: ok`);
  process.exit(0);
}

export class BrowserUser {
  constructor(label, context, page) {
    this.label = label;
    this.context = context;
    this.page = page;
    this.consoleLines = [];
    this.name = label;
    this.watch(page);
  }

  watch(page) {
    page.on("console", (m) => this.consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => this.consoleLines.push(`pageerror: ${e.message}`));
  }

  report(always) {
    const interesting = this.consoleLines.filter((l) => always || /^(error|pageerror)/.test(l));
    if (interesting.length) console.log(`--- console of ${this.label}:\n${interesting.join("\n")}`);
  }

  /** Makes an identity on the login screen and waits for the chat screen. */
  async createIdentity(name) {
    this.name = name;
    const p = this.page;
    await p.getByLabel("User name").fill(name);
    await p.getByRole("button", { name: "Create identity" }).click();
    await p.locator("#conn-status[data-state='online']").waitFor({ timeout: 60_000 });
  }

  async loginAs(name) {
    await this.page.getByRole("button", { name: `Log in as ${name}` }).click();
    await this.page.locator("#conn-status[data-state='online']").waitFor({ timeout: TIMEOUT });
  }

  async join(room, { createPrivate = false } = {}) {
    const p = this.page;
    await p.getByLabel("Room", { exact: true }).fill(room);
    if (createPrivate) await p.getByLabel("private (when creating)").check();
    await p.getByRole("button", { name: "Join or create" }).click();
    await this.waitCaughtUp(room);
  }

  async waitCaughtUp(room) {
    await this.page.locator("#room-title").filter({ hasText: room }).waitFor({ timeout: TIMEOUT });
    await this.page.locator("#room-sync[data-state='caught-up']").waitFor({ timeout: TIMEOUT });
  }

  async send(text) {
    const p = this.page;
    await p.locator("#composer").fill(text);
    await p.locator("#composer").press("Enter");
  }

  /** The message bubble from `sender` with `text`. */
  message(text, sender) {
    let loc = this.page.locator("#messages li.msg").filter({ has: this.page.locator(".text", { hasText: exactText(text) }) });
    if (sender) loc = loc.filter({ has: this.page.locator(".sender", { hasText: sender }) });
    return loc;
  }

  async waitMessage(text, sender) {
    await this.message(text, sender).first().waitFor({ timeout: TIMEOUT });
  }

  /** Waits until our own message `text` shows the relay stored it (✓). */
  async waitStored(text) {
    await this.page.locator("#messages li.msg.own.stored").filter({ has: this.page.locator(".text", { hasText: exactText(text) }) })
      .first().waitFor({ timeout: TIMEOUT });
  }

  /** Texts of the messages shown, in order. */
  async texts() {
    return this.page.locator("#messages li.msg .text").allTextContents();
  }

  async waitMember(name) {
    await this.page.locator(`#member-list li.member[data-user="${name}"]`).waitFor({ timeout: TIMEOUT });
  }

  async screenshot(name) {
    mkdirSync(SCREENSHOT_DIR, { recursive: true });
    const path = join(SCREENSHOT_DIR, `${name}.png`);
    await this.page.screenshot({ path });
    console.log(`screenshot: ${path}`);
    return path;
  }
}

export function exactText(text) {
  return new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
}

/** The Rust command-line client (chat-client --no-tui): stdin lines out, `[ROOM] SENDER: TEXT` lines in. */
export class CliUser {
  constructor(name, room, opts = {}) {
    this.name = name;
    this.room = room;
    this.lines = [];
    this.errLines = [];
    const home = mkdtempSync(join(tmpdir(), `cli-${name}-`));
    const bin = requireEnv("CHAT_CLIENT_BIN");
    const args = ["--server", opts.url ?? SERVER, "--user", name, "--room", room, "--home", home, "--no-tui", "--key-bits", "2048"];
    if (opts.private) args.push("--private");
    this.child = spawn(bin, args, { stdio: ["pipe", "pipe", "pipe"] });
    createInterface({ input: this.child.stdout }).on("line", (l) => this.lines.push(l));
    createInterface({ input: this.child.stderr }).on("line", (l) => this.errLines.push(l));
    this.exited = new Promise((resolve) => this.child.on("exit", resolve));
  }

  async waitJoined() {
    await this.waitFor(() => this.errLines.some((l) => l.includes(`joined ${this.room}`)), `${this.name} to join ${this.room}`);
  }

  say(text) {
    this.child.stdin.write(`${text}\n`);
  }

  async waitLine(line) {
    await this.waitFor(() => this.lines.includes(line), `${this.name} to print ${JSON.stringify(line)}`);
  }

  async waitFor(pred, what, timeoutMs = TIMEOUT) {
    const start = Date.now();
    while (!pred()) {
      if (Date.now() - start > timeoutMs) {
        throw new Error(`timed out waiting for ${what}\nstdout:\n${this.lines.join("\n")}\nstderr:\n${this.errLines.join("\n")}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async kill() {
    if (this.child.exitCode === null) {
      this.child.stdin.end("/quit\n");
      const t = setTimeout(() => this.child.kill("SIGKILL"), 3000);
      await this.exited;
      clearTimeout(t);
    }
  }
}

export function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/** Bundles proxy.ts (it uses the generated stubs and the library's crypto) and loads it. */
async function loadProxyModule() {
  const { build } = await import("esbuild");
  const here = fileURLToPath(new URL(".", import.meta.url));
  const outfile = join(here, "..", ".build", "e2e", `proxy-${process.pid}.mjs`);
  await build({
    entryPoints: [join(here, "proxy.ts")], bundle: true, platform: "node", format: "esm", target: "node20",
    outfile, packages: "external", logLevel: "warning",
  });
  try {
    return await import(pathToFileURL(outfile).href);
  } finally {
    rmSync(outfile, { force: true });
  }
}
