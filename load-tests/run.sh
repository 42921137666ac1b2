#!/usr/bin/env bash
# Run k6 scenarios against a real keygate and mock provider on loopback.
#   load-tests/run.sh [--binary PATH] SCENARIO...
#   (smoke steady ramp stream abuse reload reload-admin failover)
# Fresh random secrets each run; exits non-zero when any k6 threshold fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
bin="$root/target/release/keygate"
if [ "${1:-}" = "--binary" ]; then bin="$2"; shift 2; fi
k6="$root/target/venv/bin/k6"
[ -x "$k6" ] || { echo "k6 missing: run 'make venv'" >&2; exit 1; }
[ -x "$bin" ] || { echo "keygate binary missing: $bin" >&2; exit 1; }
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The failover scenario's restarted primary was started in a subshell.
  [ -f "$work/primary.pid" ] && kill "$(cat "$work/primary.pid")" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rand() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
get() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "$1"; }
mock_count() { get "http://$1/__mock/requests" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }

# start_mock NAME ADDR: a mock provider, its address in $work/NAME.addr and pid in $work/NAME.pid.
start_mock() {
  "$bin" mock-provider --listen "$2" > "$work/$1.out" &
  echo $! > "$work/$1.pid"
  pids+=($!)
  for _ in $(seq 50); do grep -q listening "$work/$1.out" 2>/dev/null && break; sleep 0.1; done
  sed -n 's|.*http://||p' "$work/$1.out" > "$work/$1.addr"
}
start_mock mock 127.0.0.1:0
mock="$(cat "$work/mock.addr")"
# The failover route's providers: `primary` on a fixed port (killed and started again by
# the failover scenario) and `backup`.
primary="127.0.0.1:$(free_port)"
start_mock primary "$primary"
start_mock backup 127.0.0.1:0
backup="$(cat "$work/backup.addr")"
port="$(free_port)"
admin="$(free_port)"
secret="kgs_$(rand)"
printf '%s' "$secret" > "$work/site.secret"
# A second site on a tight tier, for the over-limit traffic of the abuse scenario.
flood_secret="kgs_$(rand)"
printf '%s' "$flood_secret" > "$work/flood.secret"
printf 'sk-load-%s' "$(rand)" > "$work/provider.key"
# The admin API (reload-admin): its key, and a master key to seal the secrets it makes.
admin_secret="kga_$(rand)"
printf '%s' "$admin_secret" > "$work/admin.secret"
"$bin" secret keygen > "$work/k1.master"
chmod 600 "$work"/*.secret "$work"/*.key "$work"/*.master
cat > "$work/keygate.yaml" <<YAML
server:
  listen: [{ addr: "127.0.0.1:$port" }]
  hostnames: ["127.0.0.1:$port"]
  admin_listen: "127.0.0.1:$admin"
  threads: 2
  pid_file: $work/keygate.pid
  upgrade_sock: $work/upgrade.sock
master_keys: [{ id: k1, source: "file:$work/k1.master" }]
admin:
  keys: [{ id: ops, secret: "file:$work/admin.secret" }]
  state_file: $work/sites.yaml
upstreams:
  mock:
    kind: openai
    url: "http://$mock"
    credentials: [{ id: load-1, secret: "file:$work/provider.key" }]
  primary:
    kind: openai
    url: "http://$primary"
    credentials: [{ id: primary-1, secret: "file:$work/provider.key" }]
    circuit_breaker: { failures: 3, open_s: 1, half_open_successes: 1 }
  backup:
    kind: openai-compatible
    url: "http://$backup"
    credentials: [{ id: backup-1, secret: "file:$work/provider.key" }]
routes:
  - { prefix: "/openai/", upstream: mock }
  - { prefix: "/failover/", upstream: primary, fallbacks: [backup] }
tiers:
  load: { requests_per_minute: 100000000, requests_per_hour: 1000000000 }
  tight: { requests_per_minute: 60 }
sites:
  - id: load
    tier: load
    keys: [{ id: load.k1, auth: hmac, secret: "file:$work/site.secret" }]
  - id: flood
    tier: tight
    keys: [{ id: flood.k1, auth: hmac, secret: "file:$work/flood.secret" }]
log: { audit_path: $work/audit.jsonl }
YAML
RUST_LOG=warn "$bin" serve -c "$work/keygate.yaml" > "$work/keygate.log" 2>&1 &
kg=$!
pids+=($kg)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

status=0
for scenario in "$@"; do
  echo "== k6 $scenario"
  if [ "$scenario" = reload ]; then
    ( for _ in $(seq 10); do sleep 1; kill -HUP "$kg" 2>/dev/null || true; done ) &
    pids+=($!)
  fi
  if [ "$scenario" = reload-admin ]; then
    # Every second: a new site, and the previous one disabled (each call checked).
    ( export KEYGATE_ADMIN_URL="http://127.0.0.1:$admin" KEYGATE_ADMIN_KEY_ID=ops KEYGATE_ADMIN_SECRET="$admin_secret"
      for i in $(seq 10); do
        sleep 1
        "$bin" admin create "churn-$RANDOM-$i" --tier load > /dev/null || echo "admin create failed" >> "$work/admin.err"
        prev="$("$bin" admin list | python3 -c 'import json,sys; s=[x["id"] for x in json.load(sys.stdin)["sites"] if x["id"].startswith("churn-") and not x["disabled"]]; print(s[0] if s else "")')"
        [ -n "$prev" ] && { "$bin" admin disable "$prev" > /dev/null || echo "admin disable failed" >> "$work/admin.err"; }
      done ) &
    pids+=($!)
    changer=$!
  fi
  if [ "$scenario" = failover ]; then
    # Down at 2 s for 3 s, up, down again at 7 s for 2 s, then up to the end (12 s).
    ( sleep 2; kill -9 "$(cat "$work/primary.pid")"; sleep 3; start_mock primary "$primary"
      sleep 2; kill -9 "$(cat "$work/primary.pid")"; sleep 2; start_mock primary "$primary"
      sleep 60 ) &
    pids+=($!)
    killer=$!
  fi
  KEYGATE_URL="http://127.0.0.1:$port" KEYGATE_KEY_ID=load.k1 KEYGATE_SECRET="$secret" \
    KEYGATE_FLOOD_KEY_ID=flood.k1 KEYGATE_FLOOD_SECRET="$flood_secret" \
    "$k6" run --quiet --no-usage-report "$here/$scenario.js" || status=1
  if [ "$scenario" = reload-admin ]; then
    wait "$changer" 2>/dev/null || true
    made="$(get "http://127.0.0.1:$admin/metrics" | awk '/^keygate_config_generation / {print $2}')"
    echo "reload-admin: config generation $made after the admin changes"
    if [ -s "$work/admin.err" ]; then
      cat "$work/admin.err" >&2; status=1
    fi
    if grep -q "$admin_secret" "$work/keygate.log" "$work/audit.jsonl"; then
      echo "the admin secret appeared in keygate's logs" >&2; status=1
    fi
  fi
  if [ "$scenario" = failover ]; then
    kill "$killer" 2>/dev/null || true
    served="$(mock_count "$backup")"
    counted="$(get "http://127.0.0.1:$admin/metrics" | python3 -c '
import sys
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in sys.stdin
    if l.startswith("keygate_upstream_fallbacks_total{") and "route=\"/failover/\"" in l)))')"
    after="$(mock_count "$primary")"
    echo "failover: the backup served $served, keygate counted $counted fallbacks; the restarted primary served $after"
    if [ "$served" -eq 0 ] || [ "$served" != "$counted" ] || [ "$after" -eq 0 ]; then
      echo "failover: the fallback counter does not match what the backup served" >&2; status=1
    fi
  fi
done
if grep -q -e "$secret" -e "$flood_secret" "$work/keygate.log" "$work/audit.jsonl"; then
  echo "a secret appeared in keygate's logs" >&2; status=1
fi
exit $status
