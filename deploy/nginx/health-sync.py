#!/usr/bin/env python3
"""Active health checks for open-source nginx: keeps the replicas of deploy/nginx/loraland.conf's upstream in step
with their /health.

Every --interval seconds it asks each replica's /health. A replica comes up when it answers 200 with status "ok"
(its model is loaded and its batching loop beats), and goes down after --fall checks in a row that say otherwise
(loading, stalled, stopped, unreachable, garbled), so that one slow answer does not take it out. The list goes to
--out as nginx `server` lines, written whole and renamed into place, and nginx is reloaded (graceful: open streams
finish on the old workers) when the list changed, again at the next check if the reload failed. Python's standard
library only.

    health-sync.py --out /etc/nginx/loraland-upstream.conf 10.0.0.11:3000 10.0.0.12:3000
    health-sync.py --once ...   # write the list once and exit (before nginx first starts)
"""

import argparse
import http.client
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request

# Between two checks nginx's own passive check takes a replica out after one failed attempt, for five seconds.
UP = "server {} max_fails=1 fail_timeout=5s;"
DOWN = "server {} down;"


def healthy(replica, timeout):
    try:
        with urllib.request.urlopen(f"http://{replica}/health", timeout=timeout) as res:
            return res.status == 200 and json.load(res).get("status") == "ok"
    except (OSError, ValueError, http.client.HTTPException):
        return False


def upstream(replicas, up):
    lines = ["# Written by deploy/nginx/health-sync.py: the replicas whose /health is ok, the others down."]
    lines += [(UP if up[r] else DOWN).format(r) for r in replicas]
    return "\n".join(lines) + "\n"


def write(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("replicas", nargs="+", help="HOST:PORT of each `loraland serve`")
    p.add_argument("--out", required=True, help="the upstream file loraland.conf includes")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between checks")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds a /health may take")
    p.add_argument("--fall", type=int, default=2, help="failed checks in a row that take a replica out")
    p.add_argument("--reload", default="nginx -s reload", help="the command that reloads nginx")
    p.add_argument("--once", action="store_true", help="write the list once, do not reload, exit")
    args = p.parse_args()

    # What nginx runs now (None: unknown, so the first list is loaded), each replica's state and failures in a row.
    loaded = None
    up = {r: False for r in args.replicas}
    failures = {r: 0 for r in args.replicas}
    while True:
        for r in args.replicas:
            if healthy(r, args.timeout):
                up[r], failures[r] = True, 0
            else:
                failures[r] += 1
                if failures[r] >= args.fall or args.once:
                    up[r] = False
        text = upstream(args.replicas, up)
        if args.once:
            write(args.out, text)
            return
        if text != loaded:
            write(args.out, text)
            state = ", ".join(f"{r} {'up' if ok else 'down'}" for r, ok in up.items())
            done = subprocess.run(shlex.split(args.reload), capture_output=True, text=True)
            if done.returncode == 0:
                loaded = text
                print(f"health-sync: {state}", flush=True)
            else:
                print(f"health-sync: {state}, but `{args.reload}` failed (retried at the next check): "
                      f"{done.stderr.strip()}", file=sys.stderr, flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
