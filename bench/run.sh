#!/usr/bin/env bash
# make bench: one upstream (nginx serving a fixed chat completion) reached, alternating, in
# one run: direct; through nginx proxy_pass; through a bare Pingora proxy (the engine's
# ceiling, with work stealing, and `pingora_perthread`: a worker per thread, as keygate runs by
# default); through keygate with the full chain (bearer auth for wrk, keygate-v1 signatures
# for k6; limits, validation, metrics, audit log; 10,000 sites configured). When redis-server is
# installed, a second keygate in fleet mode (same config plus `fleet.redis` on a local
# redis-server) is measured with k6 too: the Redis round trip each signed request adds (its
# nonce and, with fleet.exact_limits, its admission in one script), beside a third keygate with
# exact_limits: false (a plain SET NX) and one loopback Redis round trip (redis-benchmark PING).
# With BENCH_PEERS=1 (`make bench-peers`), LiteLLM's proxy (target/venv-peers, one uvicorn
# worker, master key only, no database) and Portkey's gateway (target/peers/portkey, one Node
# process) join the wrk rounds against the same upstream; keygate/peer throughput and p99
# ratios and each one's CPU per request (and so requests per second per core) are reported. Streams: keygate's mock provider
# (SSE) reached direct, through a second bare Pingora proxy and through keygate (k6, signed).
# Prints a table and writes target/bench/results.json.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DURATION="${BENCH_DURATION:-10s}"
ROUNDS="${BENCH_ROUNDS:-2}"
. bench/common.sh
bench_setup
mkdir -p target/bench

UP=$(free_port); NGX=$(free_port); BARE=$(free_port); KG=$(free_port); ADMIN=$(free_port)
nginx_conf "$work" "$UP" "  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }" > "$work/nginx.conf"
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
wait_port "$UP"; wait_port "$NGX"
target/release/examples/bare_proxy "127.0.0.1:$BARE" "127.0.0.1:$UP" 2 > "$work/bare.log" 2>&1 &
barepid=$!
pids+=($barepid)
wait_port "$BARE"
BAREP=$(free_port)
target/release/examples/bare_proxy "127.0.0.1:$BAREP" "127.0.0.1:$UP" 2 perthread > "$work/bare-perthread.log" 2>&1 &
barepid_pt=$!
pids+=($barepid_pt)
wait_port "$BAREP"
# Streaming: keygate's mock provider (SSE chat completions), reached direct, through a second
# bare Pingora proxy, and through keygate's /mock/ route.
MOCK=$(free_port); BARES=$(free_port)
target/release/keygate mock-provider --listen "127.0.0.1:$MOCK" > "$work/mock.log" 2>&1 &
pids+=($!)
wait_port "$MOCK"
target/release/examples/bare_proxy "127.0.0.1:$BARES" "127.0.0.1:$MOCK" 2 > "$work/bare-stream.log" 2>&1 &
pids+=($!)
wait_port "$BARES"

# keygate config: 10,000 sites (bearer keys; only the first one's token is known).
python3 - "$work" "$KG" "$UP" "$ADMIN" "$MOCK" <<'PY'
import hashlib, os, secrets, sys
work, kg, up, admin, mock = sys.argv[1:]
token = "kgk_" + secrets.token_urlsafe(24)
open(f"{work}/bearer", "w").write(token)
site_secret = "kgs_" + secrets.token_urlsafe(24)
open(f"{work}/site.secret", "w").write(site_secret)
open(f"{work}/provider.key", "w").write("sk-bench-" + secrets.token_urlsafe(24))
for f in ("site.secret", "provider.key"):
    os.chmod(f"{work}/{f}", 0o600)
lines = [f"""server:
  listen: [{{ addr: "127.0.0.1:{kg}" }}]
  hostnames: ["127.0.0.1:{kg}"]
  threads: 2
  admin_listen: "127.0.0.1:{admin}"
  pid_file: {work}/keygate.pid
  upgrade_sock: {work}/upgrade.sock
upstreams:
  bench:
    kind: openai
    url: "http://127.0.0.1:{up}"
    credentials: [{{ id: b1, secret: "file:{work}/provider.key" }}]
  mock:
    kind: openai
    url: "http://127.0.0.1:{mock}"
    credentials: [{{ id: m1, secret: "file:{work}/provider.key" }}]
routes:
  - {{ prefix: "/openai/", upstream: bench, models: ["gpt-4o-mini"] }}
  - {{ prefix: "/mock/", upstream: mock, models: ["gpt-4o-mini"] }}
tiers:
  bench: {{ requests_per_minute: 100000000, requests_per_hour: 1000000000, requests_per_day: 10000000000, tokens_per_day: 100000000000, concurrent: 100000 }}
log: {{ audit_path: {work}/audit.jsonl }}
sites:
  - id: bench
    tier: bench
    keys:
      - {{ id: bench.k1, auth: hmac, secret: "file:{work}/site.secret" }}
      - {{ id: bench.sdk, auth: bearer, hash: "sha256:{hashlib.sha256(token.encode()).hexdigest()}" }}
"""]
for i in range(9999):
    h = hashlib.sha256(secrets.token_bytes(16)).hexdigest()
    lines.append(f"  - {{ id: s{i}, tier: bench, keys: [{{ id: s{i}.k, auth: bearer, hash: \"sha256:{h}\" }}] }}\n")
