"""Memory measurement shared by the benchmarks (Linux /proc).

A peak is the kernel's resident high-water mark (VmHWM) after resetting it through
`/proc/self/clear_refs`, minus the resident size just before the measured call, so it counts
torch, numpy and Python allocations alike. Freed heap is returned to the system first
(`settle`), so that reusing it cannot hide a peak. `in_child` runs a measurement in a fresh
process, when what this process already holds would blur it.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def status_kb(pid: int | str, key: str) -> int:
    """One kB field of /proc/PID/status: VmRSS is resident now, VmHWM its peak.

    Raises:
        KeyError: the process has no such field (a kernel thread, a zombie).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def settle() -> None:
    """Return freed heap to the system, so that reusing it cannot hide a peak."""
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class PeakRss:
    """`with PeakRss() as rss: ...`; then `rss.extra` is the peak resident bytes above
    `rss.start`, the resident bytes when the block began."""

    start: int
    extra: int

    def __enter__(self) -> PeakRss:
        settle()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.start = status_kb("self", "VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        self.extra = status_kb("self", "VmHWM") * 1024 - self.start


def _send_result(target: Callable[..., object], args: tuple[object, ...], out: Connection) -> None:
    out.send(target(*args))


# Any: a multiprocessing context's type is private to multiprocessing.
def in_child(context: Any, target: Callable[..., T], *args: object) -> T:
    """`target(*args)` in a fresh process of `context`; its (picklable) result."""
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_send_result, args=(target, args, send))
    child.start()
    send.close()
    result: T = receive.recv()
    child.join()
    return result
