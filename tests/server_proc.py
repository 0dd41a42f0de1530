"""Start the real CLI (gunicorn) as a subprocess with extra settings, and talk raw HTTP to it.

conftest's `live_server` is one shared server with default limits; tests that need other limits
(a short REQUEST_READ_TIMEOUT) or that kill the server's worker start their own with `spawn`.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testkit.hold import HoldControl
from testkit.live import (
    LiveServer,
    free_port,
    launch,
    server_command,
    server_settings,
    start_server,
    stop,
)
from tests.conftest import SECRET

__all__ = ["closed_by_peer", "connect", "read_response", "spawn", "start", "stop"]


# What every server started here gets, under each test's own settings.
BASE_SETTINGS = {"MAX_FEATURE_NODES": "2000"}


def start(
    workdir: Path, hold: HoldControl | None = None, **extra: str
) -> tuple[subprocess.Popen, Path, int]:
    """Start `python -m neuronpedia_graph demo` without waiting for it (held by `hold`)."""
    port = free_port()
    env = server_settings(workdir, port, SECRET, {**BASE_SETTINGS, **extra})
    server = launch(server_command(workdir, hold=hold), workdir, env, port=port)
    return server.proc, server.log_path, port


@contextmanager
def spawn(workdir: Path, **extra: str) -> Iterator[LiveServer]:
    """A healthy server for the duration of the block (stopped with SIGTERM afterwards)."""
    with start_server(workdir, {**BASE_SETTINGS, **extra}, secret=SECRET) as server:
        yield server


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
