"""A worker that dies before the model is ready stops the server (issue 10, the crash loop).

Before: gunicorn re-booted an OOM-killed worker forever and the master never said why. These
tests run the real CLI under gunicorn. The load is held or broken at the service's `load` hook
point by the test hold (`testkit.hold`, attached through `testkit.serve`), and the worker is
really killed with SIGKILL, as the kernel's OOM killer does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import requests

from testkit.hold import HoldControl
from tests.server_proc import spawn, start, stop

BOOT_LINE = re.compile(r"Booting worker with pid: (\d+)")


def worker_pids(log_path: Path) -> list[int]:
    return [int(pid) for pid in BOOT_LINE.findall(log_path.read_text(errors="replace"))]


def wait_for_worker(proc: subprocess.Popen, log_path: Path, count: int = 1) -> int:
    deadline = time.monotonic() + 180
    while len(pids := worker_pids(log_path)) < count:
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "no worker booted"
        time.sleep(0.1)
    return pids[count - 1]


def wait_exit(proc: subprocess.Popen, log_path: Path) -> int:
    try:
        return proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError(
            "server kept running:\n" + log_path.read_text(errors="replace")[-3000:]
        ) from None


def test_worker_killed_while_loading_stops_the_server(tmp_path):
    with HoldControl() as control, control.hold("load") as held:
        proc, log_path, _port = start(tmp_path, hold=control)
        try:
            held.wait()  # the worker is loading, and stays there until it is killed
            pid = wait_for_worker(proc, log_path)
            os.kill(pid, signal.SIGKILL)
            code = wait_exit(proc, log_path)
        finally:
            stop(proc)
    log = log_path.read_text(errors="replace")
    assert code == 3, log[-3000:]
    assert f"error: the worker process (pid {pid}) died while loading the model" in log
    assert "SIGKILL" in log
    assert worker_pids(log_path) == [pid], "the worker was re-booted"


def test_exception_while_loading_stops_the_server(tmp_path):
    with HoldControl() as control:
        control.fail("load")
        proc, log_path, _port = start(tmp_path, hold=control)
        try:
            code = wait_exit(proc, log_path)
        finally:
            stop(proc)
    log = log_path.read_text(errors="replace")
    assert code == 3, log[-3000:]
    assert "error: loading the model failed: InjectedFault: injected fault at 'load'" in log
    assert len(worker_pids(log_path)) == 1, "the worker was re-booted"


def test_worker_killed_after_the_model_is_ready_is_replaced(tmp_path):
    """The guard must not stop a server whose worker had loaded: that crash is recoverable."""
    with spawn(tmp_path) as server:
        first = wait_for_worker(server.proc, server.log_path)
        os.kill(first, signal.SIGKILL)
        second = wait_for_worker(server.proc, server.log_path, count=2)
        assert second != first
        deadline = time.monotonic() + 180
        while True:
            assert server.proc.poll() is None, server.log()[-3000:]
            try:
                if requests.get(f"{server.base}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the replacement worker never became healthy"
            time.sleep(0.25)
        assert "died while loading the model" not in server.log()
