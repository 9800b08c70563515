#!/usr/bin/env bash
# TCP ingest lines/s: N RFC 5424 syslog messages (octet-counted) or NDJSON lines sent on
# one connection to a fresh open-mode `weir serve`, timed from the first byte until all
# of them are queryable.
#
#   scripts/bench-tcp.sh WEIR_BINARY [N]
set -euo pipefail
weir=${1:?usage: bench-tcp.sh WEIR_BINARY [N]}
n=${2:-200000}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for format in syslog ndjson; do
  rm -rf "$work/data"
  "$weir" serve --data-dir "$work/data" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
    --tcp-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 > "$work/out" 2> "$work/server.log" &
  server=$!
  until grep -q 'grpc listening' "$work/out" 2>/dev/null; do sleep 0.2; done
  http=$(sed -n 's/^weir: http listening on \([^ ]*\).*/\1/p' "$work/out")
  tcp=$(sed -n 's/^weir: tcp listening on \([^ ]*\).*/\1/p' "$work/out")
  python3 - "$format" "$n" "$http" "$tcp" <<'PY'
import json, socket, sys, time, urllib.request
fmt, n, http, tcp = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
frames = []
for i in range(n):
    if fmt == "syslog":
        msg = ("<165>1 2026-11-29T10:00:%02d.%03dZ web-%d checkout %d ID%d [req@1 id=\"%d\" path=\"/api/v1/pay\"] "
               "user user%d@example.com paid order %d" % (i % 60, i % 1000, i % 16, 1000 + i % 50, i % 7, i, i % 1000, i)).encode()
        frames.append(b"%d %s" % (len(msg), msg))
    else:
        frames.append(json.dumps({"n": i, "level": "info", "message": "user %d paid order %d" % (i % 1000, i)}).encode() + b"\n")
data = b"".join(frames)
host, port = tcp.rsplit(":", 1)
t0 = time.time()
with socket.create_connection((host, int(port))) as s:
    s.sendall(data)
def count():
    req = urllib.request.Request("http://%s/api/v1/query" % http, method="POST",
        data=json.dumps({"sql": "SELECT count(*) FROM logs"}).encode())
    return json.loads(urllib.request.urlopen(req).read())["rows"][0][0]
while count() < n:
    time.sleep(0.02)
dt = time.time() - t0
print("%s: %d messages (%d MB) queryable in %.2f s: %s lines/s" % (fmt, n, len(data) >> 20, dt, f"{n/dt:,.0f}"))
PY
  kill "$server"; wait "$server" || true
done
