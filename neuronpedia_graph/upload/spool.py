"""The spool directory, bounded: how much it may hold, how long, and what may never be removed.

Every graph with a `signed_url` is written here before its first upload attempt (write-ahead),
and stays when the upload fails. Unbounded, that grew by about 26 GB an hour under a run of
failing uploads of big graphs. So each write first makes room:

1. files older than ``SPOOL_MAX_AGE`` are removed;
2. then the oldest files go until the new graph fits in ``SPOOL_MAX_BYTES``;
3. a *pinned* file (the write-ahead copy of an upload still in flight) is never removed. When
   the pinned files and the new graph together exceed the limit, the spool is full: the write
   is refused with `SpoolFull`, whose message says so, and the upload goes ahead without a
   copy (the 502, should it fail, and the log say the graph could not be kept).

Every removal is logged with the file's name, size and age. At start-up the files already
there are listed (`report`), so an operator sees what is waiting to be re-uploaded
(`python -m neuronpedia_graph reupload FILE URL`, built on `UploadQueue.reupload`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from neuronpedia_graph.upload.transfer import byte_view

log = logging.getLogger(__name__)

# Characters kept from a slug in a spool file's name.
_UNSAFE_SLUG_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

# Files the spool writes: graphs, and the temporary files of writes a crash interrupted.
GRAPH_SUFFIXES = (".json", ".json.gz")
_TEMP_PREFIX = ".spool-"
# At start-up, list at most this many files one per line (then a count of the rest).
_LISTED = 100


class SpoolFull(OSError):
    """The spool cannot take this graph without removing an upload's write-ahead copy."""


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    bytes: int
    mtime: float

    def age(self, now: float) -> float:
        return max(0.0, now - self.mtime)


def _describe(entry: SpoolFile, now: float) -> str:
    return f"{entry.path.name} ({entry.bytes} bytes, {entry.age(now) / 3600:.1f} h old)"


class Spool:
    """A bounded spool directory (see the module docstring).

    Args:
        directory: created on the first write.
        max_bytes: the most all files together may hold (``SPOOL_MAX_BYTES``).
        max_age: seconds a file is kept (``SPOOL_MAX_AGE``).
    """

    def __init__(self, directory: Path, max_bytes: int, max_age: float) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._lock = threading.Lock()
        self._pinned: set[Path] = set()

    # ------------------------------------------------------------------- contents
    def files(self) -> list[SpoolFile]:
        """Graph files and interrupted temporary files, oldest first."""
        found = []
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return []
        for path in entries:
            name = path.name
            if not (name.endswith(GRAPH_SUFFIXES) or name.startswith(_TEMP_PREFIX)):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            if path.is_file():
                found.append(SpoolFile(path, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda f: (f.mtime, f.path.name))

    def report(self) -> None:
        """Log what the spool holds (at start-up), after removing files past their age."""
        with self._lock:
            self._evict_expired(time.time())
            files = self.files()
        now = time.time()
        total = sum(f.bytes for f in files)
        log.info(
            "spool directory %s holds %d graph file(s), %d bytes (SPOOL_MAX_BYTES=%d, "
            "SPOOL_MAX_AGE=%gs); re-upload one with: python -m neuronpedia_graph reupload "
            "FILE URL",
            self.directory,
            len(files),
            total,
            self.max_bytes,
            self.max_age,
        )
        for entry in files[:_LISTED]:
            log.info("spool file waiting for upload: %s", _describe(entry, now))
        if len(files) > _LISTED:
            log.info("... and %d more spool files", len(files) - _LISTED)

    # ------------------------------------------------------------------- writing
    def write(self, body: bytes | memoryview, *, slug: str, compressed: bool) -> Path:
        """Make room, then write the graph; the new file is pinned until `unpin`.

        Args:
            body: the bytes as they will be uploaded.
            slug: the graph's slug (the file name starts with it).
            compressed: the body is gzip'd.

        Returns:
            The spool file, pinned.

        Raises:
            SpoolFull: it does not fit without removing a pinned file (the message says why).
            OSError: the directory or file could not be written.
        """
        size = memoryview(body).nbytes
        with self._lock:
            now = time.time()
            self._evict_expired(now)
            if size > self.max_bytes:
                raise SpoolFull(
                    f"spool full: the graph ({size} bytes) is larger than "
                    f"SPOOL_MAX_BYTES={self.max_bytes}"
                )
            files = self.files()
            total = sum(f.bytes for f in files)
            for entry in files:
                if total + size <= self.max_bytes:
                    break
                if entry.path in self._pinned:
                    continue
                if self._remove(entry, now, f"to make room under SPOOL_MAX_BYTES={self.max_bytes}"):
                    total -= entry.bytes
            if total + size > self.max_bytes:
                raise SpoolFull(
                    f"spool full: {total} bytes held by uploads in flight plus this graph's "
                    f"{size} bytes exceed SPOOL_MAX_BYTES={self.max_bytes}"
                )
            path = spool_graph(body, self.directory, slug=slug, compressed=compressed)
            self._pinned.add(path)
            return path

    def pin(self, path: Path) -> None:
        """Protect an existing file (a re-upload of it) from eviction until `unpin`."""
        with self._lock:
            self._pinned.add(path)

    def unpin(self, path: Path | None) -> None:
        """The upload using this file has ended; the file may be removed from now on."""
        if path is not None:
            with self._lock:
                self._pinned.discard(path)

    # ------------------------------------------------------------------- removal
    def _evict_expired(self, now: float) -> None:
        for entry in self.files():
            if entry.age(now) > self.max_age and entry.path not in self._pinned:
                self._remove(entry, now, f"older than SPOOL_MAX_AGE={self.max_age:g}s")

    def _remove(self, entry: SpoolFile, now: float, why: str) -> bool:
        try:
            entry.path.unlink()
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("spool file %s could not be removed: %s", entry.path, exc.strerror or exc)
            return False
        log.warning("removed spool file %s %s", _describe(entry, now), why)
        return True


def _slug_for_filename(slug: str) -> str:
    cleaned = _UNSAFE_SLUG_CHARS.sub("-", slug).strip(".-")[:80]
    return cleaned or "graph"


def spool_graph(body: bytes | memoryview, spool_dir: Path, *, slug: str, compressed: bool) -> Path:
    """Keep a graph on local disk, written atomically and fsync'd so no half file is left.

    The name is unique (UTC timestamp + random suffix), so concurrent spools never collide.
    The caller logs why the graph was spooled (upload_queue writes every graph here before
    its upload starts and removes the file once the upload succeeded).

    Args:
        body: the bytes exactly as they would be uploaded.
        spool_dir: created when missing.
        slug: the graph's slug, used (sanitized) as the start of the file name.
        compressed: the body is gzip'd (the file ends in ``.json.gz``).

    Returns:
        The path of the complete file.
    """
    spool_dir = Path(spool_dir)
    view = byte_view(body)
    spool_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    suffix = ".json.gz" if compressed else ".json"
    final = spool_dir / f"{_slug_for_filename(slug)}-{stamp}-{secrets.token_hex(4)}{suffix}"
    fd, tmp_name = tempfile.mkstemp(dir=spool_dir, prefix=".spool-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(view)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(spool_dir)
    log.debug("spooled graph %s (%d bytes) to %s", slug, view.nbytes, final)
    return final


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable; not all platforms can open a directory, so best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
