"""Start the real CLI (gunicorn) as a subprocess with extra settings, and talk raw HTTP to it.

conftest's `live_server` is one shared server with default limits; tests that need other limits
(a short REQUEST_READ_TIMEOUT) or that kill the server's worker start their own with `spawn`.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import SECRET, LiveServer, free_port, wait_for_health


def server_env(workdir: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SECRET": SECRET,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DEVICE": "cpu",
        "SPOOL_DIR": str(workdir / "spool"),
        "MAX_FEATURE_NODES": "2000",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def start(workdir: Path, **extra: str) -> tuple[subprocess.Popen, Path, int]:
    """Start `python -m neuronpedia_graph demo` without waiting for it."""
    port = free_port()
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "neuronpedia_graph",
                "demo",
                "--env-file",
                str(workdir / ".env"),
            ],
            cwd=workdir,
            env=server_env(workdir, port, **extra),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, log_path, port


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def spawn(workdir: Path, **extra: str) -> Iterator[LiveServer]:
    """A healthy server for the duration of the block (stopped with SIGTERM afterwards)."""
    proc, log_path, port = start(workdir, **extra)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", proc)
    except Exception as exc:
        stop(proc)
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"server failed to start:\n{tail}") from exc
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", log_path, proc)
    finally:
        stop(proc)


def port_of(server: LiveServer) -> int:
    return int(server.base.rsplit(":", 1)[1])


def connect(server: LiveServer, timeout: float = 60) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=timeout)
    return sock


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def read_response(sock: socket.socket, method: str = "GET") -> RawResponse:
    """Read one response (1xx interim responses are skipped) without closing the socket."""
    resp = http.client.HTTPResponse(sock, method=method)
    resp.begin()
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    return RawResponse(resp.status, headers, body)


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the server has closed its side (EOF or reset) before the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
