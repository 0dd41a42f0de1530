"""Start a real server process (the CLI under gunicorn, or any command) and wait until it answers.

One helper for every test and benchmark that needs a live process, so start-up, readiness
polling, log capture and shutdown are written once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from testkit.hold import HoldControl

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A running server: its base URL, its combined stdout/stderr log, and its process."""

    base: str
    log_path: Path
    proc: subprocess.Popen
    workdir: Path
    hold: HoldControl | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def health_ready(base: str) -> bool:
    return requests.get(f"{base}/health", timeout=1).status_code == 200


def wait_until_ready(
    server: LiveServer, ready: Callable[[str], bool] = health_ready, timeout: float = 180
) -> None:
    """Poll `ready(base)` until it is true; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.proc.returncode}:\n{server.log()[-4000:]}"
            )
        try:
            if ready(server.base):
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"server did not become ready:\n{server.log()[-4000:]}")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(
    argv: Sequence[str],
    workdir: Path,
    env: Mapping[str, str],
    *,
    port: int,
    new_session: bool = False,
    inherit_env: bool = True,
) -> LiveServer:
    """Start `argv` in `workdir` with `env`, logging to server.log; does not wait for it.

    Args:
        argv: the command.
        workdir: its working directory (created if needed); the log is written there.
        env: variables added to the current environment.
        port: the port it listens on (for the base URL).
        new_session: start it as a process-group leader (to signal the whole group).
        inherit_env: start from this process's environment; False uses `env` alone.

    Returns:
        The server, possibly not answering yet; stop it with `stop`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=workdir,
            env={**(os.environ if inherit_env else {}), "PYTHONUNBUFFERED": "1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )
    return LiveServer(f"http://127.0.0.1:{port}", log_path, proc, workdir)


@contextmanager
def start_process(
    argv: Sequence[str],
    workdir: Path,
    env: Mapping[str, str],
    *,
    port: int,
    ready: Callable[[str], bool] | None = health_ready,
    timeout: float = 180,
    new_session: bool = False,
    inherit_env: bool = True,
) -> Iterator[LiveServer]:
    """`launch`, wait until `ready(base)` (None: at once), and stop it on exit.

    Yields:
        The live server; it is stopped (SIGTERM, then SIGKILL, then its whole group when it
        has its own) on exit.
    """
    server = launch(argv, workdir, env, port=port, new_session=new_session, inherit_env=inherit_env)
    try:
        if ready is not None:
            wait_until_ready(server, ready, timeout)
        yield server
    finally:
        stop(server.proc)
        if new_session:  # nothing it started may outlive it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)


def server_command(
    workdir: Path,
    model: str = "demo",
    args: Sequence[str] = (),
    hold: HoldControl | None = None,
) -> list[str]:
    """`python -m neuronpedia_graph MODEL` with an .env path of its own (absent: not read).

    With `hold`, the same command line through `testkit.serve`, reporting to that control.
    """
    entry = ["testkit.serve", str(hold.path)] if hold else ["neuronpedia_graph"]
    return [sys.executable, "-m", *entry, model, "--env-file", str(workdir / ".env"), *args]


def server_settings(workdir: Path, port: int, secret: str, env: Mapping[str, str]) -> dict:
    """Loopback, CPU and a spool in `workdir`, under the given settings.

    The repository is on PYTHONPATH so that `testkit.serve` imports from any working directory.
    """
    return {
        "SECRET": secret,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DEVICE": "cpu",
        "SPOOL_DIR": str(workdir / "spool"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **env,
    }


@contextmanager
def start_server(
    workdir: Path,
    env: Mapping[str, str],
    *,
    model: str = "demo",
    args: Sequence[str] = (),
    secret: str,
    timeout: float = 180,
    new_session: bool = False,
    hold: HoldControl | None = None,
) -> Iterator[LiveServer]:
    """The real product: `python -m neuronpedia_graph MODEL` (gunicorn) on a free port.

    Args:
        workdir: working directory; holds the log, the spool and an (empty) .env path.
        env: settings as environment variables, over CPU/loopback defaults.
        model: the model argument.
        args: extra command-line arguments.
        secret: the SECRET it requires.
        timeout: seconds to wait for /health.
        new_session: its own process group, killed whole on exit (for tests that signal it).
        hold: the test hold this server reports its hook points to (`server.hold`).
    """
    port = free_port()
    with start_process(
        server_command(workdir, model, args, hold),
        workdir,
        server_settings(workdir, port, secret, env),
        port=port,
        timeout=timeout,
        new_session=new_session,
    ) as server:
        server.hold = hold
        yield server
