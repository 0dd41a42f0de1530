"""The nginx recipe in docs/deployment-nginx.md, run for real in front of the demo server.

The `nginx` block is read from the doc (so the doc cannot drift from what is tested), pointed at
the test server and a free loopback port, and wrapped in a minimal nginx.conf. Debian's nginx
is installed by `make nginx` (a dependency of `make test`); the test fails, not skips, when it is
missing. The server-layer attacks are replayed through nginx, scaled down; /health and an
authenticated request must answer through nginx while each attack is under way.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from testkit.live import LiveServer, free_port
from tests.conftest import SECRET
from tests.server_proc import read_response, spawn

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment-nginx.md"
GUARD_S = 15
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def recipe() -> str:
    match = re.search(r"```nginx\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/deployment-nginx.md has no nginx block"
    return match.group(1)


def nginx_conf(workdir: Path, listen_port: int, upstream_port: int) -> str:
    site = recipe()
    assert "listen 80;" in site and "127.0.0.1:5004" in site
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    site = site.replace("127.0.0.1:5004", f"127.0.0.1:{upstream_port}")
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\npid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        f"  access_log {workdir}/access.log;\n"
        f"  client_body_temp_path {workdir}/body;\n  proxy_temp_path {workdir}/proxy;\n"
        f"  fastcgi_temp_path {workdir}/fcgi;\n  uwsgi_temp_path {workdir}/uwsgi;\n"
        f"  scgi_temp_path {workdir}/scgi;\n"
        f"{site}\n}}\n"
    )


@contextlib.contextmanager
def nginx_in_front(workdir: Path, server: LiveServer) -> Iterator[str]:
    assert Path(NGINX).exists(), "nginx is not installed: run `make nginx`"
    port = free_port()
    upstream = int(server.base.rsplit(":", 1)[1])
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, upstream))
    argv = [NGINX, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(
        [*argv, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None, (workdir / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx never proxied /health"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory) -> Iterator[tuple[str, LiveServer]]:
    workdir = tmp_path_factory.mktemp("nginx")
    with (
        spawn(workdir / "server", THREADS="2", UPLOAD_WORKERS="1") as server,
        nginx_in_front(workdir, server) as base,
    ):
        yield base, server


def connect(base: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(GUARD_S)
    sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    return sock


def assert_serves(base: str) -> None:
    assert requests.get(f"{base}/health", timeout=GUARD_S).status_code == 200
    res = requests.post(
        f"{base}/forward-pass",
        json={"prompt": "1 2 3"},
        headers={"x-secret-key": SECRET},
        timeout=120,
    )
    assert res.status_code == 200, res.text
    assert len(res.json()["input_tokens"]) >= 2


def test_recipe_proxies_a_graph(proxied):
    base, server = proxied
    res = requests.post(
        f"{base}/generate-graph",
        json={"prompt": "The city of Paris is in", "model_id": "demo", "slug_identifier": "ng"},
        headers={"x-secret-key": SECRET},
        timeout=120,
    )
    assert res.status_code == 200, res.text
    assert res.json()["metadata"]["prompt"].endswith("The city of Paris is in")
    assert "POST /generate-graph" in server.log()


def test_attacks_through_nginx_leave_the_server_responsive(proxied):
    base, server = proxied
    socks: list[socket.socket] = []
    try:
        # tiny chunks: nginx decodes them and forwards one Content-Length body
        body = b'{"prompt": "1 2 3"}' + b" " * (100_000 - 19)
        tiny = connect(base)
        tiny.sendall(
            f"POST /forward-pass HTTP/1.1\r\nHost: t\r\nx-secret-key: {SECRET}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"".join(b"1\r\n%c\r\n" % byte for byte in body)
            + b"0\r\n\r\n"
        )
        socks.append(tiny)
        assert requests.get(f"{base}/health", timeout=GUARD_S).status_code == 200
        assert read_response(tiny, "POST").status == 200  # before the next model request
        assert_serves(base)
        # idle connections, more than the server's own connection limit
        socks += [connect(base) for _ in range(1100)]
        assert_serves(base)
        # clients that never read, pipelining viewer assets
        for _ in range(6):
            slow = connect(base, rcvbuf=4096)
            slow.sendall(b"GET /viewer/viewer.js HTTP/1.1\r\nHost: t\r\n\r\n" * 300)
            socks.append(slow)
        assert_serves(base)
        # large unterminated chunked bodies with large headers: nginx holds them
        head = (
            "POST /forward-pass HTTP/1.1\r\nHost: t\r\n"
            + "".join(f"X-Pad-{i}: {'p' * 4000}\r\n" for i in range(3))
            + "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        for _ in range(16):
            big = connect(base)
            with contextlib.suppress(OSError):
                big.sendall(head + b"%x\r\n" % 900_000 + b" " * 800_000)
            socks.append(big)
        assert_serves(base)
    finally:
        for sock in socks:
            sock.close()
    assert_serves(base)
    assert "Traceback" not in server.log()
