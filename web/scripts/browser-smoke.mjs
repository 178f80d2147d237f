// Runs test/smoke/ in headless Chromium against a chat-server that serves it:
//   CHAT_SERVER_BIN=/path/to/chat-server [CHROMIUM=/usr/bin/chromium] node scripts/browser-smoke.mjs
import { build } from "esbuild";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { spawn } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const bin = process.env.CHAT_SERVER_BIN;
if (!bin) {
  console.error("browser-smoke: set CHAT_SERVER_BIN to a chat-server binary");
  process.exit(2);
}
const out = join("test", ".build", "smoke");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({ entryPoints: ["test/smoke/smoke.ts"], bundle: true, format: "esm", target: "es2022", outfile: join(out, "smoke.js"), logLevel: "warning" });
copyFileSync("test/smoke/smoke.html", join(out, "smoke.html"));
copyFileSync("test/smoke/smoke.html", join(out, "index.html"));

const dataDir = mkdtempSync(join(tmpdir(), "chat-smoke-"));
const server = spawn(bin, ["--listen", "127.0.0.1:0", "--data-dir", dataDir, "--web-dir", out], { stdio: ["ignore", "pipe", "pipe"] });
const url = await new Promise((resolve, reject) => {
  let seen = "";
  const onData = (chunk) => {
    seen += chunk.toString();
    const m = /listening on (\S+)/.exec(seen.replace(/\x1b\[[0-9;]*m/g, ""));
    if (m) resolve(`http://${m[1]}`);
  };
  server.stdout.on("data", onData);
  server.stderr.on("data", onData);
  server.on("exit", (code) => reject(new Error(`chat-server exited (${code}): ${seen}`)));
});
let ok = false;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`[browser] ${m.text()}`));
  page.on("pageerror", (e) => console.log(`[page error] ${e.message}`));
  await page.goto(`${url}/smoke.html`);
  await page.waitForFunction(() => window.__smoke !== undefined, null, { timeout: 120_000 });
  const result = await page.evaluate(() => window.__smoke);
  for (const line of result.log) console.log(line);
  ok = result.ok;
} finally {
  await browser.close();
  server.kill();
}
console.log(ok ? "1 passed, 0 failed" : "0 passed, 1 failed");
process.exit(ok ? 0 : 1);
