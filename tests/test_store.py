"""Stored attributions: re-prune without attributing, reuse, upload, eviction, bad files.

The equality tests run on the real server (gunicorn, demo model, CPU): a re-pruned or reused
document must be the fresh `/generate-graph` one byte for byte, except `create_time_ms`. The
eviction and bad-file tests use an in-process service on the same demo model with a store of
their own (its size cap is set per test).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from neuronpedia_graph.attribution_store import SUFFIX, AttributionStore, StoredGraphNotFound
from testkit.hold import HoldControl
from tests.conftest import LIVE_SETTINGS, SECRET, LiveServer, graph_body, start_server
from tests.jobs_client import AUTH, final_state, submit, without_time

PAIRS = [(0.5, 0.9), (0.9, 0.99)]


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("store")
    settings = {
        **LIVE_SETTINGS,
        "GRAPH_STORE_DIR": str(workdir / "store"),
        "GRAPH_STORE_BYTES": str(1 << 30),
    }
    with (
        HoldControl() as control,
        start_server(workdir, settings, secret=SECRET, hold=control) as server,
    ):
        yield server


def generate(server: LiveServer, **overrides: Any) -> requests.Response:
    res = requests.post(
        server.url("/generate-graph"), json=graph_body(**overrides), headers=AUTH, timeout=120
    )
    assert res.status_code == 200, res.text
    return res


def phases(res: requests.Response) -> list[str]:
    return [part.split(";")[0].strip() for part in res.headers["Server-Timing"].split(",")]


def reprune(server: LiveServer, graph_id: str, nt: float, et: float) -> requests.Response:
    return requests.get(
        server.url(f"/graphs/{graph_id}/document"),
        params={"node_threshold": nt, "edge_threshold": et},
        headers=AUTH,
        timeout=60,
    )


def test_re_pruned_job_documents_at_two_threshold_pairs_equal_fresh_graphs(store_server):
    prompt = "The city of Rome is in"
    job_id = submit(store_server, prompt=prompt, no_cache=True).json()["id"]
    assert final_state(store_server, job_id)["status"] == "done"
    for nt, et in PAIRS:
        res = reprune(store_server, job_id, nt, et)
        assert res.status_code == 200, res.text
        assert "attribute" not in phases(res) and "load" in phases(res)
        fresh = generate(
            store_server, prompt=prompt, node_threshold=nt, edge_threshold=et, no_cache=True
        )
        assert "attribute" in phases(fresh)
        document = without_time(res.json())
        assert document == without_time(fresh.json())
        assert document["metadata"]["node_threshold"] == nt


def test_re_pruning_needs_no_model_lock(store_server):
    graph_id = generate(store_server, prompt="1 2 3 4 5 6 7").headers["X-Graph-Id"]
    control = store_server.hold
    assert control is not None
    results: list[requests.Response] = []
    with control.hold("generate-graph") as held:
        worker = threading.Thread(
            target=lambda: results.append(generate(store_server, prompt="7 6 5", no_cache=True))
        )
        worker.start()
        held.wait()  # the model is held by that graph now
        busy = requests.get(store_server.url("/check-busy"), timeout=10).json()
        assert busy["busy"] is True
        res = reprune(store_server, graph_id, 0.5, 0.9)
        assert res.status_code == 200, res.text
    worker.join(timeout=120)
    assert results and results[0].status_code == 200


def test_a_synchronous_graph_is_stored_under_its_x_graph_id(store_server):
    res = generate(store_server, prompt="1 2 3 4 5 6", no_cache=True)
    graph_id = res.headers["X-Graph-Id"]
    nt, et = PAIRS[0]
    again = reprune(store_server, graph_id, nt, et)
    assert again.status_code == 200, again.text
    fresh = generate(
        store_server, prompt="1 2 3 4 5 6", node_threshold=nt, edge_threshold=et, no_cache=True
    )
    assert without_time(again.json()) == without_time(fresh.json())
    # Without thresholds: the stored request's own.
    same = requests.get(store_server.url(f"/graphs/{graph_id}/document"), headers=AUTH, timeout=60)
    assert without_time(same.json()) == without_time(res.json())


def test_a_reused_graph_equals_a_recomputed_one(store_server):
    prompt = "The city of Berlin is in"
    generate(store_server, prompt=prompt, no_cache=True)
    reused = generate(store_server, prompt=prompt, node_threshold=0.6, slug_identifier="other")
    assert "reused" in phases(reused) and "attribute" not in phases(reused)
    recomputed = generate(
        store_server, prompt=prompt, node_threshold=0.6, slug_identifier="other", no_cache=True
    )
    assert "attribute" in phases(recomputed) and "reused" not in phases(recomputed)
    assert without_time(reused.json()) == without_time(recomputed.json())
    # A different attribution parameter is a different attribution: not reused.
    other = generate(store_server, prompt=prompt, max_feature_nodes=100)
    assert "attribute" in phases(other)
    # A job with the same key is served from the store as well.
    job_id = submit(store_server, prompt=prompt, node_threshold=0.6).json()["id"]
    state = final_state(store_server, job_id)
    assert "reused" in state["timings"] and "attribute" not in state["timings"]
    doc = requests.get(store_server.url(f"/graphs/{job_id}/document"), headers=AUTH, timeout=60)
    assert without_time(doc.json())["nodes"] == without_time(recomputed.json())["nodes"]
    # Re-pruned under the job's id: the job's own request (its slug), the shared attribution.
    again = reprune(store_server, job_id, 0.6, 0.98).json()
    assert again["metadata"]["slug"] == graph_body()["slug_identifier"]
    assert again["nodes"] == doc.json()["nodes"]


def test_a_stored_graph_is_uploaded_under_the_upload_policy(store_server, s3):
    graph_id = generate(store_server, prompt="The city of Paris is in").headers["X-Graph-Id"]
    url = store_server.url(f"/graphs/{graph_id}/upload")
    body = {"signed_url": s3.presign_put("stored/paris.json"), "node_threshold": 0.5}
    res = requests.post(url, json=body, headers=AUTH, timeout=60)
    assert res.status_code == 200, res.text
    stored = s3.client.get_object(Bucket=s3.bucket, Key="stored/paris.json")["Body"].read()
    expected = reprune(store_server, graph_id, 0.5, 0.98).json()
    assert without_time(json.loads(stored)) == without_time(expected)
    # An uploaded job keeps no document, but its attribution: re-pruned at its own thresholds.
    job_url = s3.presign_put("stored/job.json")
    job_id = submit(store_server, prompt="1 2 3", signed_url=job_url).json()["id"]
    assert final_state(store_server, job_id)["status"] == "done"
    uploaded = s3.client.get_object(Bucket=s3.bucket, Key="stored/job.json")["Body"].read()
    doc = requests.get(store_server.url(f"/graphs/{job_id}/document"), headers=AUTH, timeout=60)
    assert doc.status_code == 200, doc.text
    assert without_time(doc.json()) == without_time(json.loads(uploaded))
    refused = requests.post(
        url,
        json={"signed_url": "http://169.254.169.254/x?X-Amz-Signature=secret"},
        headers=AUTH,
        timeout=30,
    )
    assert refused.status_code == 422 and "signed_url" in refused.json()["error"]
    assert "secret" not in refused.text
    missing = requests.post(
        store_server.url(f"/graphs/{'B' * 24}/upload"),
        json={"signed_url": s3.presign_put("stored/none.json")},
        headers=AUTH,
        timeout=30,
    )
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/graphs/..%2F..%2F..%2Fetc%2Fpasswd/document?node_threshold=0.5",
        "/graphs/%2e%2e/document?node_threshold=0.5",
        "/graphs/" + "A" * 23 + "%2F/document?node_threshold=0.5",
        "/graphs/" + "A" * 24 + "/document?node_threshold=0.5",
    ],
)
def test_a_graph_id_cannot_reach_outside_the_store(store_server, path):
    res = requests.get(store_server.url(path), headers=AUTH, timeout=30)
    assert res.status_code == 404
    assert res.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("bad", ["../" + "A" * 21, "A" * 23, "/etc/passwd", ""])
def test_the_store_names_no_file_for_a_non_id(tmp_path, bad):
    with pytest.raises(StoredGraphNotFound):
        AttributionStore(tmp_path, 1 << 20).path(bad)


def test_bad_thresholds_are_refused(store_server):
    graph_id = generate(store_server).headers["X-Graph-Id"]
    for value in ("0", "1.5", "abc"):
        res = reprune(store_server, graph_id, value, 0.9)  # type: ignore[arg-type]
        assert res.status_code == 422 and res.json()["fields"] == ["node_threshold"]


# ---------------------------------------------------------------- in-process, own store
@pytest.fixture
def own_store(demo_loaded, demo_settings, tmp_path):
    """A client of a service with a store of its own; `set_cap(bytes)` resizes it."""
    from neuronpedia_graph.api import create_app
    from neuronpedia_graph.service import GraphService

    settings = demo_settings.model_copy(
        update={"graph_store_dir": tmp_path / "store", "graph_store_bytes": 1 << 30}
    )
    service = GraphService(demo_loaded, settings)
    return service, create_app(service, SECRET).test_client()


def post(client, **overrides: Any):
    res = client.post("/generate-graph", json=graph_body(**overrides), headers=AUTH)
    assert res.status_code == 200, res.get_json()
    return res


def test_eviction_removes_the_least_recently_used(own_store):
    service, client = own_store
    ids = [
        post(client, prompt=p).headers["X-Graph-Id"]
        for p in ("The city of Paris is in", "1 2 3 4", "The city of Rome is in")
    ]
    store: AttributionStore = service.attributions
    sizes = {i: store.path(i).stat().st_size for i in ids}
    # Read the oldest: it becomes the most recently used, so the second goes first.
    assert (
        client.get(f"/graphs/{ids[0]}/document?node_threshold=0.5", headers=AUTH).status_code == 200
    )
    store.max_bytes = sizes[ids[0]] + sizes[ids[2]] + max(sizes.values()) - 1
    fourth = post(client, prompt="5 6 7 8").headers["X-Graph-Id"]
    left = {p.name.removesuffix(SUFFIX) for p in store.dir.glob(f"*{SUFFIX}")}
    assert left == {ids[0], ids[2], fourth}
    res = client.get(f"/graphs/{ids[1]}/document?node_threshold=0.5", headers=AUTH)
    assert res.status_code == 404 and "evicted" in res.get_json()["error"]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped byte in the adjacency rows, which safetensors alone would not notice
        index = len(data) - 200
        path.write_bytes(data[:index] + bytes([data[index] ^ 0x40]) + data[index + 1 :])


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_damaged_store_file_is_refused_then_recomputed_never_served_wrong(own_store, how):
    service, client = own_store
    first = post(client, no_cache=True)
    graph_id = first.headers["X-Graph-Id"]
    _damage(service.attributions.path(graph_id), how)
    res = client.get(f"/graphs/{graph_id}/document?node_threshold=0.5", headers=AUTH)
    assert res.status_code == 410
    assert (
        "unreadable" in res.get_json()["error"]
        and "Generate the graph again" in res.get_json()["error"]
    )
    assert not service.attributions.path(graph_id).exists()
    # The damaged file was removed, so the same request attributes afresh and is right.
    again_id = post(client, no_cache=True).headers["X-Graph-Id"]
    _damage(service.attributions.path(again_id), how)
    reused = post(client)  # finds the damaged file by its key: refuses it and recomputes
    assert "attribute" in reused.headers["Server-Timing"]
    assert not service.attributions.path(again_id).exists()
    assert without_time(reused.get_json()) == without_time(first.get_json())
    # The server goes on serving.
    assert client.get("/health").status_code == 200


def test_the_reuse_key_is_everything_but_thresholds_and_delivery():
    from neuronpedia_graph.attribution_store import reuse_key

    base = {"prompt": "x", "model_id": "demo", "max_feature_nodes": 200, "batch_size": 48}
    key = reuse_key("demo", "demo", [1, 2, 3], base)
    for same in (
        {"node_threshold": 0.5, "edge_threshold": 0.9},
        {"signed_url": "https://x", "compress": True, "slug_identifier": "s", "user_id": "u"},
        {"model_id": "an-alias"},
    ):
        assert reuse_key("demo", "demo", [1, 2, 3], {**base, **same}) == key, same
    for other in ({"max_feature_nodes": 100}, {"batch_size": 8}, {"max_n_logits": 3}):
        assert reuse_key("demo", "demo", [1, 2, 3], {**base, **other}) != key, other
    assert reuse_key("demo", "demo", [1, 2], base) != key
    assert reuse_key("demo", "other-set", [1, 2, 3], base) != key
    assert reuse_key("other", "demo", [1, 2, 3], base) != key
