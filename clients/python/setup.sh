#!/usr/bin/env bash
# Makes everything the Python client and the Python-side tests need, from nothing:
# a virtualenv in clients/python/.venv with the pinned packages of requirements.txt,
# and the gRPC stubs generated from proto/ into clients/python/generated/ (never
# committed). Safe to run again: the virtualenv is rebuilt only when the pins change.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
stamp="$venv/requirements.sha256"
wanted="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$wanted" > "$stamp"
fi

generated="$here/generated"
rm -rf "$generated"
mkdir -p "$generated"
"$venv/bin/python" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$generated" --grpc_python_out="$generated" \
  "$root/proto/chat/v2/chat.proto"
