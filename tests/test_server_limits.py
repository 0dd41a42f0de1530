"""The server layer under hostile clients, scaled down through settings, against the real server.

Each test replays one attack that froze or crashed the buffering worker before it wrote
responses from its event loop, shed idle connections, budgeted buffered bytes, walked chunked
bodies in one pass and survived EMFILE. The full-size attacks, run together while honest clients
make graphs, are `bench/attack.py` (`make bench-attack`).

Time guards are generous (15 s for a /health that answers in milliseconds once fixed): only a
server that is frozen, or that does quadratic work, exceeds them. Every test ends by checking
that the server still serves /health and an authenticated request.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from testkit.live import (
    LiveServer,
    free_port,
    server_command,
    server_settings,
    start_process,
)
from tests.conftest import SECRET
from tests.server_proc import BASE_SETTINGS, closed_by_peer, connect, read_response, spawn

GUARD_S = 15  # a /health that takes longer counts as frozen
MAX_CONNECTIONS = 64
BUDGET = 2 * 1024 * 1024
WRITE_TIMEOUT_S = 3
LIMITS = {
    "THREADS": "2",
    "UPLOAD_WORKERS": "1",  # 3 request threads in all
    "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "IDLE_TIMEOUT": "120",  # longer than any test: only shedding may close idle clients
    "REQUEST_READ_TIMEOUT": "120",
    "REQUEST_BUFFER_BUDGET": str(BUDGET),
    "WRITE_TIMEOUT": str(WRITE_TIMEOUT_S),
}
FD_SLACK = 12  # listener, selector, pipes, the model's files: sockets besides the clients'


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> Iterator[LiveServer]:
    with spawn(tmp_path_factory.mktemp("limits"), **LIMITS) as server:
        yield server


def worker_pid(server: LiveServer) -> int:
    """The gunicorn worker: the master's only child."""
    pid = server.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if fd.readlink().name.startswith("socket:"):
                count += 1
    return count


def assert_serves(server: LiveServer) -> None:
    assert requests.get(server.url("/health"), timeout=GUARD_S).status_code == 200
    res = requests.post(
        server.url("/forward-pass"),
        json={"prompt": "1 2 3"},
        headers={"x-secret-key": SECRET},
        timeout=120,
    )
    assert res.status_code == 200, res.text


