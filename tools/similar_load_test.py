#!/usr/bin/env python3
"""Closed-loop load on `GET /items/{id}/similar` of a running `visual-search serve`: N client
threads, each on one keep-alive connection, ask for the 10 items most like a random catalogue
item for D seconds; prints requests/s, p50 and p99 latency and the non-200 count.

  python3 tools/similar_load_test.py 127.0.0.1:8080 CLIENTS SECONDS [ROWS]
"""
import argparse
import http.client
import random
import threading
import time

ap = argparse.ArgumentParser(description="load on GET /items/{id}/similar")
ap.add_argument("addr", help="host:port of the server")
ap.add_argument("clients", type=int)
ap.add_argument("seconds", type=float)
ap.add_argument("rows", type=int, nargs="?", default=1000000, help="items in the index")
args = ap.parse_args()
addr, clients, dur, rows = args.addr, args.clients, args.seconds, args.rows
host, port = addr.split(":")
lat, errors = [], [0]
lock = threading.Lock()
def worker(seed):
    rnd = random.Random(seed)
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    end = time.time() + dur
    while time.time() < end:
        t = time.time()
        c.request("GET", f"/items/{rnd.randrange(rows)}/similar?k=10")
        r = c.getresponse(); r.read()
        with lock:
            if r.status == 200: lat.append(time.time() - t)
            else: errors[0] += 1
ts = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
t0 = time.time(); [t.start() for t in ts]; [t.join() for t in ts]; el = time.time() - t0
lat.sort()
print(f"clients {clients}: {len(lat)/el:.2f} req/s p50 {lat[len(lat)//2]*1e3:.0f} ms p99 {lat[int(len(lat)*0.99)]*1e3:.0f} ms errors {errors[0]}")