open(f"{work}/keygate.yaml", "w").write("".join(lines))
PY
RUST_LOG=warn target/release/keygate serve -c "$work/keygate.yaml" > "$work/keygate.log" 2>&1 &
kgpid=$!
pids+=($kgpid)
wait_port "$KG"
BEARER="$(cat "$work/bearer")"

# variant NAME PORT ADMIN_PORT EXTRA_YAML: the bench config on other ports (its own pid file,
# upgrade socket and audit log), with EXTRA_YAML appended, as $work/keygate-NAME.yaml.
variant() {
  python3 - "$work" "$KG" "$ADMIN" "$@" <<'PY'
import sys
work, kg, admin, name, port, adm, extra = sys.argv[1:8]
text = open(f"{work}/keygate.yaml").read()
text = text.replace(f"127.0.0.1:{kg}", f"127.0.0.1:{port}").replace(f"127.0.0.1:{admin}", f"127.0.0.1:{adm}")
text = text.replace(f"{work}/keygate.pid", f"{work}/keygate-{name}.pid").replace(f"{work}/upgrade.sock", f"{work}/upgrade-{name}.sock")
text = text.replace(f"{work}/audit.jsonl", f"{work}/audit-{name}.jsonl")
open(f"{work}/keygate-{name}.yaml", "w").write(text + extra)
PY
}

# Fleet mode: the same config on other ports, with one local redis-server.
FLEET_TARGETS=()
if command -v redis-server >/dev/null 2>&1; then
  RDS=$(free_port); KGF=$(free_port); ADMINF=$(free_port); KGS=$(free_port); ADMINS=$(free_port)
  redis-server --port "$RDS" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
  pids+=($!)
  wait_port "$RDS"
  # keygate-fleet: exact limits (the default); keygate-fleet-synced: exact_limits: false.
  fleet_yaml() { printf 'fleet:\n  redis: { url: "redis://127.0.0.1:%s", timeout_ms: 50 }\n  nodes: 1\n  exact_limits: %s\n' "$RDS" "$1"; }
  variant fleet "$KGF" "$ADMINF" "$(fleet_yaml true)"
  variant fleet-synced "$KGS" "$ADMINS" "$(fleet_yaml false)"
  for name in fleet fleet-synced; do
    RUST_LOG=warn target/release/keygate serve -c "$work/keygate-$name.yaml" > "$work/keygate-$name.log" 2>&1 &
    pids+=($!)
  done
  wait_port "$KGF"
  wait_port "$KGS"
  FLEET_TARGETS=(keygate_fleet keygate_fleet_synced)
else
  echo "redis-server not installed: fleet-mode latency not measured" >&2
fi

# Traces: the same config on other ports with telemetry.otlp (sample_ratio 1.0) to a local
# OTLP/HTTP collector sink (keygate mock-provider's POST /v1/traces: reads the export, answers
# 200), a second mock so that the upstream mock's load is the same for every variant:
# keygate's CPU per request with every request traced, beside the plain node's, in the same wrk
# rounds. (A Python receiver here took a core's share from keygate on two cores and inflated
# the traced node's CPU per request.)
OTLP=$(free_port); KGT=$(free_port); ADMINT=$(free_port)
target/release/keygate mock-provider --listen "127.0.0.1:$OTLP" > "$work/otlp.log" 2>&1 &
pids+=($!)
wait_port "$OTLP"
variant traced "$KGT" "$ADMINT" "$(printf 'telemetry:\n  otlp: { endpoint: "http://127.0.0.1:%s", sample_ratio: 1.0 }\n' "$OTLP")"
RUST_LOG=warn target/release/keygate serve -c "$work/keygate-traced.yaml" > "$work/keygate-traced.log" 2>&1 &
tracedpid=$!
pids+=($tracedpid)
wait_port "$KGT"

