#!/usr/bin/env bash
# Instructions per request of two keygate binaries, counted by valgrind (callgrind): a
# deterministic A/B for changes too small for CPU time on a shared machine (bench/ab.sh's
# noise is a few percent).
#   bench/ab-instructions.sh OLD_BINARY NEW_BINARY
# Each binary runs make bench's config (bench_config) under callgrind; after BENCH_WARMUP
# (default 2s) of wrk traffic the counts are zeroed, and after BENCH_DURATION (default 10s)
# more they are dumped: the instructions executed (all threads) divided by the requests wrk
# completed in that time. Needs valgrind, nginx and wrk.
set -euo pipefail
KEEP="${BENCH_KEEP:-}"
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
OLD="$(realpath "$1")"; NEW="$(realpath "$2")"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-2s}"
work="$(mktemp -d)"; [ -n "$KEEP" ] && echo "work: $work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "$KEEP" ] || rm -rf "$work"; }
trap cleanup EXIT
. bench/common.sh

nginx_upstream "$work"

declare -A PER
for name in old new; do
  port=$(free_port); admin=$(free_port)
  bench_config "$work" "$name" "$port" "$UP" "$admin"
  bin="$OLD"; [ "$name" = new ] && bin="$NEW"
  RUST_LOG=warn valgrind --tool=callgrind \
    --callgrind-out-file="$work/$name.cg" "$bin" serve -c "$work/$name.yaml" \
    > "$work/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  url="http://127.0.0.1:$port/openai/v1/chat/completions"
  BEARER="$(cat "$work/bearer")" wrk -t1 -c4 -d"$WARMUP" -s bench/post.lua "$url" > /dev/null
  callgrind_control -z "$pid" > /dev/null
  out="$(BEARER="$(cat "$work/bearer")" wrk -t1 -c4 -d"$DURATION" -s bench/post.lua "$url")"
  if echo "$out" | grep -q "Non-2xx"; then echo "$name: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
  n="$(echo "$out" | awk '/requests in/ {print $1}')"
  callgrind_control -d "$pid" > /dev/null
  sleep 1
  ir="$(cat "$work/$name.cg".* | awk '/^summary:/ {s += $2} END {print s}')"
  PER[$name]="$(python3 -c "import sys; print(round(int(sys.argv[1]) / int(sys.argv[2])))" "$ir" "$n")"
  echo "$name: $n requests, ${PER[$name]} instructions/request"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
python3 -c "import sys; o,n=map(int,sys.argv[1:]); print(f'new/old instructions per request: {n/o:.4f}')" "${PER[old]}" "${PER[new]}"
