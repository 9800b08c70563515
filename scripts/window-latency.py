#!/usr/bin/env python3
"""Window end -> queryable latency of a critical 1 s aggregation.

A sender posts 100 events every 20 ms stamped with the current time (so each window
closes as soon as the first event past its end is processed); a poller queries the
newest window every 10 ms and notes, for each window, how long after its end its row
first answered. Prints p50/p99/max over the windows seen.

Usage: window-latency.py URL TOKEN SECONDS
"""
import json
import sys
import threading
import time
import urllib.request

url, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
headers = {"Authorization": f"Bearer {token}"}
stop = time.time() + seconds


def post(path, body):
    req = urllib.request.Request(url + path, data=body, headers=headers)
    return urllib.request.urlopen(req).read()


def sender():
    i = 0
    while time.time() < stop + 1.5:
        now = int(time.time() * 1000)
        body = "".join(
            json.dumps({"ts": now, "service": f"s{j % 4}", "ms": (i * 7 + j) % 500, "user": f"u{j}"}) + "\n"
            for j in range(100)
        ).encode()
        post("/api/v1/logs?stream=app", body)
        i += 1
        time.sleep(0.02)


threading.Thread(target=sender, daemon=True).start()
first_seen = {}
sql = json.dumps({"sql": "SELECT DISTINCT CAST(window_end AS BIGINT) FROM aggregates"}).encode()
while time.time() < stop:
    t = time.time() * 1000
    rows = json.loads(post("/api/v1/query", sql))["rows"]
    for (end,) in rows:
        first_seen.setdefault(end, t)
    time.sleep(0.01)
# The first window may have started before the sender: skip it and the last one.
lat = sorted(first_seen[e] - e for e in sorted(first_seen)[1:-1])
if not lat:
    sys.exit("no window closed")
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"window end -> queryable over {len(lat)} windows: p50 {pick(0.5):.0f} ms, p99 {pick(0.99):.0f} ms, max {lat[-1]:.0f} ms")
