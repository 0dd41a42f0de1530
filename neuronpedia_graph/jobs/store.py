"""Job records and finished graph documents on disk, under `GRAPH_STORE_DIR/jobs/`.

One JSON record per job (`<id>.json`) and, for a finished job without `signed_url`, its graph
document (`<id>.graph.json`). Every file is written to a temporary name and renamed into place,
so a crash leaves the old version or the new one, never half a file. Records never contain a
`signed_url` (a credential): `JobRecord.request` is the request without it.

File names come only from job ids that match `models.ID_PATTERN`, so no id reaches outside the
directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from neuronpedia_graph.jobs.models import ID_PATTERN, JobRecord

logger = logging.getLogger(__name__)


class JobStore:
    """The job files of one server (one process writes them)."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str, suffix: str) -> Path:
        if not ID_PATTERN.match(job_id):
            raise ValueError("not a job id")
        return self.dir / f"{job_id}{suffix}"

    def record_path(self, job_id: str) -> Path:
        return self._path(job_id, ".json")

    def document_path(self, job_id: str) -> Path:
        return self._path(job_id, ".graph.json")

    def save(self, record: JobRecord) -> None:
        self._write(self.record_path(record.id), record.model_dump_json().encode())

    def save_document(self, job_id: str, body: bytes) -> None:
        self._write(self.document_path(job_id), body)

    def read_document(self, job_id: str) -> bytes | None:
        try:
            return self.document_path(job_id).read_bytes()
        except FileNotFoundError:
            return None

    def load_all(self) -> list[JobRecord]:
        """Every readable record; unreadable ones are logged and skipped."""
        records = []
        for path in sorted(self.dir.glob("*.json")):
            if path.name.endswith(".graph.json") or not ID_PATTERN.match(path.stem):
                continue
            try:
                records.append(JobRecord.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError) as exc:
                logger.warning("skipping unreadable job record %s: %s", path.name, exc)
        return records

    def _write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
