"""Load and soak: N clients for T seconds against the real server, with hostile connections.

What runs at the same time, all on loopback:
- mixed clients: /generate-graph, /forward-pass and /steer with fixed prompts and greedy,
  seeded settings, so every 200 can be compared with a reference taken sequentially before the
  load starts (a differing 200 is a "wrong result");
- slow uploaders: graphs uploaded to a local target that holds each PUT `--upload-delay`
  seconds before answering 200; the bytes it received are compared with the reference too;
- half-open connections (`--half-open`, half a head or half a body each), replaced whenever
  the server drops one after its read timeout;
- a /health probe every 0.25 s (10 s timeout), and the worker's RSS sampled every 0.5 s.

By default it starts `python -m neuronpedia_graph demo` itself (what `make run` starts), with
`UPLOAD_ALLOWED_HOSTS=127.0.0.1` so uploads to the local target are allowed where that setting
exists. `--url` (loopback only) points it at a running server instead; give `--secret` and, for
RSS figures, `--worker-pid`. It stops by itself after `--seconds` plus the in-flight requests.

Output: counts by endpoint and status, /health p50/p99, worker RSS at start, max and end, the
wrong results, and last the line
`errors=<5xx + wrong + requests without any response> health_p99_ms=<x> rss_growth_mb=<y>`.
A 503 with Retry-After is the server's designed answer while the model is busy: it is counted
("503 busy") but is not an error; any other 5xx is.

Run: `make bench-load` or `.venv/bin/python -m bench.load [--clients 16] [--seconds 60]`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests

from bench.live import HalfOpenSwarm, Server, demo_graph, percentile, rss_mb, started_server
from tests.fault_targets import QuietHandler, Target, serve

GRAPH = demo_graph("load")
FORWARD = {"prompt": "1 2 3 4 5 6"}
STEER = {
    "model_id": "demo",
    "prompt": "The city of Rome is in",
    "features": [
        {"layer": 0, "index": 0, "token_active_position": 1, "steer_position": 1, "delta": 1.0}
    ],
    "n_tokens": 3,
    "temperature": 0,
    "seed": 7,
}
MIX = (("/generate-graph", 0.4), ("/forward-pass", 0.35), ("/steer", 0.25))
HEALTH_TIMEOUT_S = 10.0
BUSY = "503 busy"
REQUEST_TIMEOUT_S = 300.0


def comparable_graph(doc: dict[str, Any]) -> dict[str, Any]:
    """Two runs of the same graph request differ only in their creation time."""
    doc.get("metadata", {}).get("info", {}).pop("create_time_ms", None)
    return doc


# ---------------------------------------------------------------- the slow upload target
@dataclass
class SlowTarget(Target):
    received: dict[str, bytes] = field(default_factory=dict)


@contextlib.contextmanager
def slow_target(delay: float, stop: threading.Event) -> Iterator[SlowTarget]:
    """A loopback S3 stand-in that reads each PUT and answers 200 only after `delay` seconds."""
    target = SlowTarget(url="")

    class Handler(QuietHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            target.received[self.path] = body
            stop.wait(delay)
            self.send_empty(200)

    with serve(Handler, target):
        yield target


# ---------------------------------------------------------------- the run
@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)
    no_response: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    health_timeouts: int = 0
    rss: list[float] = field(default_factory=list)

    def count(self, endpoint: str, res: Any) -> None:
        """Busy refusals (503 with Retry-After) are the designed answer, counted apart."""
        label = str(res.status_code)
        if res.status_code == 503 and res.headers.get("Retry-After"):
            label = BUSY
        with self.lock:
            self.statuses[(endpoint, label)] += 1


class Load:
    def __init__(self, server: Server, target: SlowTarget, args: argparse.Namespace) -> None:
        self.server = server
        self.target = target
        self.args = args
        self.tally = Tally()
        self.refs: dict[str, Any] = {}
        self.uploads_ok = True

    def post(self, session: requests.Session, path: str, body: dict[str, Any]) -> Any:
        return session.post(
            f"{self.server.base}{path}",
            data=orjson.dumps(body),
            headers={"x-secret-key": self.server.secret, "Content-Type": "application/json"},
            timeout=REQUEST_TIMEOUT_S,
        )

    def body_for(self, path: str) -> dict[str, Any]:
        return {"/generate-graph": GRAPH, "/forward-pass": FORWARD, "/steer": STEER}[path]

    def result_of(self, path: str, res: Any) -> Any:
        doc = orjson.loads(res.content)
        return comparable_graph(doc) if path == "/generate-graph" else doc

    def references(self) -> None:
        """Sequential results before any load: twice each, so nondeterminism shows here."""
        with requests.Session() as session:
            for path in ("/generate-graph", "/forward-pass", "/steer"):
                runs = []
                for _ in range(2):
                    res = self.post(session, path, self.body_for(path))
                    if res.status_code != 200:
                        raise RuntimeError(f"reference {path} failed: {res.status_code} {res.text}")
                    runs.append(self.result_of(path, res))
                if runs[0] != runs[1]:
                    raise RuntimeError(f"{path} is not deterministic: no reference possible")
                self.refs[path] = runs[0]
            res = self.upload(session)
            if res.status_code != 200:
                self.uploads_ok = False
                print(f"note: upload to the local target refused ({res.status_code}: {res.text})")

    def upload(self, session: requests.Session) -> Any:
        path = f"/bucket/{uuid.uuid4().hex}.json"
        res = self.post(session, "/generate-graph", {**GRAPH, "signed_url": self.target.url + path})
        if res.status_code == 200:
            body = self.target.received.pop(path, None)
            got = comparable_graph(orjson.loads(body)) if body else None
            if got != self.refs["/generate-graph"]:
                self.wrong("upload", "uploaded graph differs from the reference")
        return res

    def wrong(self, what: str, detail: str) -> None:
        with self.tally.lock:
            self.tally.wrong.append(f"{what}: {detail}")

    # -------------------------------------------------------------- actors
    def client(self, index: int, deadline: float) -> None:
        rng = random.Random(self.args.seed * 1000 + index)
        paths, weights = zip(*MIX, strict=True)
        with requests.Session() as session:
            while time.monotonic() < deadline:
                path = rng.choices(paths, weights)[0]
                try:
                    res = self.post(session, path, self.body_for(path))
                except requests.RequestException as exc:
                    with self.tally.lock:
                        self.tally.no_response[(path, type(exc).__name__)] += 1
                    continue
                self.tally.count(path, res)
                if res.status_code == 200 and self.result_of(path, res) != self.refs[path]:
                    self.wrong(path, "200 differs from the sequential reference")
                time.sleep(rng.uniform(0, 0.05))

    def uploader(self, deadline: float) -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                try:
                    res = self.upload(session)
                except requests.RequestException as exc:
                    with self.tally.lock:
                        self.tally.no_response[("upload", type(exc).__name__)] += 1
                    continue
                self.tally.count("/generate-graph (slow upload)", res)
                if res.status_code != 200:
                    time.sleep(0.2)

    def health(self, deadline: float) -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    ok = session.get(f"{self.server.base}/health", timeout=HEALTH_TIMEOUT_S).ok
                except requests.RequestException:
                    ok = False
                elapsed = (time.perf_counter() - started) * 1000
                with self.tally.lock:
                    self.tally.health_ms.append(elapsed if ok else HEALTH_TIMEOUT_S * 1000)
                    self.tally.health_timeouts += 0 if ok else 1
                time.sleep(0.25)

    def sample_rss(self, deadline: float, pid: int | None) -> None:
        while time.monotonic() < deadline:
            value = rss_mb(pid)
            if value is not None:
                with self.tally.lock:
                    self.tally.rss.append(value)
            time.sleep(0.5)

    def run(self, pid: int | None) -> tuple[float | None, float | None, HalfOpenSwarm]:
        args = self.args
        deadline = time.monotonic() + args.seconds
        stop = threading.Event()
        swarm = HalfOpenSwarm(self.server, args.half_open)
        rss_start = rss_mb(pid)
        uploaders = args.slow_uploaders if self.uploads_ok else 0
        threads = [
            threading.Thread(target=self.client, args=(i, deadline))
            for i in range(args.clients - uploaders)
        ]
        threads += [
            threading.Thread(target=self.uploader, args=(deadline,)) for _ in range(uploaders)
        ]
        threads += [
            threading.Thread(target=self.health, args=(deadline,)),
            threading.Thread(target=self.sample_rss, args=(deadline, pid)),
            threading.Thread(target=swarm.run_until, args=(deadline, stop)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT_S)
        stop.set()
        time.sleep(2.0)  # let the worker settle before the last RSS reading
        return rss_start, rss_mb(pid), swarm


def report(
    load: Load, swarm: HalfOpenSwarm, rss_start: float | None, rss_end: float | None
) -> None:
    tally = load.tally
    print("requests by endpoint and status:")
    for (endpoint, status), n in sorted(tally.statuses.items()):
        print(f"  {endpoint:32} {status:10} {n}")
    for (endpoint, kind), n in sorted(tally.no_response.items()):
        print(f"  {endpoint:32} no response ({kind})  {n}")
    answers = ", ".join(f"{status} x {n}" for status, n in sorted(swarm.answered.items()))
    print(f"half-open connections: {swarm.opened} opened; server answers: {answers or 'none yet'}")
    health = tally.health_ms
    p50, p99 = percentile(health, 0.5, -1.0), percentile(health, 0.99, -1.0)
    print(
        f"/health: {len(health)} probes, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(health, default=-1):.1f} ms, timeouts {tally.health_timeouts}"
    )
    if tally.rss and rss_start is not None and rss_end is not None:
        print(
            f"worker RSS: start {rss_start:.1f} MB, max {max(tally.rss):.1f} MB, "
            f"end {rss_end:.1f} MB"
        )
        quarter = max(1, len(tally.rss) // 4)
        maxima = [max(tally.rss[i : i + quarter]) for i in range(0, len(tally.rss), quarter)]
        print("worker RSS max per quarter of the run: " + ", ".join(f"{m:.1f}" for m in maxima))
        growth = rss_end - rss_start
    else:
        print("worker RSS: unknown (no worker pid)")
        growth = float("nan")
    print(f"wrong results: {len(tally.wrong)}")
    for line in tally.wrong[:10]:
        print(f"  {line}")
    five_xx = sum(
        n for (_, label), n in tally.statuses.items() if label.startswith("5") and label != BUSY
    )
    no_response = sum(tally.no_response.values())
    print(
        f"5xx (not counting {BUSY} with Retry-After): {five_xx}, wrong: {len(tally.wrong)}, "
        f"no response: {no_response}"
    )
    errors = five_xx + len(tally.wrong) + no_response
    print(f"errors={errors} health_p99_ms={p99:.1f} rss_growth_mb={growth:.1f}")


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    for info in socket.getaddrinfo(host, None):
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise SystemExit(f"error: {url} is not a loopback address; this benchmark stays local")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--half-open", type=int, default=64)
    parser.add_argument("--slow-uploaders", type=int, default=2, help="of the clients")
    parser.add_argument("--upload-delay", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="a running server on loopback (default: start one)")
    parser.add_argument("--secret", default=os.environ.get("SECRET"))
    parser.add_argument("--worker-pid", type=int)
    args = parser.parse_args()
    args.slow_uploaders = min(args.slow_uploaders, max(0, args.clients - 1))

    with contextlib.ExitStack() as stack:
        if args.url:
            check_loopback(args.url)
            if not args.secret:
                raise SystemExit("error: --url needs --secret (or SECRET in the environment)")
            server = Server(args.url.rstrip("/"), args.secret)
            pid = args.worker_pid
            origin = "given by --url"
        else:
            server = stack.enter_context(
                started_server({"UPLOAD_ALLOWED_HOSTS": "127.0.0.1", "LOG_LEVEL": "INFO"})
            )
            pid = server.worker_pid()
            origin = "demo model, started by this benchmark"
        stop = threading.Event()
        target = stack.enter_context(slow_target(args.upload_delay, stop))
        load = Load(server, target, args)
        load.references()
        print(f"server: {server.base} ({origin}; worker pid {pid})")
        print(
            f"load: {args.clients} clients ({args.clients - args.slow_uploaders} mixed "
            f"graph/forward-pass/steer, {args.slow_uploaders} uploading to a target that answers "
            f"after {args.upload_delay:g} s) for {args.seconds:g} s, {args.half_open} half-open "
            "connections held",
            flush=True,
        )
        rss_start, rss_end, swarm = load.run(pid)
        stop.set()
        report(load, swarm, rss_start, rss_end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
