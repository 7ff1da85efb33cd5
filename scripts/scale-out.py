"""The deployment of deploy/nginx on one machine, started and checked: N `loraland serve` replicas (the release
binary, the embedded SmolLM2 model and demo adapters, one thread each) sharing one PostgreSQL, behind Debian's
nginx with deploy/nginx/loraland.conf and deploy/nginx/health-sync.py, all on free loopback ports.

It checks, in order:
1. a replica still loading its model gets no traffic: generations sent through nginx while two replicas start
   are all answered, by the one that is ready;
2. a run started on one replica streams (from the stored rows, while the first one still generates), is voted on
   and is listed through the others and through nginx;
3. with one replica killed (SIGKILL) under the HTTP load command (`loraland bench http`) through nginx, every
   request either succeeds or fails with a status and a retry hint, no started run's rows are lost, every pane's
   stream ends (done, or interrupted when its replica died), and the replica, restarted, takes traffic again;
4. the load command's throughput through nginx at N replicas and at one (printed, and written to --json; not
   asserted: on a machine with fewer cores than replicas the replicas share them).

Run by scripts/scale-out.sh (which installs nginx and starts the PostgreSQL), from `make test`.
"""

import argparse
import http.client
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "loraland"
MODEL = ROOT / "data" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
HEALTH_SYNC = ROOT / "deploy" / "nginx" / "health-sync.py"
NGINX_CONF = ROOT / "deploy" / "nginx" / "loraland.conf"
# A run whose panes both write a while (code), so that a second replica can open it mid-generation.
RUN = {
    "task": "magicoder",
    "inputs": {"problem": "Write a function that returns the n-th Fibonacci number.", "lang": "Python"},
    "params": {"max_new_tokens": 48, "temperature": 0.0, "top_p": 1.0, "seed": 0},
    "panes": ["magicoder", None],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(addr, method, path, body=None, headers=None, timeout=60):
    """(status, headers, body bytes) of one request; the connection is closed after."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
        hdrs = {"accept": "application/json", **(headers or {})}
        if body is not None and "content-type" not in hdrs:
            hdrs["content-type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


def server_fn(addr, name, cookie, form=None):
    from urllib.parse import urlencode

    hdrs = {"content-type": "application/x-www-form-urlencoded", "cookie": cookie}
    status, _, body = request(addr, "POST", f"/api/{name}", urlencode(form or {}), hdrs)
    assert status == 200, f"{name} on {addr}: {status} {body[:300]!r}"
    return json.loads(body)


def start_run(addr, cookie=None, run=None):
    """A visitor's run (a new visitor's without a cookie): (id, the session cookie)."""
    hdrs = {"cookie": cookie} if cookie else {}
    status, res_hdrs, body = request(addr, "POST", "/api/start_run", {"request": run or RUN}, hdrs)
    assert status == 200, f"start_run on {addr}: {status} {body[:300]!r}"
    return json.loads(body), cookie or res_hdrs["set-cookie"].split(";")[0]


def events(addr, run_id, cookie, timeout=120):
    """A run stream's pane events, to its `end`."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request("GET", f"/runs/{run_id}/stream", headers={"cookie": cookie, "accept": "text/event-stream"})
    res = conn.getresponse()
    assert res.status == 200, f"stream of {run_id} on {addr}: {res.status}"
    out, event, data = [], "message", []
    try:
        for raw in res:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line == "":
                if event == "end":
                    return out
                if data:
                    out.append(json.loads("\n".join(data)))
                event, data = "message", []
    finally:
        conn.close()
    raise AssertionError(f"the stream of {run_id} on {addr} ended without `end`: {out}")


def pane_text(evs, pane):
    return "".join(e["text"] for e in evs if e.get("pane") == pane and e.get("type") == "text")


def pane_status(evs, pane):
    found = [e["status"] for e in evs if e.get("pane") == pane and e.get("type") == "status"]
    return found[-1] if found else None


