# Shared by the bench/*.sh scripts (sourced): the work directory, ports,
# and the nginx upstream that serves
# one fixed chat completion.
# bench_setup: a fresh work directory ($work) and the list of processes to stop ($pids), both
# cleaned up when the script exits.
bench_setup() {
  work="$(mktemp -d)"
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT
}
# cpu_ticks PID: the process's user + system CPU time so far, in clock ticks (getconf CLK_TCK).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# cpu_us_per_request TICKS_BEFORE TICKS_AFTER REQUESTS: CPU microseconds per request.
cpu_us_per_request() {
  python3 -c "import sys; print(round((int(sys.argv[2]) - int(sys.argv[1])) * 1e6 / int(sys.argv[3]) / int(sys.argv[4]), 1))" "$1" "$2" "$(getconf CLK_TCK)" "$3"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

# nginx_conf WORK UP_PORT [EXTRA]: an nginx config (one worker, in the foreground, files under
# WORK) whose server on UP_PORT answers every request with the fixed chat completion; EXTRA is
# added inside the http block.
# The fixed chat completion the nginx upstream answers.
COMPLETION='{"id":"chatcmpl-bench","object":"chat.completion","created":1767225600,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from nginx."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}'
nginx_conf() {
  local work="$1" up="$2" extra="${3:-}" json="$COMPLETION"
  mkdir -p "$work"/{body,proxy,fcgi,uwsgi,scgi}
  cat <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fcgi;
  uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$up; default_type application/json; location / { return 200 '$json'; } }
$extra
}
NGINX
}

# nginx_upstream WORK: start that nginx (its port in UP, its pid added to the caller's pids).
nginx_upstream() {
  UP=$(free_port)
  nginx_conf "$1" "$UP" > "$1/nginx.conf"
  nginx -c "$1/nginx.conf" -p "$1" &
  pids+=($!)
  wait_port "$UP"
}

# binaries_against_nginx BINARY...: the start of a script that runs each keygate BINARY given
# in front of one nginx upstream ($UP): a usage line when none is given, bench_setup,
# nginx_upstream.
binaries_against_nginx() {
  [ $# -ge 1 ] || { echo "usage: $0 BINARY [BINARY...]" >&2; exit 2; }
  bench_setup
  nginx_upstream "$work"
}

# bench_config WORK NAME PORT UP_PORT ADMIN_PORT [SITES]: WORK/NAME.yaml, make bench's keygate
# config (bearer auth, limits, validation, egress scan, metrics, audit log, SITES sites, default
# 10,000) on PORT in front of the nginx upstream on UP_PORT; the bearer token of the first site
# is in WORK/bearer, site s{i}'s is the text of i.
bench_config() {
  python3 - "$@" <<'PY'
import hashlib, os, secrets, sys
work, name, kg, up, admin = sys.argv[1:6]
sites = int(sys.argv[6]) if len(sys.argv) > 6 else 10000
tok_file = f"{work}/bearer"
if not os.path.exists(tok_file):
    open(tok_file, "w").write("kgk_" + secrets.token_urlsafe(24))
    open(f"{work}/provider.key", "w").write("sk-bench-" + secrets.token_urlsafe(24))
    os.chmod(f"{work}/provider.key", 0o600)
token = open(tok_file).read()
lines = [f"""server:
  listen: [{{ addr: "127.0.0.1:{kg}" }}]
  hostnames: ["127.0.0.1:{kg}"]
  threads: 2
  admin_listen: "127.0.0.1:{admin}"
  pid_file: {work}/{name}.pid
  upgrade_sock: {work}/{name}.sock
upstreams:
  bench:
    kind: openai
    url: "http://127.0.0.1:{up}"
    credentials: [{{ id: b1, secret: "file:{work}/provider.key" }}]
routes:
  - {{ prefix: "/openai/", upstream: bench, models: ["gpt-4o-mini"] }}
tiers:
  bench: {{ requests_per_minute: 100000000, requests_per_hour: 1000000000, requests_per_day: 10000000000, tokens_per_day: 100000000000, concurrent: 100000 }}
log: {{ audit_path: {work}/{name}-audit.jsonl }}
sites:
  - id: bench
    tier: bench
    keys:
      - {{ id: bench.sdk, auth: bearer, hash: "sha256:{hashlib.sha256(token.encode()).hexdigest()}" }}
"""]
for i in range(sites - 1):
    h = hashlib.sha256(f"{i}".encode()).hexdigest()
    lines.append(f"  - {{ id: s{i}, tier: bench, keys: [{{ id: s{i}.k, auth: bearer, hash: \"sha256:{h}\" }}] }}\n")
open(f"{work}/{name}.yaml", "w").write("".join(lines))
PY
}

# k6 at a fixed rate against one target, signed as site key bench.k1 (secret in
# $work/site.secret) unless TARGET=direct: k6_fixed TARGET URL RATE SCRIPT SUMMARY_JSON
k6_fixed() {
  TARGET=$1 TARGET_URL="$2" RATE="$3" DURATION="${BENCH_K6_DURATION:-15s}" \
    KEYGATE_KEY_ID=bench.k1 KEYGATE_SECRET="$(cat "$work/site.secret")" \
    target/venv/bin/k6 run --quiet --no-usage-report --summary-export "$5" "$4" > /dev/null
}

# k6_warm TARGET URL RATE SCRIPT: BENCH_K6_WARMUP (default 3s) of the same load, not
# recorded, so that the run after it meets the proxy in its steady state: keygate closes
# pooled upstream connections idle for 60 s (src/upstream/mod.rs), the bare proxy keeps them,
# and in tail.sh's rounds each proxy waits about a minute for its turn.
k6_warm() {
  BENCH_K6_DURATION="${BENCH_K6_WARMUP:-3s}" k6_fixed "$1" "$2" "$3" "$4" "$work/k6-warm.json"
}

# p50 p99 p99.9 (ms), passed and failed checks of one k6 summary.
k6_latency() {
  python3 -c "import json,sys; m=json.load(open(sys.argv[1]))['metrics']; d=m['http_req_duration']; f=m['checks']; print(d['p(50)'], d['p(99)'], d['p(99.9)'], f.get('passes',0), f.get('fails',0))" "$1"
}

# medians NAME...: for each NAME, the medians, column by column, of its rounds in the caller's
# associative array ALL (ALL[NAME] is "v1 v2 ...;" per round): one line "NAME m1 m2 ..." each.
medians() {
  for t in "$@"; do echo "$t ${ALL[$t]}"; done | python3 -c '
import statistics, sys
for line in sys.stdin:
    t, rest = line.split(" ", 1)
    rounds = [list(map(float, r.split())) for r in rest.strip().strip(";").split(";")]
    print(t, *(statistics.median(c) for c in zip(*rounds)))'
}

# stub_status PORT: an nginx server block (for nginx_conf's EXTRA) on PORT whose page counts
# the connections and requests of that nginx. upstream_count accepts|requests reads it from
# port $UPSTAT (the reading request itself included).
stub_status() { echo "  server { listen 127.0.0.1:$1; location / { stub_status; } }"; }
upstream_count() {
  local field=1; [ "$1" = requests ] && field=3
  curl -fs "http://127.0.0.1:$UPSTAT/" | awk -v f="$field" 'NR == 3 {print $f}'
}

# wait_ready ADMIN_PORT PID LOG: until keygate's /readyz answers 200; if PID ends first,
# its LOG is shown and the script fails.
wait_ready() {
  until curl -fs -o /dev/null "http://127.0.0.1:$1/readyz"; do
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.01
  done
}
