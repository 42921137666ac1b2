#!/usr/bin/env bash
# Production-shaped runs (issue 30), run by `make bench`: TLS from the client and https to the
# upstream. One TLS upstream (nginx serving make bench's fixed chat completion over https,
# HTTP/1.1 and HTTP/2, a process of its own) reached direct and through three proxies, each
# in a process of its own:
#   nginx    proxy_pass (one worker, `listen ssl http2`, upstream https verified against the
#            test CA, keep-alive upstream connections kept for 100,000,000 requests rather than
#            nginx's default 1,000, TLS session reuse)
#   pingora  the bare Pingora proxy (examples/bare_proxy.rs with BARE_TLS_DIR: TLS listener
#            with HTTP/2, upstream https verified against the CA; 2 threads)
#   keygate  make bench's config (bearer auth, full chain, 10,000 sites) with a TLS listener
#            and the upstream over https with `ca:` and a pin of its key
# Client shapes, each for every target in turn, BENCH_ROUNDS rounds (default 2):
#   h1     wrk -t1 -c32 over TLS, keep-alive (HTTP/1.1)
#   h2     h2load -t1 -c8 -m4 (HTTP/2 over TLS, 4 concurrent streams per connection)
#   churn  wrk -t1 -c32 over TLS, every BENCH_CHURN-th request (default 4) with
#          `Connection: close`: a new connection and a full TLS handshake every few requests
# Reports req/s, latency, each proxy's CPU per request (best round) and the connections the
# upstream accepted during the run (nginx stub_status: the proxy's new upstream connections,
# each a TLS handshake; for `direct`, the client's own), with ratios in the same run; writes
# target/bench/tls.json. Certificates are made at run time (certs/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DURATION="${BENCH_TLS_DURATION:-8}"
ROUNDS="${BENCH_ROUNDS:-2}"
CHURN="${BENCH_CHURN:-4}"
. bench/common.sh
bench_setup
mkdir -p target/bench
certs="$work/certs"
certs/gen-test-certs.sh "$certs" > /dev/null
ssl="ssl_certificate $certs/server.crt; ssl_certificate_key $certs/server.key;"

# The upstream: make bench's nginx with an https server beside its plain one.
UP=$(free_port); UPS=$(free_port); UPSTAT=$(free_port)
mkdir -p "$work/up"
nginx_conf "$work/up" "$UP" "  server { listen 127.0.0.1:$UPS ssl http2; $ssl keepalive_requests 100000000;
    default_type application/json; location / { return 200 '$COMPLETION'; } }
$(stub_status "$UPSTAT")" > "$work/up/nginx.conf"
nginx -c "$work/up/nginx.conf" -p "$work/up" &
pids+=($!)
wait_port "$UPS"

# nginx proxy_pass over TLS on both sides.
NGX=$(free_port); NGX_UNUSED=$(free_port)
mkdir -p "$work/ngx"
nginx_conf "$work/ngx" "$NGX_UNUSED" "  upstream up { server 127.0.0.1:$UPS; keepalive 128; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:$NGX ssl http2; $ssl keepalive_requests 100000000;
    location / {
      proxy_pass https://up; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_ssl_verify on; proxy_ssl_trusted_certificate $certs/ca.crt; proxy_ssl_name localhost;
      proxy_ssl_server_name on; proxy_ssl_session_reuse on;
    }
  }" > "$work/ngx/nginx.conf"
nginx -c "$work/ngx/nginx.conf" -p "$work/ngx" &
ngxmaster=$!
pids+=($ngxmaster)
wait_port "$NGX"
ngxworker="$(pgrep -P "$ngxmaster" | head -1)"

BARE=$(free_port)
BARE_TLS_DIR="$certs" target/release/examples/bare_proxy "127.0.0.1:$BARE" "127.0.0.1:$UPS" 2 > "$work/bare.log" 2>&1 &
barepid=$!
pids+=($barepid)
wait_port "$BARE"

# keygate: make bench's config, TLS on the listener, the upstream over https with a pin.
KG=$(free_port); ADMIN=$(free_port)
bench_config "$work" kg "$KG" "$UP" "$ADMIN"
pin="sha256/$(openssl x509 -in "$certs/server.crt" -pubkey -noout | openssl pkey -pubin -outform der \
  | openssl dgst -sha256 -binary | base64)"
