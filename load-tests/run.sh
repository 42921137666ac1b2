#!/usr/bin/env bash
# Run k6 scenarios against a real keygate and mock provider on loopback.
#   load-tests/run.sh [--binary PATH] SCENARIO...     (smoke steady ramp stream abuse reload)
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
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rand() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }

"$bin" mock-provider --listen 127.0.0.1:0 > "$work/mock.out" &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$work/mock.out" 2>/dev/null && break; sleep 0.1; done
mock="$(sed -n 's|.*http://||p' "$work/mock.out")"
port="$(free_port)"
secret="kgs_$(rand)"
printf '%s' "$secret" > "$work/site.secret"
# A second site on a tight tier, for the over-limit traffic of the abuse scenario.
flood_secret="kgs_$(rand)"
printf '%s' "$flood_secret" > "$work/flood.secret"
printf 'sk-load-%s' "$(rand)" > "$work/provider.key"
chmod 600 "$work"/*.secret "$work"/*.key
cat > "$work/keygate.yaml" <<YAML
server:
  listen: [{ addr: "127.0.0.1:$port" }]
  hostnames: ["127.0.0.1:$port"]
  threads: 2
  pid_file: $work/keygate.pid
  upgrade_sock: $work/upgrade.sock
upstreams:
  mock:
    kind: openai
    url: "http://$mock"
    credentials: [{ id: load-1, secret: "file:$work/provider.key" }]
routes:
  - { prefix: "/openai/", upstream: mock }
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
  KEYGATE_URL="http://127.0.0.1:$port" KEYGATE_KEY_ID=load.k1 KEYGATE_SECRET="$secret" \
    KEYGATE_FLOOD_KEY_ID=flood.k1 KEYGATE_FLOOD_SECRET="$flood_secret" \
    "$k6" run --quiet --no-usage-report "$here/$scenario.js" || status=1
done
if grep -q -e "$secret" -e "$flood_secret" "$work/keygate.log" "$work/audit.jsonl"; then
  echo "a secret appeared in keygate's logs" >&2; status=1
fi
exit $status
