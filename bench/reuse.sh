#!/usr/bin/env bash
# Upstream connection reuse: bench/reuse.sh BINARY [BINARY...]
# Each binary in turn runs make bench's config (bearer auth, 10,000 sites, 2 threads) in front
# of one keep-alive nginx upstream; wrk at 1 and at 32 connections for
# 5 s each (after a 2 s warm-up at 32). Reports req/s, CPU per request (from /proc), the
# upstream connections keygate opened (the machine's new TCP connections, nstat
# TcpActiveOpens, less wrk's own) and how many pooled
# connections Pingora gave up ("failed to acquire reusable stream" in keygate's log,
# cloudflare/pingora#998: README "Upstream connection reuse"). BENCH_REUSE_ROUNDS (default 1)
# repeats the binaries in turn. Needs nginx, wrk and nstat (make bench installs the first two).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. bench/common.sh
binaries_against_nginx "$@"
# nstat's counts since its last call, kept apart from any other nstat user's.
export NSTAT_HISTORY="$work/nstat.history"
for round in $(seq "${BENCH_REUSE_ROUNDS:-1}"); do
  for bin in "$@"; do
    port=$(free_port); admin=$(free_port)
    bench_config "$work" kg "$port" "$UP" "$admin"
    RUST_LOG=warn "$bin" serve -c "$work/kg.yaml" > "$work/kg.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_port "$port"
    url="http://127.0.0.1:$port/openai/v1/chat/completions"
    BEARER="$(cat "$work/bearer")" wrk -t1 -c32 -d2s -s bench/post.lua "$url" > /dev/null
    for c in 1 32; do
      lost0=$(grep -c "failed to acquire reusable stream" "$work/kg.log" || true)
      nstat -n > /dev/null
      t0=$(cpu_ticks "$pid")
      out=$(BEARER="$(cat "$work/bearer")" wrk -t1 -c$c -d5s -s bench/post.lua "$url")
      t1=$(cpu_ticks "$pid")
      opens=$(nstat -z TcpActiveOpens | awk '/TcpActiveOpens/ {print $2}')
      lost1=$(grep -c "failed to acquire reusable stream" "$work/kg.log" || true)
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      if [ "${reqs:-0}" -eq 0 ] || echo "$out" | grep -q "Non-2xx"; then
        echo "$bin -c$c: requests failed or none completed:" >&2; echo "$out" >&2; exit 1
      fi
      echo "$bin -c$c: $((reqs / 5)) req/s, CPU $(cpu_us_per_request "$t0" "$t1" "$reqs") µs/request, upstream connections opened in 5 s $((opens - c)) (new TCP connections less wrk's own), pooled connections given up $((lost1 - lost0))"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
