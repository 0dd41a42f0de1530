"""The job store on disk: ids name no path outside it, unreadable records are skipped."""

from __future__ import annotations

import logging

import pytest

from neuronpedia_graph.jobs.models import JobRecord
from neuronpedia_graph.jobs.store import JobStore

JOB_ID = "A" * 24


def test_records_and_documents_round_trip_and_are_written_whole(tmp_path):
    store = JobStore(tmp_path)
    record = JobRecord(id=JOB_ID, status="done", created_at=1.0, request={"prompt": "x"})
    store.save(record)
    store.save_document(JOB_ID, b'{"nodes": []}')
    assert store.load_all() == [record]
    assert store.read_document(JOB_ID) == b'{"nodes": []}'
    assert store.read_document("B" * 24) is None
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == [
        f"{JOB_ID}.graph.json",
        f"{JOB_ID}.json",
    ]  # no temporary files left


@pytest.mark.parametrize("bad", ["../" + "A" * 21, "A" * 23, "A" * 25, "/etc/passwd", ""])
def test_a_name_that_is_not_a_job_id_reaches_no_file(tmp_path, bad):
    store = JobStore(tmp_path)
    with pytest.raises(ValueError):
        store.record_path(bad)
    with pytest.raises(ValueError):
        store.read_document(bad)


def test_unreadable_records_are_logged_and_skipped(tmp_path, caplog):
    store = JobStore(tmp_path)
    good = JobRecord(id=JOB_ID, status="failed", created_at=2.0)
    store.save(good)
    (store.dir / f"{'C' * 24}.json").write_bytes(b'{"id": "truncated')
    (store.dir / "notes.json").write_text("{}")  # not a job id: ignored
    with caplog.at_level(logging.WARNING):
        assert store.load_all() == [good]
    assert "CCCCCCCC" in caplog.text
