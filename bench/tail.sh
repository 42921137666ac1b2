#!/usr/bin/env bash
# The tail (issue 30): where do keygate's slow requests come from? k6 at a fixed rate
# (BENCH_RATE, default 1,000 signed requests a second, BENCH_K6_DURATION each, default 15s)
# against one nginx upstream, direct and through the bare Pingora proxy and keygate, each
# with Pingora's work stealing on (`steal`) and off (`nosteal`: keygate's default, a worker
# per thread; the bare proxy run the same way, its `perthread` mode), in
# BENCH_ROUNDS alternating rounds (default 3). Per run: p50 / p99 / p99.9, and the upstream
# connections opened during it (nginx stub_status, less k6's own for `direct`): a request
# that finds no pooled connection pays a connect. Each run follows a warm-up of the same load
# (k6_warm, BENCH_K6_WARMUP): a run measures the steady state, not the reconnects after a
# proxy sat idle for its turn (keygate's pooled connections expire after 60 s idle).
#   bench/tail.sh [KEYGATE_BINARY]      (default target/release/keygate)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
BIN="$(realpath "${1:-target/release/keygate}")"
ROUNDS="${BENCH_ROUNDS:-3}"
RATE="${BENCH_RATE:-1000}"
. bench/common.sh
bench_setup

UP=$(free_port); UPSTAT=$(free_port)
nginx_conf "$work" "$UP" "$(stub_status "$UPSTAT")" > "$work/nginx.conf"
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
wait_port "$UP"

declare -A URLS
for steal in steal nosteal; do
  port=$(free_port)
  mode=steal; [ "$steal" = steal ] || mode=perthread
  target/release/examples/bare_proxy "127.0.0.1:$port" "127.0.0.1:$UP" 2 "$mode" > "$work/bare-$steal.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
  URLS[pingora_$steal]="http://127.0.0.1:$port/v1/chat/completions"
  port=$(free_port); admin=$(free_port)
  bench_config "$work" "kg-$steal" "$port" "$UP" "$admin"
  # A signing key for k6 (bench.k1) beside the bearer key, and the work-stealing setting.
  [ -f "$work/site.secret" ] || { python3 -c 'import secrets; print("kgs_" + secrets.token_urlsafe(24), end="")' > "$work/site.secret"; chmod 600 "$work/site.secret"; }
  python3 - "$work/kg-$steal.yaml" "$work/site.secret" "$([ "$steal" = steal ] && echo true || echo false)" <<'PY'
import sys
path, secret, steal = sys.argv[1:]
text = open(path).read()
text = text.replace("  threads: 2\n", f"  threads: 2\n  work_stealing: {steal}\n", 1)
text = text.replace("    keys:\n", f'    keys:\n      - {{ id: bench.k1, auth: hmac, secret: "file:{secret}" }}\n', 1)
open(path, "w").write(text)
PY
  RUST_LOG=warn "$BIN" serve -c "$work/kg-$steal.yaml" > "$work/kg-$steal.log" 2>&1 &
  pids+=($!)
  wait_ready "$admin" "$!" "$work/kg-$steal.log"
  URLS[keygate_$steal]="http://127.0.0.1:$port/openai/v1/chat/completions"
done
URLS[direct]="http://127.0.0.1:$UP/v1/chat/completions"

ORDER=(direct pingora_steal pingora_nosteal keygate_steal keygate_nosteal)
declare -A ALL
for round in $(seq "$ROUNDS"); do
  for t in "${ORDER[@]}"; do
    k6_warm "$t" "${URLS[$t]}" "$RATE" bench/latency.js
    a0="$(upstream_count accepts)"
    k6_fixed "$t" "${URLS[$t]}" "$RATE" bench/latency.js "$work/k6.json"
    conns=$(($(upstream_count accepts) - a0 - 1))
    read -r p50 p99 p999 _ failed < <(k6_latency "$work/k6.json")
    [ "${failed%.*}" = 0 ] || { echo "$t: $failed failed checks" >&2; exit 1; }
    echo "round $round $t: p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms, upstream connections opened $conns"
    ALL[$t]+="$p50 $p99 $p999 $conns;"
  done
done

python3 - <<PY
med = {l.split()[0]: list(map(float, l.split()[1:])) for l in """$(medians "${ORDER[@]}")""".strip().splitlines()}
d = med["direct"]
print()
print(f"k6 at $RATE signed req/s, median of $ROUNDS rounds each (added = over direct's median)")
print("| path | p50 ms | p99 ms | p99.9 ms | added p99 | added p99.9 | upstream connections opened |")
print("|---|---|---|---|---|---|---|")
for t, (p50, p99, p999, c) in med.items():
    print(f"| {t} | {p50:.2f} | {p99:.2f} | {p999:.2f} | {p99 - d[1]:.2f} | {p999 - d[2]:.2f} | {c:.0f} |")
for s in ["steal", "nosteal"]:
    k, b = med[f"keygate_{s}"], med[f"pingora_{s}"]
    print(f"{s}: keygate / bare Pingora added p99 {(k[1] - d[1]) / (b[1] - d[1]):.2f}, added p99.9 {(k[2] - d[2]) / (b[2] - d[2]):.2f}")
PY
