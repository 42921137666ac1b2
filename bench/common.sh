# Shared by bench/run.sh and bench/ab.sh (sourced): ports, and the nginx upstream that serves
# one fixed chat completion.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

# nginx_conf WORK UP_PORT [EXTRA]: an nginx config (one worker, in the foreground, files under
# WORK) whose server on UP_PORT answers every request with the fixed chat completion; EXTRA is
# added inside the http block.
nginx_conf() {
  local work="$1" up="$2" extra="${3:-}"
  mkdir -p "$work"/{body,proxy,fcgi,uwsgi,scgi}
  local json='{"id":"chatcmpl-bench","object":"chat.completion","created":1767225600,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from nginx."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}'
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