# BENCH_WORK_STEALING=true|false sets keygate's server.work_stealing (default: keygate's own).
python3 - "$work/kg.yaml" "$KG" "$UP" "$UPS" "$certs" "$pin" "${BENCH_WORK_STEALING:-}" <<'PY'
import sys
path, kg, up, ups, certs, pin, steal = sys.argv[1:]
text = open(path).read()
listen = f'listen: [{{ addr: "127.0.0.1:{kg}" }}]'
url = f'url: "http://127.0.0.1:{up}"'
assert listen in text and url in text
text = text.replace(listen, f'listen: [{{ addr: "127.0.0.1:{kg}", tls: {{ cert: {certs}/server.crt, key: {certs}/server.key }} }}]')
text = text.replace(url, f'url: "https://localhost:{ups}"\n    ca: {certs}/ca.crt\n    pins: ["{pin}"]')
if steal:
    text = text.replace("  threads: 2\n", f"  threads: 2\n  work_stealing: {steal}\n", 1)
open(path, "w").write(text)
PY
RUST_LOG=warn target/release/keygate serve -c "$work/kg.yaml" > "$work/kg.log" 2>&1 &
kgpid=$!
pids+=($kgpid)
wait_ready "$ADMIN" "$kgpid" "$work/kg.log"
BEARER="$(cat "$work/bearer")"

declare -A URLS=(
  [direct]="https://127.0.0.1:$UPS/v1/chat/completions"
  [nginx]="https://127.0.0.1:$NGX/v1/chat/completions"
  [pingora]="https://127.0.0.1:$BARE/v1/chat/completions"
  [keygate]="https://127.0.0.1:$KG/openai/v1/chat/completions"
)
declare -A PROC=([nginx]="$ngxworker" [pingora]="$barepid" [keygate]="$kgpid")
# Every path answers the upstream's completion (keygate over https with its pin).
for t in direct nginx pingora keygate; do
  auth=(); [ "$t" = keygate ] && auth=(-H "Authorization: Bearer $BEARER")
  reply="$(curl -sk --http1.1 "${auth[@]}" -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' "${URLS[$t]}")"
  case "$reply" in *"Hello from nginx."*) ;; *) echo "$t: unexpected reply: $reply" >&2; cat "$work/kg.log" >&2; exit 1 ;; esac
done
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' > "$work/body.json"

# run SHAPE TARGET: one measurement; prints "req/s p50_ms p99_ms requests" (h2load: mean
# latency as p50, no p99) and fails on any non-2xx or failed request.
run() {
  local shape="$1" t="$2" bearer=""
  [ "$t" = keygate ] && bearer="$BEARER"
  case "$shape" in
    h1 | churn)
      local churn=0; [ "$shape" = churn ] && churn="$CHURN"
      local out
      out="$(BEARER="$bearer" CHURN="$churn" wrk -t1 -c32 -d"${DURATION}s" --latency -s bench/post.lua "${URLS[$t]}")"
      if echo "$out" | grep -q "Non-2xx"; then echo "$shape $t: non-2xx responses" >&2; echo "$out" >&2; return 1; fi
      python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
ms = lambda v, u: float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
p = {k: ms(v, u) for k, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)}
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
n = int(re.search(r"(\d+) requests in", out).group(1))
print(rps, p["50"], p["99"], n)
PY
      ;;
    h2)
      local auth=(); [ -n "$bearer" ] && auth=(-H "authorization: Bearer $bearer")
      local out
      out="$(h2load -D "$DURATION" -t1 -c8 -m4 -d "$work/body.json" -H 'content-type: application/json' "${auth[@]}" "${URLS[$t]}")"
      python3 - "$out" "$shape $t" <<'PY'
import re, sys
out, name = sys.argv[1], sys.argv[2]
done, ok = map(int, re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out).groups())
two = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
# (2xx may exceed done: requests that finished after the measured window)
if done == 0 or ok != done or two < done:
    sys.exit(f"{name}: {done} done, {ok} succeeded, {two} 2xx\n{out}")
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
m = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
mean = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
print(rps, mean, "nan", done)
PY
      ;;
  esac
}

