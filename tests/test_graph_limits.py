"""Graph size caps: an oversized graph is refused with 413 before it is serialized.

A graph inside every documented request bound can still be gigabytes of JSON (node and edge
thresholds of 1 keep everything), so MAX_GRAPH_LINKS caps every graph and MAX_GRAPH_BYTES caps
direct replies (uploads are not held in a reply, so only the link cap applies to them).
"""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import AUTH, SECRET, graph_body
from tests.helpers import assert_still_serving


@pytest.fixture
def limited_client(demo_loaded, demo_settings):
    from neuronpedia_graph.api import create_app
    from neuronpedia_graph.service import GraphService

    def make(**limits):
        settings = demo_settings.model_copy(update=limits)
        return create_app(GraphService(demo_loaded, settings), SECRET).test_client()

    return make


def test_too_many_links_is_413_naming_limit_size_and_thresholds(limited_client):
    client = limited_client(max_graph_links=10)
    res = client.post("/generate-graph", json=graph_body(), headers=AUTH)
    assert res.status_code == 413, res.get_json()
    body = res.get_json()
    assert body["max_graph_links"] == 10 and body["links"] > 10
    for needle in ("MAX_GRAPH_LINKS=10", f"{body['links']} links", "node_threshold=0.8"):
        assert needle in body["error"]
    assert "edge_threshold=0.98" in body["error"]
    assert_still_serving(client)


def test_link_cap_applies_to_uploads_too(limited_client, s3):
    client = limited_client(max_graph_links=10)
    url = s3.presign_put("limits/too-many-links.json")
    res = client.post("/generate-graph", json=graph_body(signed_url=url), headers=AUTH)
    assert res.status_code == 413 and "MAX_GRAPH_LINKS" in res.get_json()["error"]
    assert_still_serving(client)


def test_direct_reply_over_the_byte_cap_is_413_before_serializing(limited_client):
    client = limited_client(max_graph_bytes=1000)
    res = client.post("/generate-graph", json=graph_body(), headers=AUTH)
    assert res.status_code == 413, res.get_json()
    body = res.get_json()
    assert "MAX_GRAPH_BYTES=1000" in body["error"] and "signed_url" in body["error"]
    assert "at least" in body["error"]  # refused from the link count, before any JSON exists
    assert_still_serving(client)


def test_byte_cap_measured_exactly_once_written(limited_client, client):
    size = len(client.post("/generate-graph", json=graph_body(), headers=AUTH).data)
    over = limited_client(max_graph_bytes=size - 1)
    res = over.post("/generate-graph", json=graph_body(), headers=AUTH)
    assert res.status_code == 413 and res.get_json()["json_bytes"] == size
    exact = limited_client(max_graph_bytes=size)
    res = exact.post("/generate-graph", json=graph_body(), headers=AUTH)
    assert res.status_code == 200 and orjson.loads(res.data)["links"]


def test_byte_cap_does_not_apply_to_uploads(limited_client, s3):
    client = limited_client(max_graph_bytes=1000)
    key = "limits/upload-not-capped.json"
    res = client.post(
        "/generate-graph", json=graph_body(signed_url=s3.presign_put(key)), headers=AUTH
    )
    assert res.status_code == 200, res.get_json()
    stored = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert len(stored) > 1000
