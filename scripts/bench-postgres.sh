#!/usr/bin/env bash
# chat-bench (defaults) against chat-server on PostgreSQL and on SQLite, alternating,
# three runs of each (docs/BENCHMARKS.md, "The relay on PostgreSQL"). Builds the release
# binaries first; starts a throwaway PostgreSQL (scripts/start-postgres.sh) with fsync
# and synchronous_commit turned back on, so that both stores are durable.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin chat-server --bin chat-bench >&2
bin=${CARGO_TARGET_DIR:-target}/release
sleep 100000 & holder=$!
url=$(CHAT_POSTGRES_DURABLE=1 bash scripts/start-postgres.sh $holder | tail -1)
echo "PostgreSQL fsync=$(psql "$url" -Atc 'SHOW fsync') synchronous_commit=$(psql "$url" -Atc 'SHOW synchronous_commit')"
for i in 1 2 3; do
  for kind in postgres sqlite; do
    db="bench_${kind}_$i"
    dir=$(mktemp -d)
    if [ $kind = postgres ]; then
      psql "$url" -c "CREATE DATABASE $db" >/dev/null
      args=(--database "${url%/postgres}/$db")
    else
      args=(--data-dir "$dir/data")
    fi
    port=$((30000 + RANDOM % 20000))
    $bin/chat-server --listen 127.0.0.1:$port "${args[@]}" 2>$dir/server.log &
    pid=$!
    for _ in $(seq 50); do grep -q "listening on" $dir/server.log && break; sleep 0.1; done
    echo "== $kind run $i"
    $bin/chat-bench --server http://127.0.0.1:$port | tail -1
    kill $pid; wait $pid || true
    rm -rf $dir
  done
done
kill $holder