declare -A RPS P50 P99 CPU CONNS
for shape in h1 h2 churn; do
  for round in $(seq "$ROUNDS"); do
    for t in direct nginx pingora keygate; do
      pid="${PROC[$t]:-}"; [ -n "$pid" ] && c0="$(cpu_ticks "$pid")"
      a0="$(upstream_count accepts)"
      read -r rps p50 p99 n < <(run "$shape" "$t") || exit 1
      cpu=""
      [ -n "$pid" ] && cpu="$(cpu_us_per_request "$c0" "$(cpu_ticks "$pid")" "$n")"
      conns=$(($(upstream_count accepts) - a0 - 1))
      echo "$shape round $round $t: $rps req/s, p50 $p50 ms, p99 $p99 ms${cpu:+, CPU $cpu µs/request}, upstream accepted $conns connections for $n requests"
      k="$shape/$t"
      if [ -z "${RPS[$k]:-}" ] || python3 -c "import sys; sys.exit(0 if float(sys.argv[1])>float(sys.argv[2]) else 1)" "$rps" "${RPS[$k]}"; then
        RPS[$k]=$rps; P50[$k]=$p50; P99[$k]=$p99; CONNS[$k]=$conns
      fi
      if [ -n "$cpu" ] && { [ -z "${CPU[$k]:-}" ] || python3 -c "import sys; sys.exit(0 if float(sys.argv[1])<float(sys.argv[2]) else 1)" "$cpu" "${CPU[$k]}"; }; then
        CPU[$k]=$cpu
      fi
    done
  done
done

rows=""
for k in "${!RPS[@]}"; do rows+="$k ${RPS[$k]} ${P50[$k]} ${P99[$k]} ${CPU[$k]:-nan} ${CONNS[$k]}"$'\n'; done
python3 - "$CHURN" <<PY
import json, sys
rows = [l.split() for l in """$rows""".strip().splitlines()]
res = {}
for k, rps, p50, p99, cpu, conns in rows:
    shape, t = k.split("/")
    res.setdefault(shape, {})[t] = {"rps": float(rps), "p50_ms": float(p50), "p99_ms": float(p99), "cpu_us_per_request": float(cpu), "upstream_connections": int(conns)}
for shape, r in res.items():
    r["ratios"] = {"keygate/pingora": r["keygate"]["rps"] / r["pingora"]["rps"], "keygate/nginx": r["keygate"]["rps"] / r["nginx"]["rps"],
                   "cpu pingora/keygate": r["pingora"]["cpu_us_per_request"] / r["keygate"]["cpu_us_per_request"],
                   "cpu nginx/keygate": r["nginx"]["cpu_us_per_request"] / r["keygate"]["cpu_us_per_request"]}
json.dump(res, open("target/bench/tls.json", "w"), indent=2)
title = {"h1": "HTTP/1.1 over TLS, keep-alive (wrk -t1 -c32)", "h2": "HTTP/2 over TLS (h2load -t1 -c8 -m4; mean latency)",
         "churn": f"HTTP/1.1 over TLS, a new connection every {sys.argv[1]} requests (wrk -t1 -c32)"}
for shape in ["h1", "h2", "churn"]:
    r = res[shape]
    print()
    print(f"{title[shape]}, upstream https (keygate: pinned)")
    print("| path | req/s | p50 ms | p99 ms | CPU µs/request | upstream accepted |")
    print("|---|---|---|---|---|---|")
    for t in ["direct", "nginx", "pingora", "keygate"]:
        v = r[t]
        print(f"| {t} | {v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['cpu_us_per_request']:.0f} | {v['upstream_connections']} |")
    q = r["ratios"]
    print(f"keygate / bare Pingora {q['keygate/pingora']:.2f}, keygate / nginx {q['keygate/nginx']:.2f}; CPU bare / keygate {q['cpu pingora/keygate']:.2f}, nginx / keygate {q['cpu nginx/keygate']:.2f}")
print("written: target/bench/tls.json")
PY