# Peer (BENCH_PEERS=1): LiteLLM's proxy in front of the same upstream, measured with the same wrk
# command. Offline: the model cost map is read from the installed package (no fetch at start-up),
# telemetry is vetoed; no database, only a master key. One uvicorn worker, the deployment
# LiteLLM's production guide recommends (scale with more pods, not workers); the litellm_settings
# are those of LiteLLM's own benchmark config, and LITELLM_LOG=ERROR leaves out per-request logs
# (uvicorn's access log included).
PEERS=()
peer_log() { echo "--- $1 log (last 80 lines)" >&2; tail -n 80 "$work/$1.log" >&2; }
# peer_ready NAME PORT PID LIVE_PATH HEADERS: wait (up to 120 s) until GET LIVE_PATH answers 200,
# then send five chat completions with HEADERS ("Name: value|..."), each of which must be a 200
# with the upstream's completion; on failure the peer's log is shown.
peer_ready() {
  python3 - "$@" <<'PY' || { peer_log "$1"; return 1; }
import json, sys, time, urllib.request
name, port, pid, live, headers = sys.argv[1:6]
headers = dict(h.split(": ", 1) for h in headers.split("|")) | {"Content-Type": "application/json"}
def alive():
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
deadline = time.time() + 120
while True:
    if not alive():
        sys.exit(f"{name} exited during start-up")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{live}", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit(f"{name} not live after 120 s")
    time.sleep(0.5)
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
for _ in range(5):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            reply = json.load(r)
    except OSError as e:
        sys.exit(f"{name} warm-up request failed: {e}")
    if reply["choices"][0]["message"]["content"] != "Hello from nginx.":
        sys.exit(f"{name} warm-up: unexpected reply {reply}")
PY
}
if [ "${BENCH_PEERS:-0}" = 1 ]; then
  [ -x target/venv-peers/bin/litellm ] || { echo "BENCH_PEERS=1: target/venv-peers/bin/litellm missing (make venv-peers)" >&2; exit 1; }
  LLM=$(free_port)
  LLM_KEY="sk-$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
  cat > "$work/litellm.yaml" <<YAML
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:$UP/v1
      api_key: sk-bench-upstream
litellm_settings:
  callbacks: []
  num_retries: 0
  request_timeout: 30
general_settings:
  master_key: $LLM_KEY
YAML
  chmod 600 "$work/litellm.yaml"
  LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY_DISABLED=true LITELLM_LOG=ERROR \
    target/venv-peers/bin/litellm --config "$work/litellm.yaml" --host 127.0.0.1 --port "$LLM" > "$work/litellm.log" 2>&1 &
  llmpid=$!
  pids+=($llmpid)
  # Start-up takes 10-20 s (imports); the first request is slow (lazy imports).
  peer_ready litellm "$LLM" "$llmpid" /health/liveliness "Authorization: Bearer $LLM_KEY" || exit 1
  # Portkey's gateway, one Node process (it has no workers option), bound to loopback by
  # bench/portkey-local.cjs, NODE_ENV=production and --headless (no console UI, no log stream
  # route); it logs no line per request. It is routed per request by headers to the upstream
  # as an OpenAI-compatible custom host (loopback custom hosts are allowed by default).
  pk=target/peers/portkey/node_modules/@portkey-ai/gateway/build/start-server.js
  [ -f "$pk" ] || { echo "BENCH_PEERS=1: $pk missing (make venv-peers)" >&2; exit 1; }
  PK=$(free_port)
  NODE_ENV=production node --require ./bench/portkey-local.cjs "$pk" --port="$PK" --headless > "$work/portkey.log" 2>&1 &
  pkpid=$!
  pids+=($pkpid)
  PK_HEADERS="Authorization: Bearer sk-bench-upstream|x-portkey-provider: openai|x-portkey-custom-host: http://127.0.0.1:$UP/v1"
  peer_ready portkey "$PK" "$pkpid" / "$PK_HEADERS" || exit 1
  PEERS=(litellm portkey)
fi

