#!/usr/bin/env python3
"""Active health checks for open-source nginx: keeps the replicas of deploy/nginx/loraland.conf's upstream in step
with their /health.

Every --interval seconds it asks each replica's /health. A replica is up when it answers 200 with status "ok"
(its model is loaded and its batching loop beats); loading, stalled, stopped or unreachable, it is `down`. The
list goes to --out as nginx `server` lines, written whole and renamed into place, and nginx is reloaded (graceful:
open streams finish on the old workers) only when the list changed. Python's standard library only.

    health-sync.py --out /etc/nginx/loraland-upstream.conf 10.0.0.11:3000 10.0.0.12:3000
    health-sync.py --once ...   # write the list once and exit (before nginx first starts)
"""

import argparse
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
    except (OSError, ValueError):
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
    p.add_argument("--reload", default="nginx -s reload", help="the command that reloads nginx")
    p.add_argument("--once", action="store_true", help="write the list once, do not reload, exit")
    args = p.parse_args()

    current = open(args.out).read() if os.path.exists(args.out) else None
    while True:
        up = {r: healthy(r, args.timeout) for r in args.replicas}
        text = upstream(args.replicas, up)
        if text != current:
            write(args.out, text)
            current = text
            state = ", ".join(f"{r} {'up' if ok else 'down'}" for r, ok in up.items())
            print(f"health-sync: {state}", flush=True)
            if args.once:
                return
            done = subprocess.run(shlex.split(args.reload), capture_output=True, text=True)
            if done.returncode != 0:
                print(f"health-sync: `{args.reload}` failed: {done.stderr.strip()}", file=sys.stderr, flush=True)
        elif args.once:
            return
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
