"""Without the stream handoff (Flask's development server, the test client), a job's events are
an ordinary streaming response with the same content."""

from __future__ import annotations

from tests.conftest import SECRET, graph_body
from tests.jobs_client import parse_events


def test_the_event_stream_without_a_handoff_worker(demo_loaded, demo_settings, tmp_path):
    from neuronpedia_graph.api import create_app
    from neuronpedia_graph.service import GraphService
    from neuronpedia_graph.serving.stream_handoff import supported

    assert not supported()  # no gunicorn worker in this process
    settings = demo_settings.model_copy(
        update={"graph_store_dir": tmp_path / "store", "job_events_heartbeat": 0.05}
    )
    client = create_app(GraphService(demo_loaded, settings), SECRET).test_client()
    auth = {"x-secret-key": SECRET}
    created = client.post("/graphs", json=graph_body(), headers=auth)
    assert created.status_code == 202
    job_id = created.get_json()["id"]
    res = client.get(f"/graphs/{job_id}/events", headers=auth)
    assert res.status_code == 200 and res.mimetype == "text/event-stream"
    events = parse_events(res.get_data(as_text=True).split("\n"))
    states = [data for event, data in events if event == "state"]
    assert states[-1]["status"] == "done" and states[-1]["progress"] == 1.0
    progress = [s["progress"] for s in states]
    assert progress == sorted(progress)
    assert client.get(f"/graphs/{'Z' * 24}/events", headers=auth).status_code == 404
    document = client.get(f"/graphs/{job_id}/document", headers=auth)
    assert document.status_code == 200 and document.get_json()["nodes"]
    assert (tmp_path / "store" / "jobs" / f"{job_id}.graph.json").is_file()
