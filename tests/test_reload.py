"""SIGHUP to the gunicorn master never takes the server down, idle or during a graph.

Before: gunicorn's reload started a second worker (a second copy of the model) and stopped the
first; the boot guard took the first one's normal exit for "died while loading" and halted the
server with exit code 3. The policy now (`serving/reload_policy.py`): a reload never
reloads the model; it re-reads the settings, applies the log level, and names the settings that
need a restart. Real gunicorn, real SIGHUP; the graph in flight is held with the test hold.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import requests

from testkit.hold import HoldControl
from testkit.live import LiveServer, start_server
from tests.conftest import SECRET

BOOT_LINE = re.compile(r"Booting worker with pid: (\d+)")
DONE = "SIGHUP: done"
SETTINGS = {"MAX_FEATURE_NODES": "2000"}
HEADERS = {"x-secret-key": SECRET}


def worker_pids(server: LiveServer) -> list[int]:
    return [int(pid) for pid in BOOT_LINE.findall(server.log())]


def sighup_and_wait(server: LiveServer, times: int = 1) -> None:
    """Send SIGHUP to the master and wait until it logged that the reload is done."""
    before = server.log().count(DONE)
    os.kill(server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while server.log().count(DONE) < before + times:
        assert server.proc.poll() is None, f"server exited:\n{server.log()[-3000:]}"
        assert time.monotonic() < deadline, f"no reload line:\n{server.log()[-3000:]}"
        time.sleep(0.05)


def assert_still_serving(server: LiveServer, pids: list[int]) -> None:
    assert server.proc.poll() is None, server.log()[-3000:]
    assert requests.get(server.url("/health"), timeout=30).status_code == 200
    reply = requests.post(
        server.url("/forward-pass"), json={"prompt": "1 2 3"}, headers=HEADERS, timeout=120
    )
    assert reply.status_code == 200, reply.text
    assert worker_pids(server) == pids, "a second worker (a second model) was started"
    assert "died while loading" not in server.log()


def test_sighup_while_idle_keeps_the_same_worker_serving(tmp_path):
    with start_server(tmp_path, SETTINGS, secret=SECRET, new_session=True) as server:
        pids = worker_pids(server)
        assert len(pids) == 1
        sighup_and_wait(server)
        sighup_and_wait(server)  # and again: nothing accumulates
        assert_still_serving(server, pids)
        log = server.log()
        assert "SIGHUP: the model is not reloaded" in log
        assert f"Worker {pids[0]} keeps serving" in log


def test_sighup_during_a_graph_lets_the_graph_finish(tmp_path):
    with (
        HoldControl() as control,
        start_server(tmp_path, SETTINGS, secret=SECRET, new_session=True, hold=control) as server,
    ):
        pids = worker_pids(server)
        replies: list[requests.Response] = []
        body = {"prompt": "The city of Paris is in", "model_id": "demo", "slug_identifier": "p"}
        with control.hold("generate-graph") as held:
            thread = threading.Thread(
                target=lambda: replies.append(
                    requests.post(
                        server.url("/generate-graph"), json=body, headers=HEADERS, timeout=300
                    )
                )
            )
            thread.start()
            held.wait()  # the graph holds the model now
            sighup_and_wait(server)
            busy = requests.get(server.url("/check-busy"), timeout=30)
            assert busy.json() == {"busy": True}  # the same graph, still running
        thread.join(timeout=300)
        assert replies and replies[0].status_code == 200, replies and replies[0].text
        assert replies[0].json()["nodes"]
        assert_still_serving(server, pids)


def test_sighup_applies_the_log_level_and_names_settings_that_need_a_restart(tmp_path):
    with start_server(tmp_path, SETTINGS, secret=SECRET, new_session=True) as server:
        pids = worker_pids(server)

        def forward(request_id: str) -> None:
            reply = requests.post(
                server.url("/forward-pass"),
                json={"prompt": "1 2 3"},
                headers={**HEADERS, "x-request-id": request_id},
                timeout=120,
            )
            assert reply.status_code == 200

        forward("before-reload")
        assert "[before-reload] neuronpedia_graph.api: POST /forward-pass -> 200" in server.log()

        (tmp_path / ".env").write_text("TOKEN_LIMIT=not-a-number\n")
        sighup_and_wait(server, times=0)  # an invalid configuration changes nothing
        deadline = time.monotonic() + 60
        while "SIGHUP: the configuration is invalid now" not in server.log():
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.05)
        assert "TOKEN_LIMIT" in server.log().split("the configuration is invalid now", 1)[1]

        (tmp_path / ".env").write_text("LOG_LEVEL=WARNING\nTOKEN_LIMIT=5\n")
        sighup_and_wait(server)
        assert "changed settings that apply only after a restart: TOKEN_LIMIT" in server.log()
        assert requests.get(server.url("/health"), timeout=30).json()["token_limit"] == 64
        forward("after-reload")
        assert "[after-reload]" not in server.log()  # the worker's INFO lines are off now

        (tmp_path / ".env").write_text("LOG_LEVEL=INFO\n")
        sighup_and_wait(server)
        forward("info-again")
        assert "[info-again] neuronpedia_graph.api: POST /forward-pass -> 200" in server.log()
        assert_still_serving(server, pids)


def test_sigttin_does_not_start_a_second_model(tmp_path):
    with start_server(tmp_path, SETTINGS, secret=SECRET, new_session=True) as server:
        pids = worker_pids(server)
        os.kill(server.proc.pid, signal.SIGTTIN)
        deadline = time.monotonic() + 60
        while "SIGTTIN refused" not in server.log():
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.05)
        assert_still_serving(server, pids)