declare -A URLS=(
  [direct]="http://127.0.0.1:$UP/v1/chat/completions"
  [nginx]="http://127.0.0.1:$NGX/v1/chat/completions"
  [pingora]="http://127.0.0.1:$BARE/v1/chat/completions"
  [pingora_perthread]="http://127.0.0.1:$BAREP/v1/chat/completions"
  [keygate]="http://127.0.0.1:$KG/openai/v1/chat/completions"
  [keygate_traced]="http://127.0.0.1:$KGT/openai/v1/chat/completions"
  [keygate_fleet]="http://127.0.0.1:${KGF:-0}/openai/v1/chat/completions"
  [keygate_fleet_synced]="http://127.0.0.1:${KGS:-0}/openai/v1/chat/completions"
  [litellm]="http://127.0.0.1:${LLM:-0}/v1/chat/completions"
  [portkey]="http://127.0.0.1:${PK:-0}/v1/chat/completions"
)
declare -A STREAM_URLS=(
  [direct]="http://127.0.0.1:$MOCK/v1/chat/completions"
  [pingora]="http://127.0.0.1:$BARES/v1/chat/completions"
  [keygate]="http://127.0.0.1:$KG/mock/v1/chat/completions"
)
ORDER=(direct nginx pingora pingora_perthread keygate keygate_traced "${PEERS[@]}")
to_ms() { python3 -c "import re,sys; v,u=re.match(r'([\d.]+)(us|ms|s)', sys.argv[1]).groups(); print(float(v)*{'us':0.001,'ms':1,'s':1000}[u])" "$1"; }
declare -A RPS P50 P99 CPU
# CPU time (user + system, from /proc) each proxy process spends per request: steadier than
# req/s on a shared machine, and what fleet sizing needs. Loopback TCP work is charged to the
# sending process, so this includes the kernel's share of both hops.
declare -A PROC=([pingora]="$barepid" [pingora_perthread]="$barepid_pt" [keygate]="$kgpid" [keygate_traced]="$tracedpid" [litellm]="${llmpid:-}" [portkey]="${pkpid:-}")
for round in $(seq "$ROUNDS"); do
  for name in "${ORDER[@]}"; do
    bearer=""; [ "${name%_traced}" = keygate ] && bearer="$BEARER"; [ "$name" = litellm ] && bearer="$LLM_KEY"
    headers=""; [ "$name" = portkey ] && headers="$PK_HEADERS"
    pid="${PROC[$name]:-}"; [ -n "$pid" ] && c0="$(cpu_ticks "$pid")"
    out="$(BEARER="$bearer" HEADERS="$headers" wrk -t1 -c32 -d"$DURATION" --latency -s bench/post.lua "${URLS[$name]}")"
    cpu=""
    if [ -n "$pid" ]; then
      n="$(echo "$out" | awk '/requests in/ {print $1}')"
      cpu="$(cpu_us_per_request "$c0" "$(cpu_ticks "$pid")" "$n")"
      if [ -z "${CPU[$name]:-}" ] || python3 -c "import sys; sys.exit(0 if float(sys.argv[1])<float(sys.argv[2]) else 1)" "$cpu" "${CPU[$name]}"; then
        CPU[$name]=$cpu
      fi
    fi
    if echo "$out" | grep -q "Non-2xx"; then
      echo "$name: non-2xx responses" >&2; echo "$out" >&2
      case " ${PEERS[*]} " in *" $name "*) peer_log "$name" ;; esac
      exit 1
    fi
    # wrk leaves requests slower than its 2 s timeout out of the percentiles: say so for a peer.
    if [ "$name" = litellm ] || [ "$name" = portkey ] && echo "$out" | grep -q "Socket errors"; then
      echo "$name: $(echo "$out" | grep "Socket errors" | xargs) (timed-out requests are not in the percentiles)" >&2
    fi
    rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
    p50="$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")"
    p99="$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")"
    echo "round $round $name: $rps req/s, p50 ${p50} ms, p99 ${p99} ms${cpu:+, CPU ${cpu} µs/request}"
    # Keep the best round of each (the machine is shared and noisy).
    if [ -z "${RPS[$name]:-}" ] || python3 -c "import sys; sys.exit(0 if float(sys.argv[1])>float(sys.argv[2]) else 1)" "$rps" "${RPS[$name]}"; then
      RPS[$name]=$rps; P50[$name]=$p50; P99[$name]=$p99
    fi
  done
done
# Tracing's CPU cost as paired rounds: the plain node, then the traced one, back to back,
# BENCH_TRACE_ROUNDS times; each pair's ratio of CPU per request, and their median. On a shared
# two-core machine the same node's CPU per request moves 10-20 % from one round to the next;
# pairs taken seconds apart, and their median, see through most of that.
TRACE_RATIOS=()
for round in $(seq "${BENCH_TRACE_ROUNDS:-8}"); do
  declare -A TCPU=()
  for name in keygate keygate_traced; do
    pid="${PROC[$name]}"; c0="$(cpu_ticks "$pid")"
    out="$(BEARER="$BEARER" wrk -t1 -c32 -d"${BENCH_TRACE_DURATION:-6s}" -s bench/post.lua "${URLS[$name]}")"
    n="$(echo "$out" | awk '/requests in/ {print $1}')"
    TCPU[$name]="$(cpu_us_per_request "$c0" "$(cpu_ticks "$pid")" "$n")"
  done
  ratio="$(python3 -c "import sys; print(round(float(sys.argv[1]) / float(sys.argv[2]), 3))" "${TCPU[keygate_traced]}" "${TCPU[keygate]}")"
  TRACE_RATIOS+=("$ratio")
  echo "trace round $round: keygate ${TCPU[keygate]} µs/request, traced ${TCPU[keygate_traced]}: ratio $ratio"
