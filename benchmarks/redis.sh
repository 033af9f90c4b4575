#!/usr/bin/env bash
# Redis over a unix socket vs over TCP loopback, with a real redis-server.
#
# Reproduces the number the source documents quote (Redis over a unix socket is about
# 1.5x TCP loopback): `redis-benchmark -q -t ping,set,get -d 256` against one
# redis-server listening on 127.0.0.1 and on a socket file in a fresh temp directory.
# The two targets alternate within each round (the machine is shared); the medians over
# rounds and the unix/TCP ratio are printed. The server is started here and killed by
# its PID on exit, also on Ctrl-C; the temp directory goes with it.
#
#   benchmarks/redis.sh            # N=100000 requests per test, ROUNDS=3
#   N=20000 ROUNDS=5 benchmarks/redis.sh
set -euo pipefail

N=${N:-100000}
ROUNDS=${ROUNDS:-3}
for tool in redis-server redis-benchmark redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "redis.sh: $tool not found (run \`make peers\`)" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/udskit-redis.XXXXXX)
sock="$tmp/redis.sock"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free port on 127.0.0.1 (the kernel picks it; nothing else listens there after).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

redis-server --bind 127.0.0.1 --port "$port" --unixsocket "$sock" --unixsocketperm 700 \
    --save '' --appendonly no --daemonize no --dir "$tmp" --logfile "$tmp/redis.log" &
server_pid=$!
for _ in $(seq 200); do
    if [[ -S "$sock" ]] && redis-cli -s "$sock" ping >/dev/null 2>&1; then break; fi
    kill -0 "$server_pid" 2>/dev/null || { echo "redis.sh: redis-server exited:" >&2; cat "$tmp/redis.log" >&2; exit 1; }
    sleep 0.05
done
redis-cli -s "$sock" ping >/dev/null

run() {  # run TARGET: one redis-benchmark pass, lines "TARGET TEST RPS"
    local target=$1 where
    if [[ $target == tcp ]]; then where=(-h 127.0.0.1 -p "$port"); else where=(-s "$sock"); fi
    timeout 300 redis-benchmark "${where[@]}" -q -t ping,set,get -d 256 -n "$N" |
        tr '\r' '\n' | grep 'requests per second' |
        awk -v t="$target" -F': ' '{ split($2, f, " "); print t, $1, f[1] }'
}

results="$tmp/results"
: >"$results"
echo "redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2), -n $N, $ROUNDS rounds; 127.0.0.1:$port vs $sock" >&2
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order=(tcp unix); else order=(unix tcp); fi
    for target in "${order[@]}"; do
        run "$target" >>"$results"
    done
    echo "round $r/$ROUNDS done" >&2
done

python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
tests = list(dict.fromkeys(name for _t, name, _v in rows))
rps = {(t, name): [] for t, name, _v in rows}
for t, name, value in rows:
    rps[(t, name)].append(float(value))
print(f"{'test':<14}{'tcp req/s':>14}{'unix req/s':>14}{'unix/tcp':>10}")
ratios = []
for name in tests:
    tcp = statistics.median(rps[("tcp", name)])
    unix = statistics.median(rps[("unix", name)])
    ratios.append(unix / tcp)
    print(f"{name:<14}{tcp:>14,.0f}{unix:>14,.0f}{unix / tcp:>9.2f}x")
print(f"median unix/tcp ratio: {statistics.median(ratios):.2f}x (the documents quote about 1.5x)")
PY