def health_answers(server: LiveServer) -> bool:
    try:
        return requests.get(server.url("/health"), timeout=GUARD_S).status_code == 200
    except requests.RequestException:
        return False


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# ---------------------------------------------------------------- finding 1: chunk count
def test_tiny_chunks_cost_linear_time(limited):
    """200,000 one-byte chunks (1.2 MB): /health stays prompt and the body arrives intact."""
    body = b'{"prompt": "1 2 3"}' + b" " * (200_000 - 19)
    chunked = b"".join(b"1\r\n%c\r\n" % byte for byte in body) + b"0\r\n\r\n"
    head = (
        "POST /forward-pass HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"x-secret-key: {SECRET}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    sock = connect(limited)
    sock.sendall(head + chunked)
    assert health_answers(limited), "/health froze while the event loop framed tiny chunks"
    res = read_response(sock, "POST")
    sock.close()
    assert res.status == 200, res.body
    plain = requests.post(
        limited.url("/forward-pass"),
        json={"prompt": "1 2 3"},
        headers={"x-secret-key": SECRET},
        timeout=120,
    )
    assert orjson.loads(res.body)["input_tokens"] == plain.json()["input_tokens"]
    assert_serves(limited)


# ---------------------------------------------------------------- finding 2: idle connections
def test_idle_connections_beyond_the_limit_do_not_lock_others_out(limited):
    """1,100 silent connections (more than gunicorn's own limit of 1,000): the oldest are shed."""
    pid = worker_pid(limited)
    idle = [connect(limited, timeout=GUARD_S) for _ in range(1100)]
    try:
        assert health_answers(limited), "/health was refused behind idle connections"
        assert open_sockets(pid) <= MAX_CONNECTIONS + FD_SLACK
        # the attacker reconnects: new honest clients still get in
        idle += [connect(limited, timeout=GUARD_S) for _ in range(200)]
        assert_serves(limited)
        assert closed_by_peer(idle[0]), "the oldest idle connection was not shed"
    finally:
        close_all(idle)
    assert "Connection limit (64) reached" in limited.log()


def test_closing_sockets_count_against_the_limit(limited):
    """Sockets draining after an error reply hold descriptors: they are counted and shed."""
    pid = worker_pid(limited)
    bad = []
    try:
        for _ in range(300):
            sock = connect(limited, timeout=GUARD_S)
            sock.sendall(b"BAD\x01LINE\r\n\r\n")  # 400, then the server lingers on it
            bad.append(sock)
        most = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # bounded: about 1 s of samples
            most = max(most, open_sockets(pid))
        assert most <= MAX_CONNECTIONS + FD_SLACK, most
        assert_serves(limited)
    finally:
        close_all(bad)


# ---------------------------------------------------------------- finding 3: never reading
def test_clients_that_never_read_hold_no_thread(limited):
    """More non-reading pipelining clients than threads: /health answers; they are cut off."""
    request = b"GET /viewer/viewer.js HTTP/1.1\r\nHost: t\r\n\r\n" * 300
    readers = []
    for _ in range(6):  # twice the server's 3 threads
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(GUARD_S)
        sock.connect(("127.0.0.1", int(limited.base.rsplit(":", 1)[1])))
        sock.sendall(request)
        readers.append(sock)
    try:
        assert health_answers(limited), "/health froze behind clients that do not read"
        assert_serves(limited)
        deadline = time.monotonic() + 60
        while "WRITE_TIMEOUT" not in limited.log():
            assert time.monotonic() < deadline, "a non-reading client was never cut off"
            time.sleep(0.2)
    finally:
        close_all(readers)
    assert_serves(limited)


# ---------------------------------------------------------------- finding 4: buffered bytes
def test_partial_bodies_over_the_budget_get_503(limited):
    """8 unterminated chunked bodies of 900 KB (7 MB) against a 2 MiB budget."""
    head = (
        "POST /forward-pass HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + "".join(f"X-Pad-{i}: {'p' * 4000}\r\n" for i in range(4))
        + "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"%x\r\n" % 983_040 + b" " * 900_000  # a chunk that never ends
    socks = []
    refused = 0
    try:
        for _ in range(8):
            sock = connect(limited, timeout=GUARD_S)
            with contextlib.suppress(OSError):
                sock.sendall(head + piece)
            socks.append(sock)
        for sock in socks:
            try:
                res = read_response(sock, "POST")
            except (OSError, ValueError) as exc:  # still waiting: nothing refused it
                if isinstance(exc, TimeoutError):
                    continue
                raise
            if res.status == 503:
                assert "REQUEST_BUFFER_BUDGET" in orjson.loads(res.body)["error"]
                assert res.headers["retry-after"]
                refused += 1
    finally:
        close_all(socks)
    assert refused >= 8 - BUDGET // 900_000, refused
    assert_serves(limited)


# ---------------------------------------------------------------- finding 5: descriptors
@contextlib.contextmanager
def low_fd_server(workdir: Path, nofile: int) -> Iterator[LiveServer]:
    """The real server under a low RLIMIT_NOFILE (set by a tiny exec wrapper)."""
    port = free_port()
    wrapper = [
        sys.executable,
        "-c",
        "import os, resource, sys; n = int(sys.argv[1]); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])",
        str(nofile),
    ]
    env = server_settings(workdir, port, SECRET, {**BASE_SETTINGS, "IDLE_TIMEOUT": "120"})
    with start_process([*wrapper, *server_command(workdir)], workdir, env, port=port) as server:
        yield server


def test_running_out_of_descriptors_never_kills_the_worker(tmp_path):
    with low_fd_server(tmp_path, 200) as server:
        pid = worker_pid(server)
        spare = 200 - len(list(Path(f"/proc/{pid}/fd").iterdir()))
        idle = [connect(server, timeout=GUARD_S) for _ in range(spare + 50)]
        try:
            assert health_answers(server), "/health failed once descriptors ran out"
            assert_serves(server)
            assert worker_pid(server) == pid, "the worker died and was replaced"
        finally:
            close_all(idle)
        assert "MAX_CONNECTIONS lowered" in server.log()
        assert_serves(server)
        assert worker_pid(server) == pid
