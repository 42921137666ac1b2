#!/usr/bin/env bash
# Scale in sites: bench/sites.sh BINARY [BINARY...]
# make bench's config (bench_config) with BENCH_SITES sites (default 100,000), one bearer key
# each; with BENCH_SITE_FILES=K all but the first are in K files of a sites_dir instead
# (BENCH_SITE_FORMAT=json: `*.json` files, default yaml).
# For each binary in turn: `keygate check` time; start to ready (/readyz answers 200); RSS
# after start; a SIGHUP reload's time (the signal to the "config reloaded" log line) and RSS
# after it; then one bearer request of the last site through keygate (200 from the nginx
# upstream: the sites are served, not only loaded). BENCH_SITES_ROUNDS (default 1) repeats the
# binaries in turn. Times in seconds, RSS in MB (VmRSS).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. bench/common.sh
binaries_against_nginx "$@"
sites="${BENCH_SITES:-100000}"
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
# BENCH_SITE_FILES=K (default 0): the sites after the first in K files of a sites_dir.
files="${BENCH_SITE_FILES:-0}"
split_sites() {
  python3 - "$work" "$files" "${BENCH_SITE_FORMAT:-yaml}" <<'PY'
import json, os, re, sys
work, k, form = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = open(f"{work}/kg.yaml").read().splitlines(keepends=True)
rest = [l for l in lines if l.startswith("  - { id: s")]
head = [l for l in lines if not l.startswith("  - { id: s")]
os.makedirs(f"{work}/sites.d", exist_ok=True)
for f in os.listdir(f"{work}/sites.d"):
    os.remove(f"{work}/sites.d/{f}")
per = -(-len(rest) // k)
site = re.compile(r'  - \{ id: (\S+), tier: (\S+), keys: \[\{ id: (\S+), auth: bearer, hash: "(\S+)" \}\] \}')
def as_json(l):
    i, tier, key, h = site.match(l).groups()
    return {"id": i, "tier": tier, "keys": [{"id": key, "auth": "bearer", "hash": h}]}
for i in range(k):
    part = rest[i * per:(i + 1) * per]
    with open(f"{work}/sites.d/{i:04}.{form}", "w") as f:
        if form == "json":
            f.write("[\n" + ",\n".join(json.dumps(as_json(l)) for l in part) + "\n]\n")
        else:
            f.write("".join(l[2:] for l in part))
open(f"{work}/kg.yaml", "w").write("".join(head) + f"sites_dir: {work}/sites.d\n")
PY
}
echo "sites: $sites, in $files site files (${BENCH_SITE_FORMAT:-yaml})"
for round in $(seq "${BENCH_SITES_ROUNDS:-1}"); do
  for bin in "$@"; do
    port=$(free_port); admin=$(free_port)
    bench_config "$work" kg "$port" "$UP" "$admin" "$sites"
    [ "$files" -gt 0 ] && split_sites
    [ -n "${BENCH_SITES_KEEP:-}" ] && cp -r "$work" "$BENCH_SITES_KEEP"
    t0=$(now); "$bin" check -c "$work/kg.yaml" > /dev/null; t1=$(now)
    check=$(elapsed "$t0" "$t1")
    t0=$(now)
    RUST_LOG=info "$bin" serve -c "$work/kg.yaml" > "$work/kg.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_ready "$admin" "$pid" "$work/kg.log"
    t1=$(now)
    start=$(elapsed "$t0" "$t1")
    rss_start=$(rss_mb "$pid")
    t0=$(now)
    kill -HUP "$pid"
    until grep -q "config reloaded" "$work/kg.log"; do sleep 0.01; done
    t1=$(now)
    reload=$(elapsed "$t0" "$t1")
    sleep 0.5
    rss_reload=$(rss_mb "$pid")
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $((sites - 2))" \
      -H 'Content-Type: application/json' \
      -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' \
      "http://127.0.0.1:$port/openai/v1/chat/completions")
    [ "$code" = 200 ] || { echo "$bin: the last site's request answered $code" >&2; exit 1; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "$bin round $round: check ${check} s, start ${start} s, RSS ${rss_start} MB, reload ${reload} s, RSS after reload ${rss_reload} MB"
  done
done