done
# The traced node's CPU counts only if its spans went out: every export accepted by the sink.
otlp_metric() { curl -s "http://127.0.0.1:$ADMINT/metrics" | awk -v s="keygate_otlp_exports_total{result=\"$1\"}" '$1==s {print $2}'; }
otlp_ok="$(otlp_metric ok)"; otlp_failed="$(otlp_metric failed)"
if [ "${otlp_ok:-0}" = 0 ] || [ "${otlp_failed:-0}" != 0 ]; then
  echo "traced keygate: OTLP exports ok ${otlp_ok:-0}, failed ${otlp_failed:-0}; the traced CPU would not be a traced node's" >&2
  exit 1
fi
rss_kb="$(awk '/VmRSS/ {print $2}' /proc/$kgpid/status)"
# The peers are not needed for the k6 runs: stop them so that they take no CPU from them.
for peer in ${llmpid:-} ${pkpid:-}; do
  kill "$peer" 2>/dev/null || true; wait "$peer" 2>/dev/null || true
  keep=(); for p in "${pids[@]}"; do [ "$p" = "$peer" ] || keep+=("$p"); done; pids=("${keep[@]}")
done

# Fixed-rate latency with signatures (k6), keygate vs. direct, same run.
declare -A LAT
# The bare Pingora proxy gets the same signed requests (it forwards the headers; nginx ignores
# them), so the client does the same work: what the proxy hop alone adds is measured too.
# nginx proxy_pass gets them too: the same hop in the proxy that sets the pace for throughput.
# keygate's side of each request (checks before and after the provider, the write to the
# client) comes from its audit log: duration_ms minus upstream_header_ms per line.
for t in direct nginx pingora keygate "${FLEET_TARGETS[@]}"; do
  url="${URLS[$t]}"
  audit_from="$(stat -c %s "$work/audit.jsonl" 2>/dev/null || echo 0)"
  k6_fixed "$t" "$url" "${BENCH_RATE:-1000}" bench/latency.js "$work/k6-$t.json"
  LAT[$t]="$(k6_latency "$work/k6-$t.json")"
  if [ "$t" = keygate ]; then
    sleep 0.3 # the audit writer flushes every 50 ms
    OWN="$(python3 - "$work/audit.jsonl" "$audit_from" <<'PY'
import json, sys
with open(sys.argv[1], "rb") as f:
    f.seek(int(sys.argv[2]))
    lines = [json.loads(l) for l in f if b'"bench.k1"' in l]
own = sorted(l["duration_ms"] - l["upstream_header_ms"] for l in lines if l.get("upstream_header_ms") is not None)
if not own:
    sys.exit("no signed requests in keygate's audit log")
q = lambda p: own[min(len(own) - 1, int(p * len(own)))]
print(q(0.5), q(0.99), q(0.999), len(own))
PY
)" || exit 1
  fi
done

# The fleet rows are differences of a few tenths of a millisecond between runs made one
# after the other: run the plain node and both fleet nodes again, alternating, and keep
# each one's best-p50 round (as the wrk rounds keep their best).
# The plain node's best goes to keygate_plain, for the fleet rows only: the rows against
# direct, nginx and Pingora stay one round each.
if [ "${#FLEET_TARGETS[@]}" -gt 0 ]; then
  LAT[keygate_plain]="${LAT[keygate]}"; URLS[keygate_plain]="${URLS[keygate]}"
  for round in $(seq 2 "$ROUNDS"); do
    for t in keygate_plain "${FLEET_TARGETS[@]}"; do
      k6_fixed "$t" "${URLS[$t]}" "${BENCH_RATE:-1000}" bench/latency.js "$work/k6-$t-$round.json"
      next="$(k6_latency "$work/k6-$t-$round.json")"
      echo "k6 round $round $t: p50 ${next%% *} ms (best before: ${LAT[$t]%% *} ms)"
      if python3 -c "import sys; sys.exit(0 if float(sys.argv[1])<float(sys.argv[2]) else 1)" "${next%% *}" "${LAT[$t]%% *}"; then
        LAT[$t]=$next
      fi
    done
  done
