#!/usr/bin/env bash
# The engine ceiling (issue 30): where the bare Pingora proxy (and keygate) spend more than
# nginx proxy_pass per request. One nginx upstream of its own (stub_status counts the
# requests that reach it); through nginx proxy_pass (one worker, keep-alive upstream), the
# bare Pingora proxy (2 threads) and keygate (make bench's config), each under the same wrk
# load (-t1 -c32 POSTs, plain HTTP). Per request, from `perf stat` on the proxy process
# during BENCH_CEILING_WINDOW seconds (default 5) of that load: CPU time (task-clock),
# system calls, context switches; then, in a second window, allocations: calls to glibc's
# malloc and to mimalloc's entry points in the Pingora binaries (keygate's global allocator,
# which the bare proxy shares; OpenSSL still uses glibc's), uprobes: they slow the process,
# so they get a window of their own. This VM exposes no hardware
# counters (cycles, instructions), so CPU time stands for them. Needs root (perf probe).
# BENCH_ROUNDS rounds (default 2), targets alternating; every round is printed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
WINDOW="${BENCH_CEILING_WINDOW:-5}"
ROUNDS="${BENCH_ROUNDS:-2}"
. bench/common.sh
bench_setup
libc="$(ldconfig -p | awk '/libc.so.6 .*x86-64/ {print $NF; exit}')"
trap 'perf probe -q -d "probe_libc:malloc" -d "alloc:*" 2>/dev/null || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT
perf probe -q -x "$libc" --add malloc
declare -A ALLOCS=([nginx]=probe_libc:malloc)
for t in keygate:target/release/keygate pingora:target/release/examples/bare_proxy; do
  bin="${t#*:}"; event="alloc:${t%%:*}_"
  ALLOCS[${t%%:*}]=probe_libc:malloc
  for f in mi_malloc_aligned mi_zalloc_aligned; do
    perf probe -q -x "$bin" --add "$event$f=$f"
    ALLOCS[${t%%:*}]+=",$event$f"
  done
done

UP=$(free_port); UPSTAT=$(free_port)
mkdir -p "$work/up"
nginx_conf "$work/up" "$UP" "$(stub_status "$UPSTAT")" > "$work/up/nginx.conf"
nginx -c "$work/up/nginx.conf" -p "$work/up" &
pids+=($!)
wait_port "$UP"

NGX=$(free_port); NGX_UNUSED=$(free_port)
mkdir -p "$work/ngx"
nginx_conf "$work/ngx" "$NGX_UNUSED" "  upstream up { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 100000000; }
  server { listen 127.0.0.1:$NGX; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" > "$work/ngx/nginx.conf"
nginx -c "$work/ngx/nginx.conf" -p "$work/ngx" &
ngxmaster=$!
pids+=($ngxmaster)
wait_port "$NGX"

BARE=$(free_port)
target/release/examples/bare_proxy "127.0.0.1:$BARE" "127.0.0.1:$UP" 2 > "$work/bare.log" 2>&1 &
barepid=$!
pids+=($barepid)
wait_port "$BARE"

KG=$(free_port); ADMIN=$(free_port)
bench_config "$work" kg "$KG" "$UP" "$ADMIN"
RUST_LOG=warn target/release/keygate serve -c "$work/kg.yaml" > "$work/kg.log" 2>&1 &
kgpid=$!
pids+=($kgpid)
wait_ready "$ADMIN" "$kgpid" "$work/kg.log"

declare -A URLS=(
  [nginx]="http://127.0.0.1:$NGX/v1/chat/completions"
  [pingora]="http://127.0.0.1:$BARE/v1/chat/completions"
  [keygate]="http://127.0.0.1:$KG/openai/v1/chat/completions"
)
declare -A PROC=([nginx]="$(pgrep -P "$ngxmaster" | head -1)" [pingora]="$barepid" [keygate]="$kgpid")

# window PID EVENTS: perf stat of PID over one window, each event's count, comma-separated,
# then the requests the upstream answered meanwhile.
window() {
  local s0 s1 counts
  s0="$(upstream_count requests)"
  counts="$(perf stat -x, -e "$2" -p "$1" -- sleep "$WINDOW" 2>&1 >/dev/null | awk -F, '{printf "%s,", $1}')"
  s1="$(upstream_count requests)"
  echo "$counts$((s1 - s0 - 1))"
}

declare -A ALL
for round in $(seq "$ROUNDS"); do
  for t in nginx pingora keygate; do
    bearer=""; [ "$t" = keygate ] && bearer="$(cat "$work/bearer")"
    BEARER="$bearer" wrk -t1 -c32 -d"$((2 * WINDOW + 3))s" -s bench/post.lua "${URLS[$t]}" > "$work/wrk.txt" &
    wrkpid=$!
    sleep 1
    IFS=, read -r clock syscalls switches n < <(window "${PROC[$t]}" task-clock,raw_syscalls:sys_enter,context-switches)
    read -r mallocs m < <(window "${PROC[$t]}" "${ALLOCS[$t]}" | python3 -c "import sys; c = sys.stdin.read().split(','); print(sum(map(float, c[:-1])), c[-1])")
    wait "$wrkpid"
    grep -q "Non-2xx" "$work/wrk.txt" && { echo "$t: non-2xx responses" >&2; cat "$work/wrk.txt" >&2; exit 1; }
    row="$(python3 -c "import sys; c, s, x, n, a, m = map(float, sys.argv[1:]); print(f'{c * 1000 / n:.1f} {s / n:.2f} {x / n:.3f} {a / m:.1f} {n / $WINDOW:.0f}')" "$clock" "$syscalls" "$switches" "$n" "$mallocs" "$m")"
    read -r us sc cs ma rps <<< "$row"
    echo "round $round $t: $rps req/s; per request: CPU $us µs, $sc syscalls, $cs context switches, $ma mallocs"
    ALL[$t]+="$row;"
  done
done

python3 - <<PY
med = {l.split()[0]: list(map(float, l.split()[1:])) for l in """$(medians nginx pingora keygate)""".strip().splitlines()}
print()
print("per request, median of $ROUNDS rounds (wrk -t1 -c32, plain HTTP)")
print("| path | req/s | CPU µs | syscalls | context switches | mallocs |")
print("|---|---|---|---|---|---|")
for t, (us, sc, cs, ma, rps) in med.items():
    print(f"| {t} | {rps:.0f} | {us:.1f} | {sc:.2f} | {cs:.3f} | {ma:.1f} |")
n, b = med["nginx"], med["pingora"]
print(f"bare Pingora / nginx: CPU {b[0] / n[0]:.2f}x, syscalls {b[1] / n[1]:.2f}x, context switches {b[2] / max(n[2], 1e-9):.1f}x, mallocs {b[3] / max(n[3], 1e-9):.1f}x")
PY
