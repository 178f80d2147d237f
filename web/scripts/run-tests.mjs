// Bundles each test file of test/<kind>/ with esbuild and runs them all with node --test.
import { build } from "esbuild";
import { readdirSync, rmSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { join } from "node:path";

const kind = process.argv[2] ?? "unit";
const dir = join("test", kind);
const out = join("test", ".build", kind);
rmSync(out, { recursive: true, force: true });
const entries = readdirSync(dir).filter((f) => f.endsWith(".test.ts")).map((f) => join(dir, f));
if (entries.length === 0) {
  console.error(`no tests in ${dir}`);
  process.exit(1);
}
await build({
  entryPoints: entries,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  outdir: out,
  outExtension: { ".js": ".mjs" },
  packages: "external",
  sourcemap: "inline",
  logLevel: "warning",
});
const files = readdirSync(out).filter((f) => f.endsWith(".mjs")).map((f) => join(out, f));
const result = spawnSync(process.execPath, ["--enable-source-maps", "--test", ...files], { stdio: "inherit" });
process.exit(result.status ?? 1);