fi

# Streams at a fixed rate (k6, signed): whole-stream time and time to first byte.
declare -A STREAMS
for t in direct pingora keygate; do
  k6_fixed "$t" "${STREAM_URLS[$t]}" "${BENCH_STREAM_RATE:-200}" bench/stream.js "$work/k6-stream-$t.json"
  STREAMS[$t]="$(python3 -c "import json,sys; m=json.load(open(sys.argv[1]))['metrics']; d=m['http_req_duration']; w=m['http_req_waiting']; f=m['checks']; print(d['p(50)'], d['p(99)'], w['p(50)'], w['p(99)'], f.get('passes',0), f.get('fails',0))" "$work/k6-stream-$t.json")"
done

# One loopback Redis round trip, for the fleet rows: PING from one client, p50.
REDIS_RTT=0
if [ -n "${RDS:-}" ]; then
  REDIS_RTT="$(redis-benchmark -p "$RDS" -t ping -n 20000 -c 1 --csv | awk -F'"' '/PING_MBULK/ {print $10}')"
fi

python3 - "$rss_kb" <<PY
import json, sys
rps = {k: float(v) for k, v in {"direct": "${RPS[direct]}", "nginx": "${RPS[nginx]}", "pingora": "${RPS[pingora]}", "pingora_perthread": "${RPS[pingora_perthread]}", "keygate": "${RPS[keygate]}"}.items()}
p50 = {"direct": ${P50[direct]}, "nginx": ${P50[nginx]}, "pingora": ${P50[pingora]}, "pingora_perthread": ${P50[pingora_perthread]}, "keygate": ${P50[keygate]}}
p99 = {"direct": ${P99[direct]}, "nginx": ${P99[nginx]}, "pingora": ${P99[pingora]}, "pingora_perthread": ${P99[pingora_perthread]}, "keygate": ${P99[keygate]}}
peers = [k for k in "${PEERS[*]}".split() if k]
peer_cpu = {}
for k, r, a, b, c in [("litellm", "${RPS[litellm]:-}", "${P50[litellm]:-}", "${P99[litellm]:-}", "${CPU[litellm]:-}"),
                      ("portkey", "${RPS[portkey]:-}", "${P50[portkey]:-}", "${P99[portkey]:-}", "${CPU[portkey]:-}")]:
  if k in peers:
    rps[k], p50[k], p99[k], peer_cpu[k] = float(r), float(a), float(b), float(c)
lat = {t: dict(zip(["p50", "p99", "p999", "ok", "failed"], map(float, s.split()))) for t, s in {"direct": "${LAT[direct]}", "nginx": "${LAT[nginx]}", "pingora": "${LAT[pingora]}", "keygate": "${LAT[keygate]}", "keygate_fleet": "${LAT[keygate_fleet]:-}", "keygate_fleet_synced": "${LAT[keygate_fleet_synced]:-}", "keygate_plain": "${LAT[keygate_plain]:-}"}.items() if s}
own = dict(zip(["p50", "p99", "p999", "requests"], map(float, "${OWN}".split())))
streams = {t: dict(zip(["p50", "p99", "ttfb_p50", "ttfb_p99", "ok", "failed"], map(float, s.split()))) for t, s in {"direct": "${STREAMS[direct]}", "pingora": "${STREAMS[pingora]}", "keygate": "${STREAMS[keygate]}"}.items()}
if any(v["failed"] for v in streams.values()):
  sys.exit("some streams did not arrive whole: " + ", ".join(f"{t} {int(v['failed'])}" for t, v in streams.items()))
