"""The small holes: the viewer's CSP, safe log lines, JSON instead of redirects (real server).

Before: `/viewer/viewer.js` and `/viewer/viewer.css` came without a CSP or frame-ancestors;
NUL, ESC and DEL from a `signed_url` path and the `user:password` of an absolute-form request
line were written to the log as sent; `/viewer//x` answered 308 with an HTML body and a Location
built from the Host header.
"""

from __future__ import annotations

import logging
import socket

import pytest
import requests

from neuronpedia_graph.logging_setup import SafeLogFilter, safe_text
from neuronpedia_graph.viewer import CONTENT_SECURITY_POLICY
from tests.conftest import SECRET, graph_body

# --- the viewer's CSP ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [("/", 200), ("/viewer/viewer.js", 200), ("/viewer/viewer.css", 200), ("/viewer/gone.js", 404)],
)
def test_every_viewer_response_has_the_csp(live_server, path: str, status: int) -> None:
    res = requests.get(live_server.url(path), timeout=30)
    assert res.status_code == status
    assert res.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in res.headers["Content-Security-Policy"]
    assert res.headers["X-Frame-Options"] == "DENY"
    assert res.headers["X-Content-Type-Options"] == "nosniff"


def test_the_policy_allows_nothing_inline_or_from_elsewhere() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["base-uri"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


# --- no redirects: JSON for every path that does not match ------------------------------------


def raw_get(live_server, target: str, host: str = "evil.example") -> bytes:
    port = int(live_server.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "target", ["/viewer//x", "//health", "/health/", "//", "/check-busy//", "/viewer//viewer.js"]
)
def test_slash_variants_answer_json_never_a_redirect(live_server, target: str) -> None:
    reply = raw_get(live_server, target)
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert not 300 <= status < 400, head
    assert b"evil.example" not in reply and b"\r\nlocation:" not in head.lower()
    if status >= 400:
        assert b"application/json" in head.lower() and body.startswith(b'{"error"'), reply


# --- log lines ------------------------------------------------------------------------------


def test_safe_text_escapes_controls_and_drops_userinfo() -> None:
    line = "GET http://admin:hunter2@host:80/a\x1b[2J\x00\x7f\r\nforged HTTP/1.1"
    assert safe_text(line) == r"GET http://host:80/a\x1b[2J\x00\x7f\x0d\x0aforged HTTP/1.1"


def test_the_filter_applies_to_formatted_arguments(caplog) -> None:
    logger = logging.getLogger("npg-test-hygiene")
    caplog.handler.addFilter(SafeLogFilter())
    with caplog.at_level(logging.INFO, logger="npg-test-hygiene"):
        logger.info("upload to %s failed", "https://u:p@b.s3.amazonaws.com/k\x1b")
    assert caplog.messages == [r"upload to https://b.s3.amazonaws.com/k\x1b failed"]


def test_absolute_form_credentials_and_control_characters_never_reach_the_log(live_server):
    port = live_server.base.rsplit(":", 1)[1]
    raw_get(live_server, f"http://user:pa55word@127.0.0.1:{port}/health")
    reply = requests.post(
        live_server.url("/generate-graph"),
        json=graph_body(signed_url="http://127.0.0.1:9/b/\x1b[31mred\x00\x7f.json"),
        headers={"x-secret-key": SECRET, "x-request-id": "control-chars"},
        timeout=60,
    )
    assert reply.status_code == 422
    assert reply.json()["error"].endswith("signed_url: must not contain control characters")
    raw_get(live_server, "/health?x=\x1b[31m")
    assert requests.get(live_server.url("/health"), timeout=30).status_code == 200
    log = live_server.log_path.read_bytes()
    assert b"pa55word" not in log and b"user:" not in log
    assert b"[control-chars]" in log
    for control in (b"\x1b", b"\x00", b"\x7f"):
        assert control not in log