class Deployment:
    def __init__(self, args, tmp):
        self.tmp = tmp
        self.db_url = args.database_url
        self.replicas = [f"127.0.0.1:{free_port()}" for _ in range(args.replicas)]
        self.procs = {}
        self.nginx_addr = f"127.0.0.1:{free_port()}"
        self.nginx_dir = tmp / "nginx"
        self.upstream = self.nginx_dir / "loraland-upstream.conf"
        self.access_log = tmp / "nginx-logs" / "loraland.access.log"
        self.sync = None
        self.nginx = None

    # --- replicas
    def start(self, i):
        addr = self.replicas[i]
        log = open(self.tmp / f"replica-{i}.log", "ab")
        env = {**os.environ, "RAYON_NUM_THREADS": "1", "RUST_LOG": "info"}
        cmd = [str(BIN), "serve", "--addr", addr, "--database-url", self.db_url, "--trust-proxy",
               "--model", str(MODEL), "--data-dir", str(self.tmp / f"data-{i}"),
               # All the test's traffic comes from one address: lift the per-client limits above the load.
               "--client-requests-per-minute", "100000", "--client-concurrency", "1000", "--session-concurrency", "64"]
        self.procs[i] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, i, sig=signal.SIGTERM):
        p = self.procs.pop(i, None)
        if p and p.poll() is None:
            p.send_signal(sig)
            p.wait(60)

    def in_upstream(self, i):
        """Whether health-sync has put replica i up in nginx's list."""
        text = self.upstream.read_text() if self.upstream.exists() else ""
        return re.search(rf"^server {re.escape(self.replicas[i])} max_fails", text, re.M) is not None

    def alive(self):
        """Stops the check, with its log, if a replica exited that should be running."""
        for i, p in self.procs.items():
            if p.poll() is not None:
                log = (self.tmp / f"replica-{i}.log").read_text()[-3000:]
                sys.exit(f"replica {i} exited ({p.returncode}):\n{log}")

    def wait(self, what, cond, timeout=120):
        end = time.time() + timeout
        while time.time() < end:
            if cond():
                return
            self.alive()
            time.sleep(0.2)
        sys.exit(f"timed out waiting for {what}")

    def wait_routed(self, indices, down=()):
        self.wait(f"replicas {list(indices)} up and {list(down)} down in nginx's list",
                  lambda: all(self.in_upstream(i) for i in indices) and not any(self.in_upstream(i) for i in down))
        time.sleep(1.0)  # health-sync reloads nginx after writing the list; the new workers take over

    # --- nginx and its health checks
    def start_proxy(self):
        (self.tmp / "nginx-logs").mkdir()
        self.nginx_dir.mkdir()
        conf = NGINX_CONF.read_text()
        conf = conf.replace("listen 80;", f"listen {self.nginx_addr};", 1)
        conf = conf.replace("/var/log/nginx/", f"{self.tmp / 'nginx-logs'}/")
        (self.nginx_dir / "loraland.conf").write_text(conf)
        temp = self.tmp / "nginx-temp"
        temp.mkdir()
        (self.nginx_dir / "nginx.conf").write_text(f"""
daemon off;
worker_processes 2;
pid {self.nginx_dir}/nginx.pid;
error_log {self.tmp}/nginx-logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    access_log off;
    include loraland.conf;
}}
""")
        base = [sys.executable, str(HEALTH_SYNC), "--out", str(self.upstream), *self.replicas]
        subprocess.run([*base, "--once"], check=True, stdout=subprocess.DEVNULL)
        nginx = ["nginx", "-p", str(self.nginx_dir), "-c", str(self.nginx_dir / "nginx.conf"), "-e",
                 str(self.tmp / "nginx-logs" / "error.log")]
        subprocess.run([*nginx, "-t", "-q"], check=True)
        self.nginx = subprocess.Popen(nginx)
        reload = " ".join([*nginx, "-s", "reload"])
        sync_log = open(self.tmp / "health-sync.log", "ab")
        self.sync = subprocess.Popen([*base, "--interval", "0.5", "--reload", reload], stdout=sync_log,
                                     stderr=subprocess.STDOUT)
        self.wait("nginx to listen", lambda: self._answers(self.nginx_addr))

    @staticmethod
    def _answers(addr):
        try:
            request(addr, "GET", "/health", timeout=2)
            return True
        except OSError:
            return False

    def routed_to(self):
        """upstream address -> requests, from nginx's access log."""
        counts = {}
        for line in self.access_log.read_text().splitlines() if self.access_log.exists() else []:
            m = re.search(r"upstream=(\S+)", line)
            if m:
                for a in m.group(1).split(","):
                    counts[a.strip()] = counts.get(a.strip(), 0) + 1
        return counts

    def close(self):
        for i in list(self.procs):
            self.stop(i, signal.SIGKILL)
        for p in (self.sync, self.nginx):
            if p and p.poll() is None:
                p.terminate()
                p.wait(10)

    def psql(self, sql):
        out = subprocess.run(["psql", self.db_url, "-XtA", "-c", sql], check=True, capture_output=True, text=True)
        return out.stdout.removesuffix("\n")  # psql's line end; the value's own whitespace stays

    def bench(self, name, users, duration):
        out = self.tmp / f"bench-{name}.json"
        cmd = [str(BIN), "bench", "http", "--url", f"http://{self.nginx_addr}", "--users", str(users),
               "--duration", str(duration), "--think", "0", "--warmup", "0", "--json", str(out)]
        return subprocess.Popen(cmd, cwd=ROOT, stdout=open(self.tmp / f"bench-{name}.log", "wb"),
                                stderr=subprocess.STDOUT), out


