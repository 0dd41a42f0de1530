"""Test helpers for graph jobs on a live server: submit, read the event stream, compare graphs."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.conftest import SECRET, LiveServer, graph_body

AUTH = {"x-secret-key": SECRET}


def submit(server: LiveServer, **overrides: Any) -> requests.Response:
    return requests.post(
        server.url("/graphs"), json=graph_body(**overrides), headers=AUTH, timeout=30
    )


def job(server: LiveServer, job_id: str) -> dict[str, Any]:
    res = requests.get(server.url(f"/graphs/{job_id}"), headers=AUTH, timeout=30)
    assert res.status_code == 200, res.text
    return res.json()


def read_events(server: LiveServer, job_id: str, timeout: float = 300) -> list[tuple[str, Any]]:
    """The whole event stream of a job, until the server ends it: [(event, data), ...]."""
    url = server.url(f"/graphs/{job_id}/events")
    with requests.get(url, headers=AUTH, stream=True, timeout=timeout) as res:
        assert res.status_code == 200, res.text
        assert res.headers["Content-Type"].startswith("text/event-stream")
        return parse_events(res.iter_lines(decode_unicode=True))


def parse_events(lines: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    event = "message"
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
    return out


def final_state(server: LiveServer, job_id: str) -> dict[str, Any]:
    """Waits (on the event stream, not by polling) until the job is finished."""
    states = [data for event, data in read_events(server, job_id) if event == "state"]
    assert states[-1]["status"] in ("done", "failed", "cancelled"), states[-1]
    return states[-1]


def without_time(document: dict[str, Any]) -> dict[str, Any]:
    document["metadata"]["info"].pop("create_time_ms")
    return document


def synchronous_graph(server: LiveServer, **overrides: Any) -> dict[str, Any]:
    res = requests.post(
        server.url("/generate-graph"), json=graph_body(**overrides), headers=AUTH, timeout=120
    )
    assert res.status_code == 200, res.text
    return without_time(res.json())


def job_document(server: LiveServer, job_id: str) -> dict[str, Any]:
    res = requests.get(server.url(f"/graphs/{job_id}/document"), headers=AUTH, timeout=30)
    assert res.status_code == 200, res.text
    return without_time(res.json())


def open_stream(server: LiveServer, job_id: str) -> tuple[socket.socket, bytes]:
    """A raw event-stream connection; returns it once the head and first event arrived."""
    parts = urlsplit(server.base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(
        f"GET /graphs/{job_id}/events HTTP/1.1\r\nHost: x\r\nx-secret-key: {SECRET}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    received = b""
    while b"event: state" not in received:
        data = sock.recv(65536)
        assert data, received
        received += data
    return sock, received


def read_to_end(sock: socket.socket) -> bytes:
    received = b""
    while data := sock.recv(65536):
        received += data
    sock.close()
    return received
