"""gzip for large graph documents: parallel, without copying the input, length known up front.

A 100 MB graph JSON takes about 1.5 s to deflate at level 3 on one core, as long as building
the JSON itself. Deflate has no state beyond its 32 KiB window, so the input is cut into chunks
that compress on separate threads (zlib releases the GIL), each primed with the 32 KiB before it
as a preset dictionary and ended on a byte boundary with a sync flush; concatenated, they form
one ordinary deflate stream inside a single-member gzip file, the same framing pigz uses. Any
gzip reader (browsers, `Content-Encoding: gzip`, Python's gzip) decodes it, and the output does
not depend on the number of threads.

zlib-ng, where installed, replaces zlib: same API, levels and stream format, and about twice
as fast at level 3 (0.75 s against 1.7 s for 85 MB here); its output bytes differ from zlib's,
and both are valid gzip.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor

try:
    from zlib_ng import zlib_ng as zlib
except ImportError:  # optional speed-up; the standard library's zlib is always there
    import zlib

DEFLATE_BACKEND: str = zlib.__name__

# RFC 1952 header: deflate, no flags, mtime 0 (reproducible output), no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_WINDOW = 1 << 15  # deflate's back-reference window: all a chunk may need from its predecessor
_MAX_WORKERS = 8


def gzip_compress(
    data: bytes | bytearray | memoryview,
    level: int = 3,
    chunk_size: int = 1 << 20,
    *,
    workers: int | None = None,
) -> bytes:
    """Standard gzip stream (valid for Content-Encoding: gzip), compressed chunk by chunk from a
    memoryview so no extra full copy of the input is made; returns the compressed bytes whose
    length is known before an upload (explicit Content-Length).

    `workers` defaults to the CPUs this process may use (at most 8); 1 compresses inline.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    view = memoryview(data).cast("B")
    size = view.nbytes
    starts = range(0, max(size, 1), chunk_size)

    def deflate(start: int) -> bytes:
        end = min(start + chunk_size, size)
        compressor = (
            zlib.compressobj(
                level, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=view[max(0, start - _WINDOW) : start]
            )
            if start
            else zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        )
        body = compressor.compress(view[start:end])
        return body + compressor.flush(zlib.Z_FINISH if end >= size else zlib.Z_SYNC_FLUSH)

    n_workers = min(workers or _available_cpus(), _MAX_WORKERS, len(starts))
    pieces = [_GZIP_HEADER]
    if n_workers <= 1:
        pieces.extend(map(deflate, starts))
        crc = zlib.crc32(view)
    else:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="gzip") as pool:
            compressed = pool.map(deflate, starts)
            crc = zlib.crc32(view)  # runs here while the workers deflate
            pieces.extend(compressed)
    pieces.append(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return b"".join(pieces)  # one allocation of the exact size


def _available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
