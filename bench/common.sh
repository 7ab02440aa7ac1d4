# Shared by the bench scripts: build the deployed binary, a work folder cleaned up on exit with
# every background process, and small waits. Source it; it sets $binary and $work.
binary=$(deploy/build-release.sh 2>/dev/null)  # the binary deploy/ installs
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_file() { for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "$1 never appeared" >&2; exit 1; }

nginx_conf_start() { # dir workers: the lines both configurations begin with, up to inside `http {`
  cat <<CONF
worker_processes $2;
daemon off;
pid $1/pid;
error_log $1/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
CONF
}

# nginx in front of both benches: a backend answering {"ok":true} (EXTRA: more lines inside its
# server block; LISTEN: options of its listen line, `http2` for h2c) and a reverse proxy that
# attaches the bench token, as tokenproxy does.
start_nginx_backend() { # dir port [extra] [listen]
  mkdir -p "$1"
  { nginx_conf_start "$1" 1; cat <<CONF
  default_type application/json;
  server {
    listen 127.0.0.1:$2 ${4:-} backlog=4096;
    location / { return 200 '{"ok":true}\n'; }
    ${3:-}
  }
}
CONF
  } > "$1/nginx.conf"
  nginx -c "$1/nginx.conf" -p "$1" & pids+=($!)
}
start_nginx_proxy() { # dir port backend-port
  mkdir -p "$1"
  { nginx_conf_start "$1" "${NGINX_WORKERS:-2}"; cat <<CONF
  upstream backend { server 127.0.0.1:$3; keepalive 256; }
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-token-0123456789abcdef";
    }
  }
}
CONF
  } > "$1/nginx.conf"
  nginx -c "$1/nginx.conf" -p "$1" & pids+=($!)
}

# A tokenproxy folder for the benches: a store holding the bench token (valid two hours, so no
# refresh happens during a run) and a config in front of `backend`, with `token.port` (written by
# bench/token_endpoint.py) as the token endpoint.
write_tokenproxy_config() { # dir port backend-port token-port-file
  mkdir -p "$1"
  local expires; expires=$(python3 -c 'import datetime; print((datetime.datetime.now(datetime.timezone.utc)+datetime.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))')
  printf '{"version": 1, "access_token": "bench-token-0123456789abcdef", "refresh_token": "rt-0", "token_type": "Bearer", "expires_at": "%s"}\n' "$expires" > "$1/token.json"
  chmod 600 "$1/token.json"
  cat > "$1/config.json" <<CONF
{ "listen": "127.0.0.1:$2", "upstream": { "url": "http://127.0.0.1:$3" },
  "token": { "endpoint": "http://127.0.0.1:$(cat "$4")/token", "grant": "refresh_token", "clientAuth": "none",
             "clientId": "bench", "store": "token.json" },
  "admin": null, "log": { "level": "warning" } }
CONF
}

# Merges JSON into a tokenproxy config written above, object into object (other keys stay):
#   merge_tokenproxy_config DIR/config.json '{"upstream": {"protocol": "http2"}}'
merge_tokenproxy_config() { # config-file json
  python3 - "$1" "$2" <<'PY'
import json, sys
def merge(into, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
config = json.load(open(sys.argv[1]))
merge(config, json.loads(sys.argv[2]))
json.dump(config, open(sys.argv[1], "w"))
PY
}
