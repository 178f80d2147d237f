#!/usr/bin/env bash
# Builds the browser client from nothing: web/node_modules from the lock file, the
# protobuf stubs from proto/, a typecheck, and web/dist/ (app.js, index.html, style.css).
set -euo pipefail
command -v node >/dev/null 2>&1 || { echo "build-web.sh: error: node is not installed (Node 20 or later is needed)" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "build-web.sh: error: npm is not installed (it comes with Node 20 or later)" >&2; exit 1; }
cd "$(dirname "$0")/../web"
npm ci
npm run build
