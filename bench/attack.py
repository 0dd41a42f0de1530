"""The five server-layer attacks at full size, all at once, while honest clients make graphs.

The real server (`python -m neuronpedia_graph demo`, default limits, the usual 1,024-descriptor
soft limit) runs on loopback. After a baseline (10 s of /health and graphs with nobody else),
the attackers start, each in its own process so their work does not skew this process's timing:
1. tiny chunks: one connection after another sends 700,000 one-byte chunks (4.2 MB);
2. idle: 1,100 silent connections, reopened as soon as the server sheds them;
3. never reading: 8 connections with a 4 KiB receive buffer pipeline `/viewer/viewer.js` (300
   requests each, and more every second), reading nothing;
4. memory: 990 connections, each with 64 KB of headers and an unterminated chunked body of up to
   1 MB, reopened a second after the server refuses one;
5. descriptors: 2 and 4 together hold more sockets than the server's descriptor limit.
Meanwhile a prober GETs /health every 100 ms (10 s timeout) and two honest clients make demo
graphs back to back (a 503 "busy" from the one-at-a-time model lock is retried, as clients do).

Run: `.venv/bin/python -m bench.attack [--seconds 60] [--only idle,memory] [--nginx]`
(`make bench-attack`; about 2 minutes). `--nginx` sends every client through nginx configured by
docs/deployment-nginx.md (needs `make nginx`).
The goal is /health p99 under 100 ms and every honest graph answered.
Last line: `errors= health_p99_ms= honest_graph_p99_s= worker_rss_max_mb= ...`, where errors
counts /health probes and honest graphs that failed or went unanswered.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.live import Server, demo_graph, percentile, rss_mb, started_server

SERVER_NOFILE = 1024  # the usual soft descriptor limit of a service
HEALTH_TIMEOUT_S = 10.0
GRAPH = demo_graph("attack")


# ---------------------------------------------------------------- attackers (own processes)
def _connect(port: int, rcvbuf: int | None = None) -> socket.socket | None:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def tiny_chunks(port: int, stop: threading.Event) -> None:
    head = (
        b"POST /generate-graph HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    payload = head + b"1\r\nx\r\n" * 700_000 + b"0\r\n\r\n"
    while not stop.is_set():
        sock = _connect(port)
        if sock is None:
            time.sleep(0.5)
            continue
        with contextlib.suppress(OSError), sock:
            sock.settimeout(60)
            sock.sendall(payload)
            sock.recv(4096)


def idle(port: int, stop: threading.Event, count: int = 1100) -> None:
    socks: list[socket.socket | None] = [None] * count
    while not stop.is_set():
        for i, sock in enumerate(socks):
            if sock is not None:
                try:
                    gone = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if not gone:
                    continue
                sock.close()
            socks[i] = _connect(port)
            if stop.is_set():
                break
        stop.wait(0.5)
    for sock in socks:
        if sock is not None:
            sock.close()


def never_read(port: int, stop: threading.Event, count: int = 8) -> None:
    one = b"GET /viewer/viewer.js HTTP/1.1\r\nHost: t\r\n\r\n"
    socks: list[socket.socket | None] = [None] * count
    while not stop.is_set():
        for i, sock in enumerate(socks):
            if sock is None:
                sock = socks[i] = _connect(port, rcvbuf=4096)
                if sock is None:
                    continue
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.send(one * 300)
                continue
            try:
                sock.send(one)
            except BlockingIOError:
                pass
            except OSError:  # the server closed it: reconnect
                sock.close()
                socks[i] = None
        stop.wait(1.0)
    for sock in socks:
        if sock is not None:
            sock.close()


def memory(port: int, stop: threading.Event, count: int = 990) -> None:
    head = (
        "POST /generate-graph HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + "".join(f"X-Pad-{i}: {'p' * 8000}\r\n" for i in range(8))
        + "Transfer-Encoding: chunked\r\n\r\n"
        + f"{0xFFFFF:x}\r\n"
    ).encode()
    block = b" " * 65536
    body_bytes = 1_000_000
    slots: list[list] = [[None, 0, 0.0] for _ in range(count)]  # sock, sent, retry_at
    while not stop.is_set():
        now = time.monotonic()
        for slot in slots:
            sock, sent, retry_at = slot
            if sock is None:
                if now < retry_at:
                    continue
                sock = _connect(port)
                if sock is None:
                    slot[2] = now + 1.0
                    continue
                sock.setblocking(False)
                slot[0], slot[1], sent = sock, -len(head), -len(head)
            if sent >= body_bytes:
                continue
            data = head[len(head) + sent :] if sent < 0 else block[: body_bytes - sent]
            try:
                slot[1] = sent + sock.send(data)
            except BlockingIOError:
                pass
            except OSError:
                sock.close()
                slot[0], slot[2] = None, now + 1.0
        stop.wait(0.05)
    for sock, _sent, _retry in slots:
        if sock is not None:
            sock.close()


def _attacker(name: str, port: int, seconds: float) -> None:
    stop = threading.Event()
    target = {"tiny": tiny_chunks, "idle": idle, "never_read": never_read, "memory": memory}[name]
    thread = threading.Thread(target=target, args=(port, stop), daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(timeout=30)


# ---------------------------------------------------------------- honest clients (this process)
def probe_health(server: Server, stop: threading.Event, out: list[float], fails: list[str]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            ok = requests.get(f"{server.base}/health", timeout=HEALTH_TIMEOUT_S).status_code == 200
        except requests.RequestException as exc:
            ok = False
            fails.append(f"health: {type(exc).__name__}")
        if ok:
            out.append((time.perf_counter() - started) * 1000)
        elif not fails or not fails[-1].startswith("health"):
            fails.append("health: not 200")
        stop.wait(0.1)


def make_graphs(server: Server, stop: threading.Event, out: list[float], fails: list[str]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        for _attempt in range(120):  # a busy model (503) is retried, as the web app does
            try:
                res = requests.post(
                    f"{server.base}/generate-graph",
                    json=GRAPH,
                    headers={"x-secret-key": server.secret},
                    timeout=120,
                )
            except requests.RequestException as exc:
                fails.append(f"graph: {type(exc).__name__}")
                break
            if res.status_code == 503 and "busy" in res.text:
                time.sleep(0.25)
                continue
            if res.status_code == 200 and res.json()["metadata"]["prompt"]:
                out.append(time.perf_counter() - started)
            else:
                fails.append(f"graph: {res.status_code}")
            break


def measure(server: Server, seconds: float, pid: int | None) -> dict[str, object]:
    stop = threading.Event()
    health: list[float] = []
    graphs: list[float] = []
    fails: list[str] = []
    rss: list[float] = []
    threads = [
        threading.Thread(target=probe_health, args=(server, stop, health, fails)),
        threading.Thread(target=make_graphs, args=(server, stop, graphs, fails)),
        threading.Thread(target=make_graphs, args=(server, stop, graphs, fails)),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = rss_mb(pid)
        if value is not None:
            rss.append(value)
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
        if thread.is_alive():
            fails.append("client never returned")
    return {"health": health, "graphs": graphs, "fails": fails, "rss": rss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="attack duration")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument(
        "--nginx",
        action="store_true",
        help="send every client through nginx configured by docs/deployment-nginx.md",
    )
    parser.add_argument(
        "--only",
        default="tiny,idle,never_read,memory",
        help="comma-separated attacks to run (default: all)",
    )
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(SERVER_NOFILE, hard), hard))
    try:
        server_cm = started_server(log_level="INFO")
        server = server_cm.__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    proxy_cm = contextlib.nullcontext(None)
    if args.nginx:
        from tests.test_nginx_proxy import nginx_in_front

        proxy_cm = nginx_in_front(Path(tempfile.mkdtemp(prefix="npg-nginx-")), server)
    try:
        pid = server.worker_pid()
        front = proxy_cm.__enter__()
        direct, server = server, Server(front, server.secret) if front else server
        requests.post(
            f"{server.base}/generate-graph",
            json=GRAPH,
            headers={"x-secret-key": server.secret},
            timeout=120,
        )  # warm-up
        base = measure(server, args.baseline_seconds, pid)
        ctx = multiprocessing.get_context("spawn")
        attackers = [
            ctx.Process(target=_attacker, args=(name, server.port, args.seconds + 5))
            for name in args.only.split(",")
        ]
        for proc in attackers:
            proc.start()
        time.sleep(5)  # let every attack reach full size
        hit = measure(server, args.seconds, pid)
        for proc in attackers:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
        alive = direct.proc is not None and direct.proc.poll() is None
        same_worker = direct.worker_pid() == pid
        try:
            after_ok = requests.get(f"{server.base}/health", timeout=HEALTH_TIMEOUT_S).ok
        except requests.RequestException:
            after_ok = False
        log = direct.log_path.read_text(errors="replace") if direct.log_path else ""
    finally:
        proxy_cm.__exit__(None, None, None)
        server_cm.__exit__(None, None, None)

    errors = len(hit["fails"]) + (0 if alive and same_worker and after_ok else 1)
    print(f"baseline: /health n={len(base['health'])} graphs n={len(base['graphs'])}")
    print(f"attack:   /health n={len(hit['health'])} graphs n={len(hit['graphs'])}")
    print(f"failures: {hit['fails'][:10]}")
    print(
        "server log (warnings, at most one per 10 s per kind): "
        f"shed={log.count('Connection limit')} budget={log.count('REQUEST_BUFFER_BUDGET')} "
        f"write_timeout={log.count('WRITE_TIMEOUT')} accept_failed={log.count('accept() failed')} "
        f"worker_restarted={int(not same_worker)}"
    )
    print(
        f"errors={errors} "
        f"health_p99_ms={percentile(hit['health'], 0.99):.1f} "
        f"honest_graph_p99_s={percentile(hit['graphs'], 0.99):.2f} "
        f"worker_rss_max_mb={max(hit['rss'], default=float('nan')):.0f} "
        f"graphs={len(hit['graphs'])} "
        f"baseline_health_p99_ms={percentile(base['health'], 0.99):.1f} "
        f"baseline_graph_p99_s={percentile(base['graphs'], 0.99):.2f} "
        f"baseline_rss_max_mb={max(base['rss'], default=float('nan')):.0f}"
    )
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
