#!/bin/sh
# A fleet on one machine: three hotsock processes behind HAProxy
# (deploy/haproxy.cfg), sharing rooms and key-value buckets through a Redis
# of their own, to try what docs/scaling.md describes.
#
#   deploy/fleet.sh start [HANDLER [OPTION...]]
#                                     start Redis, the three, then HAProxy on
#                                     127.0.0.1:50007; OPTIONs go to each
#                                     `hotsock serve` (e.g. --keyvalue chat)
#   deploy/fleet.sh status            each process's handler versions and connections
#   deploy/fleet.sh swap HANDLER      rolling swap: one process at a time, stopping at
#                                     the first that rejects it
#   deploy/fleet.sh upgrade           SIGUSR2 to each in turn: the hotsock binary now
#                                     on disk takes over, without dropping a connection
#   deploy/fleet.sh stop              stop HAProxy, drain the three, then stop Redis
#
# Run from the repository after `make build` (`make fleet` does both). State,
# logs, admin sockets and Redis's socket go to target/fleet/, Redis's
# append-only file to target/fleet/redis/.
set -eu

cd "$(dirname "$0")/.."
HOTSOCK=${HOTSOCK:-target/release/hotsock}
HANDLER=${2:-target/wasm32-wasip2/release/guest_handler.wasm}
DIR=target/fleet
PROCESSES="1 2 3"
# Absolute: redis-server moves into its --dir before it binds the socket.
REDIS_SOCK=$PWD/$DIR/redis.sock

admins() {
    for n in $PROCESSES; do printf ' --admin %s' "$DIR/hotsock$n.sock"; done
}

pid_of() { # the process serving admin socket $1 now (it changes on an upgrade)
    "$HOTSOCK" status --admin "$1" 2>/dev/null | sed -n 's/^process: //p'
}

redis_pid() { # the fleet's redis-server, if it runs
    pid=$(cat "$DIR/redis.pid" 2>/dev/null) || return 0
    if kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

wait_for_line() { # pid, file, text: up to 60 s, for a handler compiled afresh
    i=0
    until grep -q "$3" "$2" 2>/dev/null; do
        i=$((i + 1))
        if ! kill -0 "$1" 2>/dev/null || [ "$i" -gt 600 ]; then
            echo "$2 has no '$3': see ${2%.out}.log" >&2
            tail -n 3 "${2%.out}.log" >&2
            exit 1
        fi
        sleep 0.1
    done
}

case "${1:-}" in
start)
    command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || {
        echo "haproxy is not installed: run \`make setup\` (as root), or apt-get install haproxy" >&2
        exit 1
    }
    command -v redis-server >/dev/null || {
        echo "redis-server is not installed: run \`make setup\` (as root), or apt-get install redis-server" >&2
        exit 1
    }
    mkdir -p "$DIR/redis"
    for n in $PROCESSES; do
        if [ -n "$(pid_of "$DIR/hotsock$n.sock")" ]; then
            echo "hotsock$n is already running: \`$0 stop\` first" >&2
            exit 1
        fi
    done
    # The fleet's rooms and buckets: a Redis on a Unix socket only this user
    # can use, keeping what it acknowledges (appendonly) and every key
    # (noeviction). One left running by an earlier start is used again.
    if [ -z "$(redis_pid)" ]; then
        redis-server --port 0 --unixsocket "$REDIS_SOCK" --unixsocketperm 700 \
            --dir "$DIR/redis" --appendonly yes --maxmemory-policy noeviction \
            --save '' >>"$DIR/redis.log" 2>&1 &
        echo $! >"$DIR/redis.pid"
        i=0
        until redis-cli -s "$REDIS_SOCK" ping >/dev/null 2>&1; do
            i=$((i + 1))
            if [ -z "$(redis_pid)" ] || [ "$i" -gt 100 ]; then
                echo "redis-server did not start: see $DIR/redis.log" >&2
                tail -n 3 "$DIR/redis.log" >&2
                exit 1
            fi
            sleep 0.1
        done
    fi
    [ $# -gt 2 ] && shift 2 || set --
    pids=""
    for n in $PROCESSES; do
        "$HOTSOCK" serve "$HANDLER" "$@" \
            --rooms-store "unix://$REDIS_SOCK" \
            --keyvalue-store "unix://$REDIS_SOCK" \
            --proxy-protocol \
            --addr "127.0.0.1:5010$n" \
            --metrics "127.0.0.1:910$n" \
            --admin "$DIR/hotsock$n.sock" \
            --stop-delay 3s --drain-timeout 30s \
            >"$DIR/hotsock$n.out" 2>>"$DIR/hotsock$n.log" &
        pids="$pids $!"
    done
    n=0
    for pid in $pids; do
        n=$((n + 1))
        wait_for_line "$pid" "$DIR/hotsock$n.out" "admin listening on"
    done
    PATH="$PATH:/usr/sbin" haproxy -db -f deploy/haproxy.cfg 2>>"$DIR/haproxy.log" &
    echo $! >"$DIR/haproxy.pid"
    echo "three hotsock processes behind HAProxy on 127.0.0.1:50007, sharing rooms and buckets in the Redis at $REDIS_SOCK; logs in $DIR/"
    ;;
status)
    # shellcheck disable=SC2046
    "$HOTSOCK" status $(admins)
    ;;
swap)
    [ -n "${2:-}" ] || { echo "usage: $0 swap HANDLER" >&2; exit 2; }
    # shellcheck disable=SC2046
    "$HOTSOCK" swap $(admins) "$2"
    ;;
upgrade)
    for n in $PROCESSES; do
        old=$(pid_of "$DIR/hotsock$n.sock")
        [ -n "$old" ] || { echo "hotsock$n is not running" >&2; exit 1; }
        kill -USR2 "$old"
        i=0
        new=$old
        while [ "$new" = "$old" ] || [ -z "$new" ]; do
            i=$((i + 1))
            if [ "$i" -gt 600 ]; then
                echo "hotsock$n: not upgraded after 60s; see $DIR/hotsock$n.log" >&2
                exit 1
            fi
            sleep 0.1
            new=$(pid_of "$DIR/hotsock$n.sock")
        done
        # The old process serves its open connections until they end:
        # `stop` stops it too.
        echo "$old" >>"$DIR/draining.pids"
        echo "hotsock$n: process $old -> $new; $old serves its open connections until they end"
    done
    ;;
stop)
    if [ -f "$DIR/haproxy.pid" ]; then
        kill "$(cat "$DIR/haproxy.pid")" 2>/dev/null || true
        rm -f "$DIR/haproxy.pid"
    fi
    pids=""
    for n in $PROCESSES; do
        pid=$(pid_of "$DIR/hotsock$n.sock")
        [ -n "$pid" ] && kill -TERM "$pid" && pids="$pids $pid"
    done
    # Processes an upgrade replaced, still serving their last connections.
    if [ -f "$DIR/draining.pids" ]; then
        for pid in $(cat "$DIR/draining.pids"); do
            kill -TERM "$pid" 2>/dev/null && pids="$pids $pid"
        done
        rm -f "$DIR/draining.pids"
    fi
    echo "stopping; each process drains its open connections (up to 3s + 30s)"
    for pid in $pids; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    done
    # Only now: a hotsock that exits takes its members out of Redis.
    pid=$(redis_pid)
    if [ -n "$pid" ]; then
        kill -TERM "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$DIR/redis.pid"
    ;;
*)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