rss_mb = int(sys.argv[1]) / 1024
cpu = {"pingora": float("${CPU[pingora]}"), "pingora_perthread": float("${CPU[pingora_perthread]}"), "keygate": float("${CPU[keygate]}"), "keygate_traced": float("${CPU[keygate_traced]}")}
res = {
  "wrk": {k: {"rps": rps[k], "p50_ms": p50[k], "p99_ms": p99[k]} for k in rps},
  "ratios": {"keygate/pingora": rps["keygate"] / rps["pingora"], "keygate/nginx": rps["keygate"] / rps["nginx"],
             "keygate/pingora_perthread": rps["keygate"] / rps["pingora_perthread"], "pingora_perthread/nginx": rps["pingora_perthread"] / rps["nginx"]},
  "k6_signed_${BENCH_RATE:-1000}rps": lat,
  "added_latency_ms": {"p50": lat["keygate"]["p50"] - lat["direct"]["p50"], "p99": lat["keygate"]["p99"] - lat["direct"]["p99"]},
  "added_by_bare_pingora_ms": {"p50": lat["pingora"]["p50"] - lat["direct"]["p50"], "p99": lat["pingora"]["p99"] - lat["direct"]["p99"]},
  "added_by_nginx_proxy_pass_ms": {"p50": lat["nginx"]["p50"] - lat["direct"]["p50"], "p99": lat["nginx"]["p99"] - lat["direct"]["p99"]},
  "keygate_side_ms": own,
  "k6_signed_streams_${BENCH_STREAM_RATE:-200}ps": streams,
  "stream_added_ms": {t: {k: streams[t][k] - streams["direct"][k] for k in ["p50", "p99", "ttfb_p50", "ttfb_p99"]} for t in ["pingora", "keygate"]},
  "keygate_rss_mb_10000_sites": rss_mb,
  "cpu_us_per_request": cpu,
}
res["ratios"]["cpu pingora/keygate"] = cpu["pingora"] / cpu["keygate"]
res["ratios"]["cpu pingora_perthread/keygate"] = cpu["pingora_perthread"] / cpu["keygate"]
trace_ratios = sorted(float(r) for r in "${TRACE_RATIOS[*]}".split())
res["tracing_cpu_ratios"] = trace_ratios
res["tracing_cpu_overhead"] = trace_ratios[len(trace_ratios) // 2] - 1 if len(trace_ratios) % 2 else (trace_ratios[len(trace_ratios) // 2 - 1] + trace_ratios[len(trace_ratios) // 2]) / 2 - 1
res["wrk"]["keygate_traced"] = {"rps": float("${RPS[keygate_traced]}"), "p50_ms": ${P50[keygate_traced]}, "p99_ms": ${P99[keygate_traced]}}
for k in peers:
  res["ratios"][f"keygate/{k}"] = rps["keygate"] / rps[k]
  res["ratios"][f"{k}_p99/keygate_p99"] = p99[k] / p99["keygate"]
  res["ratios"][f"cpu {k}/keygate"] = peer_cpu[k] / cpu["keygate"]
  res["cpu_us_per_request"][k] = peer_cpu[k]
if "keygate_fleet" in lat:
  plain = lat["keygate_plain"]
  res["added_by_redis_ms"] = {"p50": lat["keygate_fleet"]["p50"] - plain["p50"], "p99": lat["keygate_fleet"]["p99"] - plain["p99"]}
  res["added_by_redis_synced_ms"] = {"p50": lat["keygate_fleet_synced"]["p50"] - plain["p50"], "p99": lat["keygate_fleet_synced"]["p99"] - plain["p99"]}
  res["redis_round_trip_p50_ms"] = float("${REDIS_RTT:-0}")
json.dump(res, open("target/bench/results.json", "w"), indent=2)
print()
print("| path (wrk -t1 -c32, POST) | req/s | p50 ms | p99 ms |")
print("|---|---|---|---|")
for k in ["direct", "nginx", "pingora", "pingora_perthread", "keygate"] + peers:
    print(f"| {k} | {rps[k]:.0f} | {p50[k]:.2f} | {p99[k]:.2f} |")
print()
print(f"keygate / bare Pingora: {res['ratios']['keygate/pingora']:.2f}   keygate / nginx proxy_pass: {res['ratios']['keygate/nginx']:.2f}")
print(f"CPU per request (best round): bare Pingora {cpu['pingora']:.0f} µs, keygate {cpu['keygate']:.0f} µs; bare/keygate {res['ratios']['cpu pingora/keygate']:.2f}")
r = res["ratios"]
print(f"bare Pingora with a worker per thread (keygate's default model): keygate / it {r['keygate/pingora_perthread']:.2f}, it / nginx proxy_pass {r['pingora_perthread/nginx']:.2f}; CPU {cpu['pingora_perthread']:.0f} µs, it/keygate {r['cpu pingora_perthread/keygate']:.2f}")
for k, title in [("litellm", "LiteLLM proxy (one uvicorn worker)"), ("portkey", "Portkey gateway (one Node process)")]:
  if k in peers:
    r = res["ratios"]
    print(f"keygate / {title}: {r[f'keygate/{k}']:.0f}x throughput; {k} p99 / keygate p99: {r[f'{k}_p99/keygate_p99']:.0f}x; CPU per request {peer_cpu[k]:.0f} µs against keygate's {cpu['keygate']:.0f} ({r[f'cpu {k}/keygate']:.0f}x): per core {1e6 / peer_cpu[k]:.0f} against {1e6 / cpu['keygate']:.0f} req/s")
print(f"k6 at ${BENCH_RATE:-1000} req/s: direct p50 {lat['direct']['p50']:.2f} ms p99 {lat['direct']['p99']:.2f} ms; keygate (signed) p50 {lat['keygate']['p50']:.2f} ms p99 {lat['keygate']['p99']:.2f} ms p99.9 {lat['keygate']['p999']:.2f} ms; failed checks {int(lat['keygate']['failed'])}")
print(f"added by keygate: p50 {res['added_latency_ms']['p50']:.2f} ms, p99 {res['added_latency_ms']['p99']:.2f} ms; by the bare Pingora proxy (same signed requests): p50 {res['added_by_bare_pingora_ms']['p50']:.2f} ms, p99 {res['added_by_bare_pingora_ms']['p99']:.2f} ms; by nginx proxy_pass: p50 {res['added_by_nginx_proxy_pass_ms']['p50']:.2f} ms, p99 {res['added_by_nginx_proxy_pass_ms']['p99']:.2f} ms")
print(f"keygate's side of each signed request (audit log: duration_ms - upstream_header_ms, i.e. its checks before and after the provider and the write to the client; {int(own['requests'])} requests): p50 {own['p50']:.3f} ms, p99 {own['p99']:.3f} ms, p99.9 {own['p999']:.3f} ms")
st, sa = streams, res["stream_added_ms"]
print(f"streams (k6, ${BENCH_STREAM_RATE:-200}/s signed, mock provider SSE): whole stream p50 / p99, first byte p50 / p99: direct {st['direct']['p50']:.2f} / {st['direct']['p99']:.2f}, {st['direct']['ttfb_p50']:.2f} / {st['direct']['ttfb_p99']:.2f} ms; bare Pingora {st['pingora']['p50']:.2f} / {st['pingora']['p99']:.2f}, {st['pingora']['ttfb_p50']:.2f} / {st['pingora']['ttfb_p99']:.2f} ms; keygate {st['keygate']['p50']:.2f} / {st['keygate']['p99']:.2f}, {st['keygate']['ttfb_p50']:.2f} / {st['keygate']['ttfb_p99']:.2f} ms; incomplete streams: {int(sum(v['failed'] for v in st.values()))}")
print(f"added to a whole stream: by keygate p50 {sa['keygate']['p50']:.2f} ms, p99 {sa['keygate']['p99']:.2f} ms; by the bare Pingora proxy p50 {sa['pingora']['p50']:.2f} ms, p99 {sa['pingora']['p99']:.2f} ms")
print(f"keygate RSS with 10,000 sites after the run: {rss_mb:.0f} MB")
print(f"traces (telemetry.otlp, sample_ratio 1.0, local OTLP sink): keygate CPU per request traced / untraced in {len(trace_ratios)} paired rounds: median {1 + res['tracing_cpu_overhead']:.3f} ({100 * res['tracing_cpu_overhead']:+.1f} %), all {', '.join(f'{r:.3f}' for r in trace_ratios)}; best rounds of the wrk table {cpu['keygate_traced']:.0f} against {cpu['keygate']:.0f} µs, {res['wrk']['keygate_traced']['rps']:.0f} req/s traced")
if "keygate_fleet" in lat:
  f = lat["keygate_fleet"]
  g = lat["keygate_fleet_synced"]
  print(f"plain node, best of {int('${ROUNDS}')} k6 rounds alternating with the fleet nodes: p50 {plain['p50']:.2f} ms p99 {plain['p99']:.2f} ms")
  print(f"fleet mode (local redis-server), signed, exact limits: p50 {f['p50']:.2f} ms p99 {f['p99']:.2f} ms, failed checks {int(f['failed'])}; added over the plain node: p50 {res['added_by_redis_ms']['p50']:.2f} ms, p99 {res['added_by_redis_ms']['p99']:.2f} ms")
  print(f"fleet mode, exact_limits: false (nonce SET only): p50 {g['p50']:.2f} ms p99 {g['p99']:.2f} ms; added: p50 {res['added_by_redis_synced_ms']['p50']:.2f} ms, p99 {res['added_by_redis_synced_ms']['p99']:.2f} ms")
  print(f"exact limits over exact_limits: false (the admission script instead of SET NX, one round trip either way): p50 {f['p50'] - g['p50']:+.2f} ms")
  print(f"one loopback Redis round trip (redis-benchmark PING, 1 client, after the runs): p50 {res['redis_round_trip_p50_ms']:.3f} ms")
print("written: target/bench/results.json")
PY
