#!/usr/bin/env bash
# chat-bench (defaults: 50 end-to-end clients, 5 rooms) against three relays serving one
# PostgreSQL database together through NATS, the clients spread over them in turn, and
# against one relay alone on PostgreSQL, alternating, three runs of each
# (docs/BENCHMARKS.md, "Three relays"). Builds the release binaries first; starts a
# throwaway PostgreSQL with fsync on (scripts/start-postgres.sh) and NATS
# (scripts/start-nats.sh). Also counts the database's transactions per message.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin chat-server --bin chat-bench >&2
bin=${CARGO_TARGET_DIR:-target}/release
sleep 100000 & holder=$!
pids=()
# The relays go with the script however it ends; PostgreSQL and NATS with $holder.
trap 'kill "${pids[@]}" $holder 2>/dev/null || true' EXIT
url=$(CHAT_POSTGRES_DURABLE=1 bash scripts/start-postgres.sh $holder | tail -1)
nats=$(bash scripts/start-nats.sh $holder | tail -1)
transactions() {
  psql "$url" -Atc "SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database WHERE datname = '$1'"
}
for i in 1 2 3; do
  for kind in cluster single; do
    db="bench_${kind}_$i"
    dir=$(mktemp -d)
    psql "$url" -c "CREATE DATABASE $db" >/dev/null
    args=(--database "${url%/postgres}/$db")
    relays=1
    if [ $kind = cluster ]; then
      args+=(--nats "$nats")
      relays=3
    fi
    pids=() urls=()
    for r in $(seq $relays); do
      port=$((30000 + RANDOM % 20000))
      "$bin"/chat-server --listen 127.0.0.1:$port --data-dir "$dir/$r" "${args[@]}" 2>"$dir/relay$r.log" &
      pids+=($!)
      for _ in $(seq 100); do grep -q "listening on" "$dir/relay$r.log" && break; sleep 0.1; done
      urls+=("http://127.0.0.1:$port")
    done
    before=$(transactions "$db")
    echo "== $kind ($relays relays) run $i"
    if ! line=$("$bin"/chat-bench --server "$(IFS=,; echo "${urls[*]}")" | tail -1); then
      echo "chat-bench failed; the relays' logs are in $dir" >&2
      kill "${pids[@]}"
      exit 1
    fi
    after=$(transactions "$db")
    delivered=$(sed -E 's/.*delivered=([0-9]+).*/\1/' <<<"$line")
    echo "$line"
    # Messages sent = delivered / (members per room - 1) = delivered / 9 with the defaults.
    echo "database_transactions=$((after - before)) per_message=$(awk -v t=$((after - before)) -v d="$delivered" 'BEGIN { printf "%.2f", t / (d / 9) }')"
    kill "${pids[@]}"; wait "${pids[@]}" || true
    rm -rf "$dir"
  done
done
