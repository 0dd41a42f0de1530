"""The server layer's answers the README lists that no other test reached: `417` for an
unsupported `Expect`, and `503` for a request still arriving when the server shuts down.

One real gunicorn server (the CLI) for the module; the shutdown test stops it, so it runs last.
"""

from __future__ import annotations

import signal

import orjson
import pytest

from tests.server_proc import closed_by_peer, connect, read_response, spawn

# The buffering worker answers a partial request this long after SIGTERM (worker.LINGER_SECONDS),
# then exits; a generous guard only.
SHUTDOWN_GUARD_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with spawn(tmp_path_factory.mktemp("server-layer")) as server:
        yield server


def assert_json_error(res, status: int, error: str) -> None:
    assert res.status == status, (res.status, res.body)
    assert res.headers["content-type"] == "application/json"
    assert res.headers["connection"] == "close"
    assert orjson.loads(res.body) == {"error": error}


def test_an_unsupported_expect_is_417_json_and_closes(server):
    sock = connect(server)
    sock.sendall(
        b"POST /forward-pass HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Expect: 200-ok\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert_json_error(read_response(sock, "POST"), 417, "Unsupported Expect header")
    assert closed_by_peer(sock)
    sock.close()
    # The server is unharmed; an ordinary GET answers.
    probe = connect(server)
    probe.sendall(b"GET /check-busy HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(probe).status == 200
    probe.close()


def test_a_partial_request_at_shutdown_is_503_with_retry_after(server):
    sock = connect(server, timeout=SHUTDOWN_GUARD_S)
    sock.sendall(
        b"POST /forward-pass HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"prompt"'
    )
    # The worker holds the partial request in its buffer; a complete one proves it is reading.
    probe = connect(server)
    probe.sendall(b"GET /check-busy HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert read_response(probe).status == 200
    probe.close()
    server.proc.send_signal(signal.SIGTERM)  # to the gunicorn master, as `docker stop` does
    res = read_response(sock, "POST")
    assert_json_error(res, 503, "Server is shutting down")
    assert int(res.headers["retry-after"]) > 0
    assert closed_by_peer(sock)
    sock.close()
    assert server.proc.wait(timeout=SHUTDOWN_GUARD_S) == 0
