"""A job's states as Server-Sent Events, pumped to every open stream by one thread.

Each stream starts with the job's state now, gets a new `state` event whenever the job changes
(coalesced: a slow reader gets the latest state, not every step), a `heartbeat` event every
`JOB_EVENTS_HEARTBEAT` seconds, and ends after the event that carries a finished state.

`EventPump` owns the sockets handed to it (`neuronpedia_graph.serving.stream_handoff`): they are
non-blocking and served from one selector loop, so no request thread waits for a stream.
At most `JOB_EVENT_STREAMS` are open at once; `reserve` refuses the next one (503). A client
that stops reading is dropped once `MAX_PENDING_BYTES` are waiting for it.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from neuronpedia_graph.errors import ServerBusy, ServiceError
from neuronpedia_graph.jobs.models import FINISHED, JobView
from neuronpedia_graph.jobs.runner import JobNotFound, JobRunner
from neuronpedia_graph.serving.stream_handoff import chunk

logger = logging.getLogger(__name__)

MAX_PENDING_BYTES = 1 << 20


class StreamsBusy(ServerBusy):
    def __init__(self, limit: int) -> None:
        ServiceError.__init__(
            self, f"Too many open event streams ({limit}, JOB_EVENT_STREAMS); try again later."
        )


def state_event(view: JobView, version: int) -> bytes:
    return b"id: %d\nevent: state\ndata: %s\n\n" % (version, view.model_dump_json().encode())


def heartbeat_event() -> bytes:
    return b'event: heartbeat\ndata: {"time": %.3f}\n\n' % time.time()


@dataclass(eq=False)
class _Stream:
    sock: socket.socket
    job_id: str
    version: int
    pending: bytearray = field(default_factory=bytearray)
    next_beat: float = 0.0
    ending: bool = False


class EventPump:
    """Serves every handed-off event stream from one thread (see the module doc).

    Args:
        runner: the jobs whose states are streamed.
        max_streams: how many streams may be open at once.
        heartbeat_s: seconds between heartbeats.
    """

    def __init__(self, runner: JobRunner, max_streams: int, heartbeat_s: float) -> None:
        self.runner = runner
        self.max_streams = max_streams
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._reserved = 0
        self._incoming: list[_Stream] = []
        self._streams: dict[socket.socket, _Stream] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        runner.add_listener(self.wake)
        threading.Thread(target=self._loop, name="job-events", daemon=True).start()

    @property
    def open_streams(self) -> int:
        with self._lock:
            return self._reserved

    def reserve(self) -> None:
        """Count one more stream, or raise `StreamsBusy` (503) when the cap is reached."""
        with self._lock:
            if self._reserved >= self.max_streams:
                raise StreamsBusy(self.max_streams)
            self._reserved += 1

    def release(self) -> None:
        with self._lock:
            self._reserved -= 1

    def take(self, sock: socket.socket, job_id: str, version: int, finished: bool) -> None:
        """Serve `sock` from now on; the head and the state at `version` were sent already
        (`finished`: that state was the last, so the stream only has to end)."""
        sock.setblocking(False)
        stream = _Stream(sock, job_id, version, next_beat=time.monotonic() + self.heartbeat_s)
        if finished:
            stream.ending = True
            stream.pending += chunk(b"")
        with self._lock:
            self._incoming.append(stream)
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            try:
                self._step()
            except Exception:  # a bug must cost the streams, never the thread
                logger.exception("event stream loop error")
                for stream in list(self._streams.values()):
                    self._close(stream)

    def _step(self) -> None:
        now = time.monotonic()
        beats = [s.next_beat for s in self._streams.values()]
        timeout = max(0.0, min(beats) - now) if beats else None
        for key, mask in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
                continue
            stream: _Stream = key.data
            if mask & selectors.EVENT_READ and not self._peer_open(stream):
                self._close(stream)
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for stream in incoming:
            self._streams[stream.sock] = stream
            self._selector.register(stream.sock, selectors.EVENT_READ, stream)
        now = time.monotonic()
        for stream in list(self._streams.values()):
            if not stream.ending:
                self._refresh(stream, now)
            self._flush(stream)

    def _peer_open(self, stream: _Stream) -> bool:
        """A readable stream socket means the client closed it (or sent junk we ignore)."""
        try:
            return bool(stream.sock.recv(4096))
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False

    def _refresh(self, stream: _Stream, now: float) -> None:
        try:
            with self.runner.cond:
                version = self.runner.version(stream.job_id)
                view = self.runner.view(stream.job_id) if version != stream.version else None
        except JobNotFound:
            stream.ending = True
            stream.pending += chunk(b"")
            return
        if view is not None:
            stream.version = version
            stream.pending += chunk(state_event(view, version))
            if view.status in FINISHED:
                stream.ending = True
                stream.pending += chunk(b"")
                return
        if now >= stream.next_beat:
            stream.pending += chunk(heartbeat_event())
            stream.next_beat = now + self.heartbeat_s

    def _flush(self, stream: _Stream) -> None:
        if stream.pending:
            try:
                sent = stream.sock.send(stream.pending)
                del stream.pending[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close(stream)
                return
        if len(stream.pending) > MAX_PENDING_BYTES:
            logger.info(
                "event stream for job %s dropped: the client stopped reading", stream.job_id
            )
            self._close(stream)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if stream.pending else 0)
        if stream.ending and not stream.pending:
            with contextlib.suppress(OSError):
                stream.sock.shutdown(socket.SHUT_WR)
            self._close(stream)
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(stream.sock, events, stream)

    def _close(self, stream: _Stream) -> None:
        if self._streams.pop(stream.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(stream.sock)
        with contextlib.suppress(OSError):
            stream.sock.close()
        self.release()


def stream_events(runner: JobRunner, job_id: str, heartbeat_s: float) -> Iterator[bytes]:
    """The same stream as a plain generator, for servers without a stream handoff (it holds
    its thread: Flask's development server and the test client only)."""
    version = -1
    next_beat = time.monotonic() + heartbeat_s
    while True:
        with runner.cond:

            def changed(seen: int = version) -> bool:
                return runner.version(job_id) != seen

            runner.cond.wait_for(
                changed,
                max(0.0, next_beat - time.monotonic()),
            )
            current = runner.version(job_id)
            view = runner.view(job_id) if current != version else None
        if view is not None:
            version = current
            yield state_event(view, version)
            if view.status in FINISHED:
                return
        elif time.monotonic() >= next_beat:
            yield heartbeat_event()
            next_beat = time.monotonic() + heartbeat_s
