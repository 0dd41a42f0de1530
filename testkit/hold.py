"""The deterministic test hold: stop a server's work at a named point until the test says go.

A test owns a `HoldControl` (a Unix socket it listens on). The server under test is given
`SocketHooks` for that socket (in process: `GraphService(..., hooks=...)`; a real gunicorn
server: `testkit.serve`, which `start_server(..., hold=...)` uses). At every hook point the
server asks the control what to do, and the control answers at once unless the test armed that
point:

    with control.hold("generate-graph") as held:
        start_a_graph_in_a_thread()
        held.wait()        # the graph now holds the model: busy is certain, not a race
        ...                # assert whatever must be true while it is held
    # leaving the block releases it; the graph finishes

`control.fail("generate-graph")` makes the next arrival raise instead (a real bug, a 500).
Nothing sleeps: the server blocks on the socket, the test on a condition variable.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from neuronpedia_graph.hooks import Hooks

GO = b"go\n"
FAIL = b"fail\n"
# How long a held point waits for the test before giving up: a test that forgets to release
# must not leave a server blocked forever.
MAX_HOLD_S = 600.0


class InjectedFault(RuntimeError):
    """Raised at a point the test armed with `HoldControl.fail` (a stand-in for a real bug)."""


class SocketHooks(Hooks):
    """The server side: report each point to the control socket and do what it answers."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)

    def reached(self, point: str) -> None:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(MAX_HOLD_S)
            sock.connect(self.path)
        except OSError:
            return  # no test is listening (it has finished): nothing to hold
        with sock:
            sock.sendall(point.encode() + b"\n")
            answer = sock.makefile("rb").readline()
        if answer == FAIL:
            raise InjectedFault(f"injected fault at {point!r}")


class Held:
    """One armed point: `wait()` until the server reaches it; released when the block ends."""

    def __init__(self, control: HoldControl, point: str) -> None:
        self.control = control
        self.point = point
        self.arrivals = 0

    def wait(self, timeout: float = 120) -> None:
        """Block until the server is held at the point (fails the test after `timeout`)."""
        with self.control.cond:
            if not self.control.cond.wait_for(lambda: self.arrivals > 0, timeout):
                raise TimeoutError(f"the server never reached {self.point!r}")

    def release(self) -> None:
        self.control.release(self.point)


class HoldControl:
    """The test side: a Unix socket that answers the server's hook points."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="npg-hold-")
        self.path = Path(self._dir) / "control.sock"
        self.cond = threading.Condition()
        self._armed: dict[str, Held] = {}
        self._waiting: dict[str, list[socket.socket]] = {}
        self._faults: dict[str, int] = {}
        self.seen: list[str] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(64)
        self._closed = False
        threading.Thread(target=self._accept, name="hold-control", daemon=True).start()

    def hooks(self) -> SocketHooks:
        return SocketHooks(self.path)

    @contextmanager
    def hold(self, point: str) -> Iterator[Held]:
        """Arm `point`: every arrival there blocks until the block ends (or `release`)."""
        held = Held(self, point)
        with self.cond:
            self._armed[point] = held
        try:
            yield held
        finally:
            with self.cond:
                self._armed.pop(point, None)
            self.release(point)

    def fail(self, point: str, times: int = 1) -> None:
        """Make the next `times` arrivals at `point` raise `InjectedFault` in the server."""
        with self.cond:
            self._faults[point] = self._faults.get(point, 0) + times

    def release(self, point: str) -> None:
        with self.cond:
            waiting = self._waiting.pop(point, [])
        for conn in waiting:
            with contextlib.suppress(OSError):
                conn.sendall(GO)
            conn.close()

    def close(self) -> None:
        self._closed = True
        with self.cond:
            points = list(self._waiting)
            self._armed.clear()
        for point in points:
            self.release(point)
        self._server.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
            os.rmdir(self._dir)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        point = conn.makefile("rb").readline().decode().strip()
        with self.cond:
            self.seen.append(point)
            if self._faults.get(point, 0) > 0:
                self._faults[point] -= 1
                answer = FAIL
            elif point in self._armed:
                self._waiting.setdefault(point, []).append(conn)
                self._armed[point].arrivals += 1
                self.cond.notify_all()
                return  # answered by release()
            else:
                answer = GO
        with contextlib.suppress(OSError):
            conn.sendall(answer)
        conn.close()

    def __enter__(self) -> HoldControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
