"""Shared parts of the server benchmarks: start the real server (through testkit.live), find
its worker, read its memory, hold half-open connections. Everything binds to and connects to
loopback only.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.memory import status_kb
from testkit.live import free_port, server_command, server_settings, start_process

REPO = Path(__file__).resolve().parents[1]
BOOT_LINE = re.compile(rb"Booting worker with pid: (\d+)")


@dataclass
class Server:
    base: str
    secret: str
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1].rstrip("/"))

    def worker_pid(self) -> int | None:
        """The gunicorn worker (the process that holds the model), from the server log."""
        if self.log_path is None:
            return None
        pids = BOOT_LINE.findall(self.log_path.read_bytes())
        return int(pids[-1]) if pids else None


def rss_mb(pid: int | None) -> float | None:
    """Resident set size of a process in MB (Linux /proc), or None if unknown."""
    if pid is None:
        return None
    try:
        return status_kb(pid, "VmRSS") / 1024
    except (OSError, KeyError):
        return None


def percentile(values: list[float], q: float, empty: float = float("nan")) -> float:
    """The nearest-rank `q` quantile of `values`; `empty` when there are none."""
    if not values:
        return empty
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def demo_graph(slug: str) -> dict[str, object]:
    """A small /generate-graph body for the demo model (the prompt every server bench uses)."""
    return {
        "prompt": "The city of Paris is in",
        "model_id": "demo",
        "slug_identifier": slug,
        "max_feature_nodes": 200,
    }


@contextlib.contextmanager
def started_server(
    extra_env: Mapping[str, str] | None = None,
    worker_class: str | None = None,
    log_level: str = "WARNING",
    *,
    pythonpath: str | None = str(REPO),
) -> Iterator[Server]:
    """`python -m neuronpedia_graph demo` on a free loopback port (what `make run` starts).

    Args:
        extra_env: settings over the CPU/loopback/offline defaults.
        worker_class: replaces the server's worker (e.g. "gthread", to compare with stock
            gunicorn).
        log_level: the server's LOG_LEVEL (INFO logs the worker's pid for `worker_pid`).
        pythonpath: where the server imports neuronpedia_graph from; None keeps this
            environment's PYTHONPATH (to measure another checkout over HTTP).

    Yields:
        The server once /health answers; it is stopped on exit.
    """
    secret = secrets.token_hex(16)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="npg-bench-"))
    env = {"HF_HUB_OFFLINE": "1", "LOG_LEVEL": log_level, **(extra_env or {})}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    if worker_class is None:
        cmd = server_command(workdir)
    else:
        code = (
            "from neuronpedia_graph.serving.gunicorn import serve_gunicorn;"
            "from neuronpedia_graph.settings import load_settings;"
            f"serve_gunicorn(load_settings(['demo']), worker_class={worker_class!r})"
        )
        cmd = [sys.executable, "-c", code]
    settings = server_settings(workdir, port, secret, env)
    with start_process(cmd, workdir, settings, port=port, timeout=300) as live:
        yield Server(live.base, secret, live.proc, live.log_path)


@dataclass
class HalfOpenSwarm:
    """Connections that send part of a request and then nothing, as in issue 11 finding 1.

    Half send a head without its final blank line; half send an authenticated POST whose body
    is shorter than its Content-Length. With `refill`, a connection the server closed (after
    its read timeout) is replaced, so `count` stay open for as long as the swarm runs.
    """

    server: Server
    count: int
    opened: int = 0
    answered: dict[str, int] = field(default_factory=dict)
    _socks: list[tuple[socket.socket, int]] = field(default_factory=list)

    def _open(self, kind: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        if kind % 2 == 0:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        else:
            body = b'{"prompt": "1 2 3"}'
            sock.sendall(
                b"POST /forward-pass HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"x-secret-key: {self.server.secret}\r\n".encode()
                + f"Content-Length: {len(body) + 100}\r\n\r\n".encode()
                + body
            )
        sock.setblocking(False)
        self.opened += 1
        return sock

    def open_all(self) -> None:
        for i in range(self.count):
            self._socks.append((self._open(i), i))

    def poll(self, refill: bool) -> None:
        """Collect what the server said to closed connections; reopen them if asked."""
        kept = []
        for sock, kind in self._socks:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                kept.append((sock, kind))
                continue
            except OSError:
                data = b""
            status = data[9:12].decode(errors="replace") if data.startswith(b"HTTP/") else "none"
            self.answered[status] = self.answered.get(status, 0) + 1
            sock.close()
            if refill:
                with contextlib.suppress(OSError):
                    kept.append((self._open(kind), kind))
        self._socks = kept

    def close_all(self) -> None:
        for sock, _ in self._socks:
            sock.close()
        self._socks = []

    def run_until(self, deadline: float, stop: threading.Event) -> None:
        """Hold `count` half-open connections until the deadline (bounded loop)."""
        self.open_all()
        while time.monotonic() < deadline and not stop.is_set():
            self.poll(refill=True)
            time.sleep(0.2)
        self.poll(refill=False)
        self.close_all()
