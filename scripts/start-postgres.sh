#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the tests and prints its URL
# (postgres://postgres@127.0.0.1:PORT/postgres, trust authentication) as the last line
# of stdout.
#
# Usage: scripts/start-postgres.sh [OWNER_PID]
#
# The server listens on 127.0.0.1 only, on a free port, without a unix socket, in a
# fresh temporary directory. When the process OWNER_PID (default: the caller) exits,
# a watcher stops the server and deletes the directory, so nothing is left running.
# PostgreSQL is installed from Debian's packages if missing (root only, as on CI); as
# root, the server runs as the `postgres` user the package makes (or `nobody`), since
# PostgreSQL refuses to run as root.
set -euo pipefail

owner=${1:-$PPID}

find_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return
        fi
    done
}

bin=$(find_bin)
if [ -z "$bin" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "start-postgres: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb) and only root can install it: apt-get install postgresql" >&2
        exit 1
    fi
    echo "start-postgres: installing PostgreSQL (apt-get install postgresql)" >&2
    # Only the programs: the package would otherwise make and start a cluster of its own
    # on port 5432, left running after the tests (the official images do the same).
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/no-main-cluster.conf
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    bin=$(find_bin)
    if [ -z "$bin" ]; then
        echo "start-postgres: apt-get installed postgresql but no initdb was found under /usr/lib/postgresql" >&2
        exit 1
    fi
fi

as_server=()
if [ "$(id -u)" -ne 0 ]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/chat-postgres.XXXXXX")
else
    # In /tmp, which the server's user can reach whatever root's TMPDIR is.
    dir=$(mktemp -d /tmp/chat-postgres.XXXXXX)
    user=postgres
    id "$user" >/dev/null 2>&1 || user=nobody
    chown "$user" "$dir"
    as_server=(runuser -u "$user" --)
fi
cleanup_on_error() {
    "${as_server[@]}" "$bin/pg_ctl" stop -D "$dir/data" -m immediate >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup_on_error ERR

# initdb need not sync: the data is thrown away with the directory.
if ! "${as_server[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
    --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    rm -rf "$dir"
    exit 1
fi

# No fsync for the tests, whose data is thrown away; CHAT_POSTGRES_DURABLE=1 keeps
# PostgreSQL's defaults (every commit on disk), for benchmarks.
durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
if [ "${CHAT_POSTGRES_DURABLE:-}" = 1 ]; then
    durability=
fi
started=
for _ in $(seq 1 20); do
    port=$((20000 + RANDOM % 40000))
    # A port something already listens on is taken; the server's own bind decides the rest.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        continue
    fi
    if "${as_server[@]}" "$bin/pg_ctl" start -w -t 30 -D "$dir/data" -l "$dir/server.log" \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='' \
            $durability -c max_connections=200" \
        </dev/null >/dev/null 2>&1; then
        started=yes
        break
    fi
done
if [ -z "$started" ]; then
    echo "start-postgres: the server did not start; its log:" >&2
    cat "$dir/server.log" >&2 || true
    rm -rf "$dir"
    exit 1
fi
trap - ERR

# The watcher outlives this script: detached from its stdout (the caller reads that to
# its end) and its process group.
setsid bash -c '
    while kill -0 "$0" 2>/dev/null; do sleep 1; done
    '"${as_server[*]:-}"' "$1/pg_ctl" stop -D "$2/data" -m immediate >/dev/null 2>&1
    rm -rf "$2"
' "$owner" "$bin" "$dir" </dev/null >/dev/null 2>&1 &

echo "postgres://postgres@127.0.0.1:$port/postgres"
