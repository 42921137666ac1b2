#!/usr/bin/env bash
# Idle keep-alive client connections: bench/idle.sh [BINARY]
# BENCH_IDLE connections (default 10,000) each send one request and then stay open, idle, to
# keygate (make bench's config: bearer auth, 10,000 sites; BINARY, default
# target/release/keygate), to the bare Pingora proxy (target/release/examples/bare_proxy) and to
# nginx proxy_pass, all in front of one nginx upstream. Reports each proxy's RSS before and
# with the connections open, and the difference per connection. Raises the open-files limit
# of this shell (and so of the proxies) to its hard limit, which must leave room for them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. bench/common.sh
n="${BENCH_IDLE:-10000}"
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -gt $((n + 1000)) ] || {
  echo "open-files limit $(ulimit -n) is too low for $n connections" >&2; exit 1; }
bench_setup
UP=$(free_port); NGX=$(free_port); BARE=$(free_port); KG=$(free_port); ADMIN=$(free_port)
nginx_conf "$work" "$UP" "  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX;
    keepalive_timeout 600s;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }" | sed "s/worker_connections 8192/worker_connections $((n + 2000))/" > "$work/nginx.conf"
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
target/release/examples/bare_proxy "127.0.0.1:$BARE" "127.0.0.1:$UP" 2 > "$work/bare.log" 2>&1 &
pids+=($!)
bench_config "$work" kg "$KG" "$UP" "$ADMIN"
# All connections come from one address: lift the connection caps (10,000; 256 per address).
sed -i "s/^  threads: 2\$/  threads: 2\n  keepalive_timeout_s: 600\n  max_connections: $((n + 1000))\n  max_connections_per_ip: $((n + 1000))/" "$work/kg.yaml"
"${1:-target/release/keygate}" serve -c "$work/kg.yaml" > "$work/kg.log" 2>&1 &
pids+=($!)
for p in "$UP" "$NGX" "$BARE" "$KG"; do wait_port "$p"; done
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# The nginx worker is the child of the master started above.
ngx_worker=$(pgrep -P "$(cat "$work/nginx.pid")")
cat > "$work/hold.py" <<'PY'
import asyncio, os, sys
port, n, token, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
req = (b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
       b"Authorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
       % (port, token.encode(), len(body), body))
async def one(sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req)
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"answer: {head[:80]!r}")
        length = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
        await r.readexactly(int(length[0].split(b":")[1]))
        return w
async def main():
    sem = asyncio.Semaphore(200)
    writers = await asyncio.gather(*(one(sem) for _ in range(n)))
    open(flag, "w").write(str(len(writers)))
    await asyncio.sleep(3600)
asyncio.run(main())
PY
# hold PORT COUNT: COUNT connections to PORT, one request each, kept open (in the background,
# its pid in $holder) until killed; $work/held is written once they are all open.
hold() {
  rm -f "$work/held"
  python3 "$work/hold.py" "$1" "$2" "$(cat "$work/bearer")" "$work/held" &
  holder=$!
  pids+=("$holder")
  until [ -s "$work/held" ]; do
    kill -0 "$holder" 2>/dev/null || { echo "the client failed" >&2; exit 1; }
    sleep 0.2
  done
}
echo "idle keep-alive connections: $n (one request each, then idle)"
for target in keygate:"$KG":"${pids[2]}" pingora:"$BARE":"${pids[1]}" nginx:"$NGX":"$ngx_worker"; do
  IFS=: read -r name port pid <<< "$target"
  # Warm-up: buffers and pools that the first connections allocate once are not per connection.
  hold "$port" "$((n < 1000 ? n : 1000))"
  kill "$holder"; wait "$holder" 2>/dev/null || true
  sleep 1
  before=$(rss_kb "$pid")
  hold "$port" "$n"
  sleep 1
  during=$(rss_kb "$pid")
  kill "$holder"; wait "$holder" 2>/dev/null || true
  python3 -c "import sys; b, d, n = map(int, sys.argv[1:4]); print(f'{sys.argv[4]}: RSS {b / 1024:.0f} MB before, {d / 1024:.0f} MB with the connections open: {(d - b) / n:.1f} KB per idle connection')" "$before" "$during" "$n" "$name"
done
