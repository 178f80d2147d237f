#!/usr/bin/env bash
# Starts a throwaway NATS server for the tests and prints `pid PID` (the server's
# process) and, as the last line of stdout, its URL: nats://127.0.0.1:PORT.
#
# Usage: scripts/start-nats.sh [OWNER_PID [PORT]]
#
# The server listens on 127.0.0.1 only, without authentication, JetStream or a
# monitoring port, on a free port or on PORT (to start a stopped server again in
# place), with its files in a fresh temporary directory. When the process OWNER_PID
# (default: the caller) exits, a watcher stops the server; once the server has exited,
# however it was stopped, the watcher deletes the directory, so nothing is left behind.
# nats-server is installed from Debian's packages if missing (as root, as on CI, or
# through sudo where that needs no password).
set -euo pipefail

owner=${1:-$PPID}
wanted_port=${2:-}

if [ -n "$wanted_port" ] && ! { [[ $wanted_port =~ ^[0-9]{1,5}$ ]] &&
    [ "$wanted_port" -ge 1 ] && [ "$wanted_port" -le 65535 ]; }; then
    echo "start-nats: not a port: $wanted_port" >&2
    exit 1
fi

if ! command -v nats-server >/dev/null 2>&1; then
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
            echo "start-nats: nats-server is not installed and only root can install it: apt-get install nats-server" >&2
            exit 1
        fi
        as_root=(sudo -n)
    fi
    echo "start-nats: installing nats-server (apt-get install nats-server)" >&2
    # Only the program: on a machine run by systemd the package would otherwise start a
    # server of its own on port 4222, left running after the tests. A policy-rc.d that
    # says no stops that for this install (unless the machine already has one).
    # shellcheck disable=SC2016 # expanded by the root shell
    "${as_root[@]}" sh -c '
        set -e
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        policy=/usr/sbin/policy-rc.d
        if [ -e "$policy" ]; then
            apt-get install -y -qq nats-server
        else
            printf "#!/bin/sh\nexit 101\n" >"$policy"
            chmod 755 "$policy"
            status=0
            apt-get install -y -qq nats-server || status=$?
            rm -f "$policy"
            exit "$status"
        fi
    ' >&2
    if ! command -v nats-server >/dev/null 2>&1; then
        echo "start-nats: apt-get installed nats-server but it is not on PATH" >&2
        exit 1
    fi
fi
server_bin=$(command -v nats-server)

# Whether something listens on 127.0.0.1:$1.
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Whether the server on 127.0.0.1:$1 answers as NATS does: with its INFO line.
answers() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r -t 2 line <&3 || exit 1
        [[ $line == INFO\ * ]]
    ) 2>/dev/null
}

dir=
pid=
log=
cleanup_on_error() {
    if [ -n "$pid" ]; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if [ -n "$dir" ]; then
        rm -rf "$dir"
    fi
}
trap cleanup_on_error ERR

# Starts the server on port $1, in a fresh directory, under its watcher, and waits
# until it answers. Fails, with the server gone and its log in $log, if it exits first
# (as when the port is taken) or does not answer within 10 s.
start_on() {
    local port=$1
    dir=$(mktemp -d "${TMPDIR:-/tmp}/chat-nats.XXXXXX")
    pid=
    # The watcher outlives this script: detached from its stdout (the caller reads that
    # to its end) and its process group. It is the server's parent, so `wait` tells it
    # when the server exits (stopped by the tests, by the guard, or failing to start),
    # and the server's PID cannot be another process's until then. It deletes the
    # directory once both the server and this script are gone.
    # shellcheck disable=SC2016 # expanded by the watcher
    setsid bash -c '
        owner=$0 script=$1 dir=$2 port=$3 server_bin=$4
        "$server_bin" -a 127.0.0.1 -p "$port" -P "$dir/nats.pid" \
            </dev/null >"$dir/server.log" 2>&1 &
        server=$!
        echo "$server" >"$dir/pid.new"
        mv "$dir/pid.new" "$dir/pid"
        (
            # (Not kill -0, which fails for an owner run by another user.)
            while [ -e "/proc/$owner" ]; do sleep 1; done
            kill -TERM "$server" 2>/dev/null
        ) </dev/null >/dev/null 2>&1 &
        guard=$!
        wait "$server"
        kill "$guard" 2>/dev/null
        touch "$dir/exited"
        while kill -0 "$script" 2>/dev/null; do sleep 0.1; done
        rm -rf "$dir"
    ' "$owner" "$$" "$dir" "$port" "$server_bin" </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 200); do
        if [ -z "$pid" ] && [ -s "$dir/pid" ]; then
            pid=$(cat "$dir/pid")
        fi
        if [ -e "$dir/exited" ]; then
            break
        fi
        if [ -n "$pid" ] && answers "$port"; then
            return 0
        fi
        sleep 0.05
    done
    if [ -n "$pid" ]; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    log=$(cat "$dir/server.log" 2>/dev/null || true)
    rm -rf "$dir"
    dir=
    pid=
    return 1
}

started=
if [ -n "$wanted_port" ]; then
    port=$wanted_port
    # The port of a server just stopped may take a moment to be let go of.
    for _ in $(seq 1 100); do
        listening "$port" || break
        sleep 0.05
    done
    if start_on "$port"; then
        started=yes
    fi
else
    for _ in $(seq 1 20); do
        port=$((20000 + RANDOM % 40000))
        # A port something already listens on is taken; the server's own bind decides the rest.
        if listening "$port"; then
            continue
        fi
        if start_on "$port"; then
            started=yes
            break
        fi
    done
fi
if [ -z "$started" ]; then
    echo "start-nats: the server did not start on 127.0.0.1${wanted_port:+:$wanted_port}; its log:" >&2
    echo "$log" >&2
    exit 1
fi
trap - ERR

echo "pid $pid"
echo "nats://127.0.0.1:$port"
