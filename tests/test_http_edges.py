"""Slow, partial and malformed HTTP against the real gunicorn server (issue 11, findings 1, 7, 9).

One server for the module, started by the real CLI with REQUEST_READ_TIMEOUT=3 so the read
timeout can be watched. Raw sockets send exactly the bytes each case needs. Timeouts on the
client side are generous (60 s): only an indefinite hang exceeds them, so they cannot flake;
latency figures belong to bench/load.py and bench/half_open.py.
"""

from __future__ import annotations

import gzip
import socket
import time
import uuid

import orjson
import pytest
import requests

from tests.conftest import SECRET
from tests.server_proc import closed_by_peer, connect, read_response, spawn

READ_TIMEOUT_S = 3
HALF_OPEN = 64
GRAPH = {
    "prompt": "The city of Paris is in",
    "model_id": "demo",
    "slug_identifier": "edges",
    "max_feature_nodes": 200,
}


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory):
    with spawn(
        tmp_path_factory.mktemp("edges"), REQUEST_READ_TIMEOUT=str(READ_TIMEOUT_S)
    ) as server:
        yield server


def post_head(path: str, length: int | None = None, secret: bool = True, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: t", "Content-Type: application/json"]
    if secret:
        lines.append(f"x-secret-key: {SECRET}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_json_error(res, status: int, needle: str) -> None:
    assert res.status == status, (res.status, res.body)
    assert res.headers["content-type"] == "application/json"
    assert needle in orjson.loads(res.body)["error"]


def assert_serves(server) -> None:
    res = requests.get(f"{server.base}/health", timeout=60)
    assert res.status_code == 200


# ---------------------------------------------------------------- finding 1: half-open clients
def test_half_open_connections_do_not_block_health_or_graphs(edge_server):
    """64 clients stop mid-head or mid-body; /health and a graph still answer; all time out."""
    ids = [f"halfopen-{uuid.uuid4().hex}" for _ in range(HALF_OPEN // 2)]
    held: list[tuple[socket.socket, bool]] = []
    for i in range(HALF_OPEN // 2):
        head_only = connect(edge_server)
        head_only.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no final blank line
        body = b'{"prompt": "1 2 3"}'
        half_body = connect(edge_server)
        half_body.sendall(post_head("/forward-pass", len(body) + 100, x_request_id=ids[i]) + body)
        held += [(head_only, True), (half_body, False)]

    assert requests.get(f"{edge_server.base}/health", timeout=60).status_code == 200
    graph = requests.post(
        f"{edge_server.base}/generate-graph",
        json=GRAPH,
        headers={"x-secret-key": SECRET, "x-request-id": "complete-graph"},
        timeout=120,
    )
    assert graph.status_code == 200, graph.text
    assert graph.json()["metadata"]["prompt"] == "<bos>" + GRAPH["prompt"]

    # Each partial request is answered 408 and closed once REQUEST_READ_TIMEOUT has passed.
    for sock, _head_only in held:
        res = read_response(sock)
        assert_json_error(res, 408, "REQUEST_READ_TIMEOUT")
        assert res.headers["connection"] == "close"
        assert closed_by_peer(sock)
        sock.close()
    log = edge_server.log()
    assert "[complete-graph]" in log  # the app logs request ids: a control for the next check
    assert not any(rid in log for rid in ids), "a body shorter than Content-Length was executed"


def test_idle_connection_is_closed_without_reply_after_read_timeout(edge_server):
    sock = connect(edge_server)
    assert closed_by_peer(sock)  # within REQUEST_READ_TIMEOUT (+1 s of loop granularity)
    sock.close()


def test_body_cut_by_client_close_is_never_executed(edge_server):
    rid = f"cut-{uuid.uuid4().hex}"
    sock = connect(edge_server)
    sock.sendall(post_head("/forward-pass", 200, x_request_id=rid) + b'{"prompt": "1 2')
    sock.shutdown(socket.SHUT_WR)
    assert closed_by_peer(sock)
    sock.close()
    assert_serves(edge_server)
    assert rid not in edge_server.log()


def test_lingering_connection_close_clients_do_not_stall_others(edge_server):
    """Clients that read their `Connection: close` reply but never close their end."""
    socks = []
    for _ in range(HALF_OPEN):
        sock = connect(edge_server)
        sock.sendall(b"GET /check-busy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        socks.append(sock)
    for sock in socks:
        assert read_response(sock).status == 200
    assert_serves(edge_server)
    for sock in socks:
        assert closed_by_peer(sock)
        sock.close()


# ---------------------------------------------------------------- complete requests still work
def test_expect_100_continue_gets_interim_reply_then_result(edge_server):
    body = b'{"prompt": "1 2 3"}'
    sock = connect(edge_server)
    sock.sendall(post_head("/forward-pass", len(body), Expect="100-continue"))
    assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    sock.sendall(body)
    res = read_response(sock, "POST")
    assert res.status == 200, res.body
    sock.close()


def test_pipelined_requests_are_answered_in_order(edge_server):
    body = b'{"prompt": "1 2 3"}'
    sock = connect(edge_server)
    sock.sendall(
        post_head("/forward-pass", len(body))
        + body
        + b"GET /check-busy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.rstrip().endswith(b'{"busy":false}')


def test_request_sent_then_half_closed_is_answered(edge_server):
    sock = connect(edge_server)
    sock.sendall(b"GET /check-busy HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.shutdown(socket.SHUT_WR)
    assert read_response(sock).status == 200
    sock.close()


def test_chunked_json_body_is_accepted(edge_server):
    body = b'{"prompt": "1 2 3"}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:]))
    sock = connect(edge_server)
    sock.sendall(post_head("/forward-pass", Transfer_Encoding="chunked") + chunked + b"0\r\n\r\n")
    assert read_response(sock, "POST").status == 200
    sock.close()


# ---------------------------------------------------------------- finding 7: HTTP edge cases
def test_malformed_chunk_size_is_400_json(edge_server):
    sock = connect(edge_server)
    sock.sendall(
        post_head("/forward-pass", Transfer_Encoding="chunked") + b"ZZ\r\nabc\r\n0\r\n\r\n"
    )
    assert_json_error(read_response(sock, "POST"), 400, "chunked")
    sock.close()
    assert_serves(edge_server)


def test_chunked_body_over_limit_is_413_json(edge_server):
    piece = b" " * (256 * 1024)
    sock = connect(edge_server)
    sock.sendall(post_head("/forward-pass", Transfer_Encoding="chunked"))
    for _ in range(5):  # 1.25 MiB in total; the server answers once it passed 1 MiB
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except OSError:
            break
    res = read_response(sock, "POST")
    assert_json_error(res, 413, "too large")
    assert res.headers["connection"] == "close"
    sock.close()
    assert_serves(edge_server)


@pytest.mark.parametrize("secret", [None, "wrong-secret"])
def test_large_declared_body_is_413_and_closes(edge_server, secret):
    sock = connect(edge_server)
    head = post_head("/generate-graph", 100_000_000, secret=False)
    if secret:
        head = head.replace(b"\r\n\r\n", f"\r\nx-secret-key: {secret}\r\n\r\n".encode())
    sock.sendall(head + b"{" * 10_000)
    res = read_response(sock, "POST")
    assert_json_error(res, 413, "too large")
    assert res.headers["connection"] == "close"
    assert closed_by_peer(sock)
    sock.close()


@pytest.mark.parametrize(("secret", "status"), [(None, 401), ("wrong-secret", 403)])
def test_unread_body_after_auth_error_keeps_the_connection_truthfully(edge_server, secret, status):
    """401/403 sent without the app reading a 900 KB body: the connection must match its header."""
    body = b"[" + b"1," * 450_000 + b"1]"
    head = post_head("/generate-graph", len(body), secret=False)
    if secret:
        head = head.replace(b"\r\n\r\n", f"\r\nx-secret-key: {secret}\r\n\r\n".encode())
    sock = connect(edge_server)
    sock.sendall(head + body)
    res = read_response(sock, "POST")
    assert res.status == status
    if res.headers["connection"] == "close":
        assert closed_by_peer(sock)
    else:
        sock.sendall(b"GET /check-busy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).status == 200
    sock.close()


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "Request line too long"),
        (b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header fields"),
        (b"GET /health HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431, "header fields"),
        (b"BAD\x01LINE\r\n\r\n", 400, "Malformed HTTP request"),
        (b"GET /health HTTP/1.1\nHost: x\n\n", 400, "Malformed HTTP request"),
        (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400, "Malformed HTTP request"),
        (
            b"POST /steer HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
            "Malformed HTTP request",
        ),
        (
            b"POST /steer HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nab",
            400,
            "Malformed HTTP request",
        ),
        (b"POST /steer HTTP/1.1\r\nTransfer-Encoding: br\r\n\r\n", 501, "Transfer-Encoding"),
        (
            b"POST /steer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            501,
            "Transfer-Encoding",
        ),
        (b"GET /health HTTP/1.1\r\nUser-Agent: t\r\n\r\n", 400, "Host"),
    ],
    ids=[
        "414",
        "431-size",
        "431-count",
        "request-line",
        "bare-lf",
        "version",
        "two-cl",
        "te-cl",
        "te",
        "te-gzip-chunked",
        "no-host",
    ],
)
def test_server_layer_errors_are_json(edge_server, raw, status, needle):
    sock = connect(edge_server)
    sock.sendall(raw)
    res = read_response(sock)
    assert_json_error(res, status, needle)
    assert res.headers["connection"] == "close"
    sock.close()
    assert_serves(edge_server)


@pytest.mark.parametrize(
    ("accept", "gzipped"),
    [("gzip;q=0", False), ("gzip", True), ("identity, gzip;q=0.5", False), ("*", True)],
)
def test_accept_encoding_q_values(edge_server, accept, gzipped):
    res = requests.post(
        f"{edge_server.base}/generate-graph",
        json=GRAPH,
        headers={"x-secret-key": SECRET, "Accept-Encoding": accept},
        timeout=120,
        stream=True,
    )
    raw = res.raw.read(decode_content=False)
    assert res.status_code == 200
    assert (res.headers.get("Content-Encoding") == "gzip") is gzipped
    doc = orjson.loads(gzip.decompress(raw) if gzipped else raw)
    assert doc["metadata"]["prompt"] == "<bos>" + GRAPH["prompt"]


# ---------------------------------------------------------------- finding 9: access log secrets
def test_query_string_secrets_never_reach_the_access_log(edge_server):
    token = f"TOPSECRET{uuid.uuid4().hex}"
    res = requests.post(
        f"{edge_server.base}/forward-pass?secret={token}",
        json={"prompt": "1 2 3"},
        headers={"x-secret-key": SECRET, "Referer": f"http://app/page?sig={token}"},
        timeout=60,
    )
    assert res.status_code == 200
    assert requests.get(f"{edge_server.base}/health?token={token}", timeout=60).ok
    sock = connect(edge_server)  # a malformed request line that carries the token
    sock.sendall(f"GET /x?{token} HTTP/1.1 junk\r\n\r\n".encode())
    assert read_response(sock).status == 400
    sock.close()
    lines = (
        '"GET /health?[redacted] HTTP/1.1" 200',
        '"POST /forward-pass?[redacted] HTTP/1.1" 200',
    )
    deadline = time.monotonic() + 30
    while not all(line in edge_server.log() for line in lines):
        assert time.monotonic() < deadline, "access log lines never written"
        time.sleep(0.1)
    log = edge_server.log()
    assert token not in log
    assert SECRET not in log


# ---------------------------------------------------------------- the app without our worker
def test_app_answers_413_to_a_chunked_body_at_the_limit(client, auth):
    """Behind a server that streams chunked bodies (e.g. `--dev`), werkzeug cuts the body at
    MAX_CONTENT_LENGTH without an error; the app must say 413, not "not valid JSON"."""
    import io

    from neuronpedia_graph.limits import MAX_BODY_BYTES

    res = client.post(
        "/forward-pass",
        input_stream=io.BytesIO(b" " * (MAX_BODY_BYTES + 10)),
        headers={**auth, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert res.status_code == 413
    assert "too large" in res.get_json()["error"]
    ok = client.post("/forward-pass", json={"prompt": "1 2 3"}, headers=auth)
    assert ok.status_code == 200
