#!/usr/bin/env bash
# Same-run A/B of two keygate binaries (e.g. main before and after a change):
#   bench/ab.sh OLD_BINARY NEW_BINARY
# One nginx upstream serving a fixed chat completion; both binaries run the same config
# (make bench's: bearer auth, limits, validation, egress scan, metrics, audit log, 10,000
# sites), each on its own port; wrk rounds alternate between them (BENCH_ROUNDS, default 4,
# of BENCH_DURATION, default 10s). Reports req/s and CPU time per request (user + system,
# from /proc: steadier than req/s on a shared machine) per round and the best of each, and
# the new/old ratio. Needs nginx and wrk (make bench installs them).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
OLD="$(realpath "$1")"; NEW="$(realpath "$2")"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DURATION="${BENCH_DURATION:-10s}"
ROUNDS="${BENCH_ROUNDS:-4}"
. bench/common.sh
bench_setup

nginx_upstream "$work"

declare -A PORT PID
for name in old new; do
  PORT[$name]=$(free_port); admin=$(free_port)
  bench_config "$work" "$name" "${PORT[$name]}" "$UP" "$admin"
  bin="$OLD"; [ "$name" = new ] && bin="$NEW"
  RUST_LOG=warn "$bin" serve -c "$work/$name.yaml" > "$work/$name.log" 2>&1 &
  PID[$name]=$!
  pids+=("${PID[$name]}")
  wait_port "${PORT[$name]}"
done
BEARER="$(cat "$work/bearer")"
declare -A BEST_CPU BEST_RPS
for round in $(seq "$ROUNDS"); do
  for name in old new; do
    c0="$(cpu_ticks "${PID[$name]}")"
    out="$(BEARER="$BEARER" wrk -t1 -c32 -d"$DURATION" -s bench/post.lua "http://127.0.0.1:${PORT[$name]}/openai/v1/chat/completions")"
    if echo "$out" | grep -q "Non-2xx"; then echo "$name: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
    n="$(echo "$out" | awk '/requests in/ {print $1}')"
    rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
    cpu="$(cpu_us_per_request "$c0" "$(cpu_ticks "${PID[$name]}")" "$n")"
    echo "round $round $name: $rps req/s, CPU $cpu µs/request"
    python3 -c "import sys; sys.exit(0 if sys.argv[2]=='' or float(sys.argv[1])<float(sys.argv[2]) else 1)" "$cpu" "${BEST_CPU[$name]:-}" && BEST_CPU[$name]=$cpu
    python3 -c "import sys; sys.exit(0 if sys.argv[2]=='' or float(sys.argv[1])>float(sys.argv[2]) else 1)" "$rps" "${BEST_RPS[$name]:-}" && BEST_RPS[$name]=$rps
  done
done
echo "best old: ${BEST_RPS[old]} req/s, CPU ${BEST_CPU[old]} µs/request"
echo "best new: ${BEST_RPS[new]} req/s, CPU ${BEST_CPU[new]} µs/request"
python3 -c "import sys; o,n,ro,rn=map(float,sys.argv[1:]); print(f'new/old: CPU per request {n/o:.3f}, req/s {rn/ro:.3f}')" "${BEST_CPU[old]}" "${BEST_CPU[new]}" "${BEST_RPS[old]}" "${BEST_RPS[new]}"
