#!/usr/bin/env python3
"""Bounded load against `visual-search serve` on loopback, with real query photos.

N client threads each keep one HTTP/1.1 connection and POST photos (raw body) to /search in a
loop for --duration seconds; every reply is checked (200 and a JSON result list). Meanwhile the
server's resident memory is sampled each second from /proc/PID/status to show it stays flat.
Prints one JSON line: requests, errors, throughput, latency p50/p90/p99/max, RSS start/end/max.

  python3 tools/load_test.py --addr 127.0.0.1:8080 --pid PID \
      --photos ../shared/datasets/grocery-store/dataset/queries.csv --duration 60 --clients 4

With --vectors DIM instead of --photos, the clients POST random unit vectors of that dimension
to /search/vector: the index and the HTTP path measured without the model.
"""
import argparse
import csv
import http.client
import json
import os
import random
import threading
import time


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--pid", type=int, required=True, help="server process, for memory sampling")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--photos", help="a queries.csv / gallery.csv (img_path column)")
    what.add_argument("--vectors", type=int, metavar="DIM", help="random unit vectors to /search/vector")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args()
    if a.photos:
        root = os.path.dirname(a.photos)
        with open(a.photos) as f:
            paths = [os.path.join(root, r["img_path"]) for r in csv.DictReader(f)]
        bodies = [open(p, "rb").read() for p in paths]
        path, content_type = "/search", "image/jpeg"
    else:
        rng = random.Random(7)
        bodies = []
        for _ in range(256):
            v = [rng.gauss(0, 1) for _ in range(a.vectors)]
            n = sum(x * x for x in v) ** 0.5
            bodies.append(json.dumps({"embedding": [x / n for x in v]}).encode())
        path, content_type = "/search/vector", "application/json"
    host, port = a.addr.rsplit(":", 1)
    latencies, errors, lock = [], [], threading.Lock()
    stop = time.monotonic() + a.duration

    def client(offset):
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        i = offset
        while time.monotonic() < stop:
            body = bodies[i % len(bodies)]
            i += a.clients
            t0 = time.perf_counter()
            try:
                conn.request("POST", f"{path}?k={a.k}", body, {"Content-Type": content_type})
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200 and len(json.loads(data)["results"]) == a.k
                err = None if ok else f"{resp.status}: {data[:200]!r}"
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                err = repr(e)
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
            dt = time.perf_counter() - t0
            with lock:
                (errors.append(err) if err else latencies.append(dt))

    rss = [rss_mb(a.pid)]
    threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        rss.append(rss_mb(a.pid))
    elapsed = time.monotonic() - started
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else float("nan")  # noqa: E731
    print(json.dumps({
        "clients": a.clients, "seconds": round(elapsed, 1), "requests": len(lat) + len(errors),
        "errors": len(errors), "first_errors": errors[:3], "throughput_rps": round(len(lat) / elapsed, 2),
        "p50_ms": round(pct(0.50), 1), "p90_ms": round(pct(0.90), 1), "p99_ms": round(pct(0.99), 1),
        "max_ms": round(lat[-1] * 1e3, 1) if lat else None,
        "rss_mb_start": round(rss[0], 1), "rss_mb_end": round(rss[-1], 1), "rss_mb_max": round(max(rss), 1),
    }))


if __name__ == "__main__":
    main()