def check_loading_gets_no_traffic(d):
    d.start(0)
    d.wait_routed([0])
    for i in range(1, len(d.replicas)):
        d.start(i)
    answers = {}
    while not all(d.in_upstream(i) for i in range(len(d.replicas))):
        status, hdrs, body = request(d.nginx_addr, "POST", "/generate",
                                     {"inputs": "Hello", "parameters": {"max_new_tokens": 1}})
        answers[status] = answers.get(status, 0) + 1
        assert status == 200, f"a generation while replicas load: {status} {body[:200]!r}"
        d.alive()
    time.sleep(0.5)
    print(f"1. while {len(d.replicas) - 1} replicas loaded their model, {answers.get(200, 0)} generations through "
          f"nginx were all answered (200); nginx's log: {d.routed_to()}")


def admitted(addr):
    """The generations a replica's engine has admitted (its /metrics)."""
    _, _, body = request(addr, "GET", "/metrics")
    m = re.search(rb"^loraland_engine_requests_total (\S+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def check_cross_replica(d):
    a, b = d.replicas[0], d.replicas[1]
    c = d.replicas[2] if len(d.replicas) > 2 else b
    long_run = {**RUN, "params": {**RUN["params"], "max_new_tokens": 200}}
    run_id, cookie = start_run(a, run=long_run)
    # A's stream starts the generation; once A has claimed both panes and one still generates, B opens the run and
    # follows it. (Opened while a pane was still pending, B could claim that pane itself: one generation each way.)
    on_a = {}
    t = threading.Thread(target=lambda: on_a.update(ev=events(a, run_id, cookie)))
    t.start()
    claimed = (f"SELECT COUNT(*) FILTER (WHERE status = 'pending') = 0 AND COUNT(*) FILTER (WHERE status = 'running') "
               f">= 1 FROM outputs WHERE run_id = '{run_id}'")
    d.wait("both panes claimed by A, one generating", lambda: d.psql(claimed) == "t", timeout=60)
    b_before = admitted(b)
    on_b = events(b, run_id, cookie)
    t.join()
    assert admitted(b) == b_before, "B started no generation of its own"
    for pane in (0, 1):
        assert pane_status(on_a["ev"], pane) == "done", on_a
        assert pane_status(on_b, pane) == "done", on_b
        assert pane_text(on_b, pane) and pane_text(on_b, pane) == pane_text(on_a["ev"], pane), (on_a, on_b)
    voted = server_fn(c, "vote", cookie, {"run_id": run_id, "pane": "0"})
    rates = server_fn(d.nginx_addr, "win_rates", cookie)
    assert {"adapter": "magicoder", "votes": 1, "wins": 1} in rates, rates
    for addr in (a, b, c, d.nginx_addr):
        page = server_fn(addr, "list_runs", cookie, {"page": "0"})
        assert page["runs"][0]["id"] == run_id and page["runs"][0]["finished"] == 2, (addr, page)
    status, _, body = request(d.nginx_addr, "GET", f"/r/{run_id}", headers={"accept": "text/html"})
    assert status == 200 and RUN["inputs"]["problem"].encode() in body
    print(f"2. run {run_id}: started on {a}, followed on {b} mid-generation to the same text "
          f"({len(pane_text(on_b, 0))} and {len(pane_text(on_b, 1))} characters) without a generation there, voted on "
          f"{c} ({voted}), listed through every replica and nginx, its shared page through nginx")


def check_kill_under_load(d, duration):
    victim = len(d.replicas) - 1
    bench, out = d.bench("kill", users=8, duration=duration)
    # Visitors (a session each, as browsers keep their cookie) start runs through nginx all along; each page opens
    # its run's stream at once, which starts the generation on whichever replica nginx picks.
    visitors = [start_run(d.nginx_addr)[1] for _ in range(4)]
    started, refused, watchers, first = [], 0, [], {}

    def watch(run_id, cookie, addr):
        try:
            evs = events(addr, run_id, cookie, timeout=duration + 120)
            first[run_id] = "ended" if all(pane_status(evs, p) for p in (0, 1)) else "no status"
        except (OSError, http.client.HTTPException, AssertionError):
            first[run_id] = "cut"  # its replica died under it

    def open_page(run):
        started.append(run)
        t = threading.Thread(target=watch, args=(*run, d.nginx_addr))
        t.start()
        watchers.append(t)

    stop = time.time() + duration - 3
    killed_at = time.time() + duration / 3
    doomed = None
    while time.time() < stop:
        status, hdrs, body = request(d.nginx_addr, "POST", "/api/start_run", {"request": RUN},
                                     {"cookie": visitors[len(started) % len(visitors)]})
        if status == 200:
            open_page((json.loads(body), visitors[len(started) % len(visitors)]))
        else:
            # A start is a POST: when its replica dies with it, a clean refusal with a retry hint.
            assert "retry-after" in hdrs, (status, hdrs, body)
            refused += 1
        if doomed is None and time.time() >= killed_at:
            # One run is sure to be generating on the victim when it dies: a long one, opened there directly.
            long_run = {**RUN, "params": {**RUN["params"], "max_new_tokens": 400}}
            doomed = start_run(d.replicas[victim], visitors[0], long_run)
            started.append(doomed)
            t = threading.Thread(target=watch, args=(*doomed, d.replicas[victim]))
            t.start()
            watchers.append(t)
            running = f"SELECT COUNT(*) FROM outputs WHERE run_id = '{doomed[0]}' AND status = 'running' " \
                      "AND text <> ''"
            d.wait("the long run writing on the victim", lambda: int(d.psql(running)) >= 1, timeout=60)
            d.stop(victim, signal.SIGKILL)
            stored = [d.psql(f"SELECT text FROM outputs WHERE run_id = '{doomed[0]}' AND pane = {p}") for p in (0, 1)]
            print(f"   killed replica {victim} ({d.replicas[victim]}) with SIGKILL under load, run {doomed[0]} "
                  f"generating on it")
        time.sleep(0.7)
    assert bench.wait(duration + 600) == 0, (d.tmp / "bench-kill.log").read_text()
    summary = json.loads(out.read_text())
    ok = summary["statuses"].get("200", 0)
    unclean = summary["errors"] - summary["errors_with_retry_hint"]
    print(f"   load through nginx: {summary['requests']} requests, {ok} succeeded, statuses {summary['statuses']}, "
          f"{summary['errors_with_retry_hint']} failed with Retry-After, {unclean} otherwise")
    assert ok > 0 and unclean == 0, summary
    for t in watchers:
        t.join()
    cut = sum(1 for v in first.values() if v == "cut")
    assert first[doomed[0]] == "cut", first
    assert all(v in ("ended", "cut") for v in first.values()), first
    # Every started run's rows are there, and every pane's stream ends, opened again through nginx (as a reload
    # does): the doomed run's panes end `interrupted` once their rows have gone unwritten for 20 s.
    ends, kept = {}, 0
    for run_id, cookie in started:
        n = int(d.psql(f"SELECT COUNT(*) FROM outputs WHERE run_id = '{run_id}'"))
        assert n == 2, f"run {run_id}: {n} pane rows"
        evs = events(d.nginx_addr, run_id, cookie, timeout=120)
        for pane in (0, 1):
            s = pane_status(evs, pane)
            assert s in ("done", "interrupted"), (run_id, pane, evs)
            assert s == "done" or run_id == doomed[0] or first[run_id] == "cut", (run_id, pane, evs)
            if s == "done":
                assert pane_text(evs, pane), (run_id, pane, evs)
            ends[s] = ends.get(s, 0) + 1
        if run_id == doomed[0]:
            # The panes it was writing end interrupted, with the text stored before the kill.
            cut_off = [p for p in (0, 1) if pane_status(evs, p) == "interrupted"]
            assert cut_off, evs
            for p in cut_off:
                assert pane_text(evs, p).startswith(stored[p]), ("the text before the kill is kept", stored, evs)
            kept = sum(len(stored[p]) for p in cut_off)
    runs = int(d.psql("SELECT COUNT(*) FROM runs"))
    assert runs >= len(started) + 1, (runs, len(started))
    print(f"   {len(started)} runs started during it ({refused} refused with Retry-After; {cut} streams cut by the "
          f"kill): all stored with both panes; opened again, their panes ended {ends}; the one killed mid-generation "
          f"kept its text ({kept} characters) and ended interrupted; {runs} runs in the database")
    # Restarted, it is checked back in and takes traffic.
    before = d.routed_to().get(d.replicas[victim], 0)
    d.start(victim)
    d.wait_routed(range(len(d.replicas)))
    sent, end = 0, time.time() + 30
    while d.routed_to().get(d.replicas[victim], 0) == before:
        assert time.time() < end, f"the restarted replica got none of {sent} requests: {d.routed_to()}"
        status, _, _ = request(d.nginx_addr, "POST", "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 1}})
        assert status == 200
        sent += 1
    after = d.routed_to().get(d.replicas[victim], 0)
    print(f"3. replica {victim} restarted: back in nginx's list, it answered {after - before} of the next {sent} "
          "requests")


def postgres_cpu_seconds():
    """CPU time of this machine's PostgreSQL processes so far (the server and its backends)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            if "(postgres" in fields[0]:
                parts = fields[1].split()
                total += (int(parts[11]) + int(parts[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def check_throughput(d, duration, users):
    results = {}
    n = len(d.replicas)
    for label, live in (("1", [0]), (str(n), list(range(n)))):
        for i in range(n):
            if i in live and i not in d.procs:
                d.start(i)
            elif i not in live:
                d.stop(i)
        d.wait_routed(live, down=[i for i in range(n) if i not in live])
        cpu0, t0 = postgres_cpu_seconds(), time.time()
        bench, out = d.bench(f"replicas-{label}", users=users, duration=duration)
        assert bench.wait(duration + 600) == 0, (d.tmp / f"bench-replicas-{label}.log").read_text()
        results[label] = json.loads(out.read_text())
        results[label]["postgres_cores"] = (postgres_cpu_seconds() - cpu0) / (time.time() - t0)
        r = results[label]
        print(f"   {label} replica(s): {r['requests']} requests, {r['tokens_per_second']:.1f} generated tokens/s, "
              f"{r['requests_per_second']:.2f} req/s, p50 {r['latency_seconds']['p50']:.1f} s, statuses {r['statuses']}, "
              f"PostgreSQL at {100 * r['postgres_cores']:.1f}% of a core")
        assert r["statuses"].get("200", 0) > 0 and r["errors"] == 0, r
    ratio = results[str(n)]["tokens_per_second"] / results["1"]["tokens_per_second"]
    cores = os.cpu_count()
    print(f"4. throughput through nginx, {n} replicas against 1: {ratio:.2f}x generated tokens/s ({users} users, "
          f"{duration} s each, one thread per replica, {cores} cores: at most {min(n, cores)}x here)")
    return {"replicas": n, "cores": cores, "users": users, "duration_seconds": duration, "ratio": ratio,
            "one": results["1"], "all": results[str(n)]}


def measure_database(d, duration, visitors):
    """Visitors running runs through nginx (start, stream to the end, again) for `duration`: the database's share."""
    end = time.time() + duration
    done = []

    def visitor():
        cookie = None
        while time.time() < end:
            run_id, cookie = start_run(d.nginx_addr, cookie)
            evs = events(d.nginx_addr, run_id, cookie)
            assert all(pane_status(evs, p) == "done" for p in (0, 1)), evs
            done.append(run_id)

    cpu0, t0 = postgres_cpu_seconds(), time.time()
    threads = [threading.Thread(target=visitor) for _ in range(visitors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    cores = (postgres_cpu_seconds() - cpu0) / wall
    print(f"5. {visitors} visitors running runs through nginx for {wall:.0f} s: {len(done)} runs ({2 * len(done)} panes) "
          f"done, {len(done) / wall:.2f} runs/s; PostgreSQL used {100 * cores:.1f}% of a core")
    return {"visitors": visitors, "runs": len(done), "seconds": wall, "postgres_cores": cores}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--duration", type=int, default=20, help="seconds of each load")
    p.add_argument("--users", type=int, default=12, help="virtual users of the throughput load")
    p.add_argument("--database-url", default=os.environ.get("LORALAND_TEST_POSTGRES"))
    p.add_argument("--json", type=pathlib.Path, help="write the throughput figures here")
    p.add_argument("--keep", action="store_true", help="keep the logs' folder")
    args = p.parse_args()
    if args.replicas < 2:
        sys.exit("scale-out: at least 2 replicas")
    if not args.database_url:
        sys.exit("scale-out: no PostgreSQL (run through scripts/scale-out.sh, or give --database-url)")
    for need, how in ((BIN, "make site"), (MODEL, "make fetch-model")):
        if not need.exists():
            sys.exit(f"scale-out: {need} is missing: run `{how}` first")
    if not shutil.which("nginx"):
        sys.exit("scale-out: nginx is not installed (scripts/scale-out.sh installs Debian's)")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="loraland-scale."))
    d = Deployment(args, tmp)
    ok = False
    try:
        d.start_proxy()
        status, hdrs, body = request(d.nginx_addr, "POST", "/generate", {"inputs": "Hi"})
        assert status == 503 and hdrs.get("retry-after") == "1", (status, hdrs, body)
        print(f"0. nginx on {d.nginx_addr}, no replica up yet: 503 with Retry-After ({body.decode().strip()})")
        check_loading_gets_no_traffic(d)
        check_cross_replica(d)
        check_kill_under_load(d, args.duration)
        figures = check_throughput(d, args.duration, args.users)
        figures["database"] = measure_database(d, args.duration, visitors=8)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        ok = True
    finally:
        d.close()
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"scale-out: logs in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    main()
