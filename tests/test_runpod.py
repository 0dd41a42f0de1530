"""The Runpod worker: same work and same messages as HTTP, failures always marked as failures.

The handler is called directly with the session's demo service (fast, every error class), then
the real worker process is started from its entry file (runpod/handler.py, the image's CMD)
under the SDK's local API and driven over /runsync.
"""

from __future__ import annotations

import gzip
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import orjson
import pytest
import requests

from neuronpedia_graph import runpod_worker
from testkit.live import start_process, stop, wait_until_ready
from tests.conftest import (
    AUTH,
    LOCAL_UPLOAD_HOSTS,
    REPO,
    LiveServer,
    free_port,
    graph_body,
    steer_body,
)
from tests.fault_targets import closed_port_url
from tests.helpers import without_create_time

ENTRY_FILE = REPO / "runpod" / "handler.py"
PROMPT = "The city of Paris is in"


@pytest.fixture(scope="module")
def handler(service):
    return runpod_worker.make_handler(service)


def job(**job_input: Any) -> dict[str, Any]:
    return {"id": "job-1", "input": job_input}


def assert_failed(output: dict, status: int) -> str:
    """Runpod marks a job FAILED exactly when the output has a truthy `error`."""
    assert isinstance(output.get("error"), str) and output["error"], output
    assert output["status"] == status, output
    return output["error"]


def now_ms() -> float:
    return time.time() * 1000


# --------------------------------------------------------------------- successful jobs
def test_graph_job_returns_the_same_document_as_http(handler, client, graph_schema):
    output = handler(job(request_type="graph", **graph_body()))
    assert "error" not in output
    jsonschema.validate(output, graph_schema)
    res = client.post("/generate-graph", json=graph_body(), headers=AUTH)
    assert res.status_code == 200
    assert without_create_time(output) == without_create_time(orjson.loads(res.data))


def test_graph_job_with_a_contrast_target_matches_http(handler, client, graph_schema):
    body = graph_body(attribution_targets={"contrast": [" France", " Italy"]})
    output = handler(job(request_type="graph", **body))
    assert "error" not in output, output
    jsonschema.validate(output, graph_schema)
    meta = output["metadata"]
    assert meta["attribution_targets"]["contrast"] == [" France", " Italy"]
    assert set(meta["scores"]) == {"replacement", "completeness"}
    res = client.post("/generate-graph", json=body, headers=AUTH)
    assert res.status_code == 200
    assert without_create_time(output) == without_create_time(orjson.loads(res.data))


def test_request_type_defaults_to_graph(handler):
    output = handler(job(**graph_body(slug_identifier="default-type")))
    assert output["metadata"]["slug"] == "default-type"
    assert output["nodes"] and output["links"]


def test_graph_upload_job_puts_the_graph_in_s3(handler, s3):
    key = "runpod/upload.json"
    url = s3.presign_put(key, content_encoding="gzip")
    output = handler(
        job(
            **graph_body(slug_identifier="uploaded", signed_url=url, compress=True),
            deadline=now_ms() + 60_000,
        )
    )
    timings = output.pop("timings_ms")
    stored = s3.client.get_object(Bucket=s3.bucket, Key=key)
    payload = stored["Body"].read()
    assert output == {
        "success": "Graph uploaded",
        "url": url.split("?")[0],
        "bytes": len(payload),
        "compressed": True,
    }
    assert {"attribute", "build_json", "compress", "upload"} <= set(timings)
    assert all(isinstance(ms, float) and ms >= 0 for ms in timings.values())
    assert stored["ContentEncoding"] == "gzip"
    assert orjson.loads(gzip.decompress(payload))["metadata"]["slug"] == "uploaded"


def test_forward_pass_job_matches_http(handler, client):
    body = {"prompt": PROMPT, "model_id": "demo", "max_n_logits": 5}
    output = handler(job(request_type="forward-pass", **body))
    res = client.post("/forward-pass", json=body, headers=AUTH)
    assert res.status_code == 200
    assert output == res.get_json()
    assert output["input_tokens"] and output["salient_logits"]


def test_steer_job_matches_http(handler, client):
    output = handler(job(request_type="steer", **steer_body()))
    assert "error" not in output, output
    res = client.post("/steer", json=steer_body(), headers=AUTH)
    assert res.status_code == 200, res.get_json()
    assert output == res.get_json()  # temperature 0: greedy, so both runs agree
    assert output["STEERED_GENERATION"]


# ------------------------------------------------------------------------ failed jobs
@pytest.mark.parametrize(
    ("request_type", "path", "body"),
    [
        ("graph", "/generate-graph", graph_body(batch_size=0)),
        ("graph", "/generate-graph", graph_body(slug_identifier="bad slug!", compress="yes")),
        ("graph", "/generate-graph", graph_body(max_feature_nodes=10**6)),
        ("forward-pass", "/forward-pass", {"prompt": PROMPT, "max_n_logits": 51}),
        ("forward-pass", "/forward-pass", {"prompt": "x " * 2100}),
        ("steer", "/steer", steer_body(features="not a list")),
        ("graph", "/generate-graph", graph_body(model_id="google/gemma-2-2b")),
        ("forward-pass", "/forward-pass", {"prompt": PROMPT, "model_id": "gpt2"}),
        ("graph", "/generate-graph", graph_body(attribution_targets=[" Paris is"])),
        ("graph", "/generate-graph", graph_body(attribution_targets={"contrast": "a"})),
    ],
)
def test_invalid_jobs_fail_with_the_http_message(handler, client, request_type, path, body):
    output = handler(job(request_type=request_type, **body))
    res = client.post(path, json=body, headers=AUTH)
    http = res.get_json()
    http.pop("request_id")
    assert res.status_code in (400, 422)
    assert output == {**http, "status": res.status_code}


def test_model_not_available_names_the_loaded_model(handler):
    output = handler(job(**graph_body(model_id="google/gemma-2-2b")))
    message = assert_failed(output, 400)
    assert message == (
        "Model 'google/gemma-2-2b' is not available. Only 'demo' is currently loaded."
    )


def test_unknown_request_type_fails(handler):
    output = handler(job(request_type="explain", prompt=PROMPT))
    message = assert_failed(output, 422)
    assert message.startswith("Invalid request: request_type: ")
    assert "graph" in message and "forward-pass" in message and "parse-chat-prompt" in message
    assert output["fields"] == ["request_type"]


@pytest.mark.parametrize(
    ("request_type", "path", "body"),
    [
        ("parse-chat-prompt", "/parse-chat-prompt", {"prompt": PROMPT}),
        ("forward_pass", "/forward-pass", {"prompt": PROMPT}),
        ("forward-pass", "/forward-pass", {"prompt": PROMPT}),
    ],
)
def test_request_types_the_web_app_sends(handler, client, request_type, path, body):
    output = handler(job(request_type=request_type, **body))
    assert "error" not in output, output
    res = client.post(path, json=body, headers=AUTH)
    assert res.status_code == 200 and output == res.get_json()


@pytest.mark.parametrize("job_input", [None, "a prompt", ["graph"], 42])
def test_input_that_is_not_an_object_fails(handler, job_input):
    output = handler({"id": "job-1", "input": job_input})
    assert assert_failed(output, 400) == "Request body must be a JSON object"


def test_job_without_input_fails(handler):
    assert assert_failed(handler({"id": "job-1"}), 400) == "Request body must be a JSON object"


@pytest.mark.parametrize("deadline", ["soon", True, -1, float("nan")])
def test_malformed_deadline_fails(handler, deadline):
    output = handler(job(**graph_body(), deadline=deadline))
    assert assert_failed(output, 422).startswith("Invalid request: deadline: ")


def test_expired_deadline_refuses_the_work(handler, s3):
    key = "runpod/expired.json"
    url = s3.presign_put(key)
    deadline = now_ms() - 5_000
    output = handler(job(**graph_body(signed_url=url), deadline=deadline))
    message = assert_failed(output, 408)
    assert message.startswith("Job deadline passed ") and "was not run" in message
    assert output["deadline"] == deadline
    listed = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=key)
    assert listed.get("KeyCount", 0) == 0  # nothing was computed, so nothing was uploaded


def test_deadline_in_seconds_gets_a_hint(handler):
    output = handler(job(request_type="forward-pass", prompt=PROMPT, deadline=time.time() + 60))
    assert "looks like seconds" in assert_failed(output, 408)


def test_upload_failure_fails_the_job_and_keeps_the_graph(handler, demo_settings):
    url = closed_port_url() + "?X-Amz-Signature=do-not-leak"
    output = handler(job(**graph_body(slug_identifier="spooled", signed_url=url)))
    message = assert_failed(output, 502)
    assert message.startswith("Failed to upload graph: ")
    assert "do-not-leak" not in orjson.dumps(output).decode()
    spooled = Path(demo_settings.spool_dir) / output["spool_file"]
    assert orjson.loads(spooled.read_bytes())["metadata"]["slug"] == "spooled"


def test_graph_too_large_for_a_job_output_fails(service):
    small = runpod_worker.make_handler(service, max_output_bytes=1_000)
    message = assert_failed(small(job(**graph_body())), 413)
    assert "send signed_url" in message


def test_unexpected_error_fails_the_job_and_the_worker_keeps_working(service, caplog):
    calls = []

    def flaky_service():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return service

    flaky = runpod_worker.make_handler(flaky_service)
    with caplog.at_level(logging.ERROR):
        output = flaky(job(request_type="forward-pass", prompt=PROMPT))
    assert output == {"error": "Internal server error (RuntimeError)", "status": 500}
    assert "injected fault" in caplog.text and "Traceback" in caplog.text
    ok = flaky(job(request_type="forward-pass", prompt=PROMPT))
    assert "error" not in ok and ok["input_tokens"]
    assert not service.lock.busy


def test_model_load_failure_fails_every_job_and_asks_for_a_new_worker(tmp_path):
    loader = runpod_worker.ServiceLoader(
        environ={"MODEL_ID": str(tmp_path / "no-such-model"), "DEVICE": "cpu"},
        env_file=tmp_path / "absent.env",
    )
    broken = runpod_worker.make_handler(loader.get)
    first = broken(job(request_type="forward-pass", prompt=PROMPT))
    message = assert_failed(first, 503)
    assert message.startswith("Model could not be loaded on this worker: ")
    assert "no-such-model" in message
    assert first["refresh_worker"] is True  # the SDK turns this into "stop this worker"
    assert broken(job(request_type="forward-pass", prompt=PROMPT)) == first  # not retried


# ----------------------------------------------------- the worker under the local API
# The SDK's local API is another server process of ours: same handle as the gunicorn one.
LocalApi = LiveServer


@pytest.fixture(scope="module", autouse=True)
def worker_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    """`python runpod/handler.py --rp_serve_api` on the demo model, in its own process group.

    The entry file the image runs: its tests are also the test that it starts the worker.

    Started before this module's first test, so that its start-up (imports, model load) runs
    while the in-process tests do, instead of adding to the file's time.
    """
    workdir = tmp_path_factory.mktemp("runpod")
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RUNPOD_") and k not in ("SECRET", "HF_TOKEN")
    }
    env.update(
        MODEL_ID="demo",
        DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        SPOOL_DIR=str(workdir / "spool"),
        UPLOAD_ALLOWED_HOSTS=LOCAL_UPLOAD_HOSTS,
        MAX_FEATURE_NODES="2000",
        PYTHONUNBUFFERED="1",
        UVICORN_LOG_LEVEL="warning",
    )
    argv = [sys.executable, str(ENTRY_FILE), "--rp_serve_api", "--rp_api_host", "127.0.0.1"]
    with start_process(
        [*argv, "--rp_api_port", str(port)],
        workdir,
        env,
        port=port,
        ready=None,
        new_session=True,
        inherit_env=False,
    ) as server:
        yield server
        stop_process_group(server.proc)


@pytest.fixture(scope="module")
def local_api(worker_process: LocalApi) -> LocalApi:
    """The worker, once it answers: the local API has no /health, but its docs page does."""
    try:
        wait_until_ready(worker_process, docs_ready, timeout=90)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"worker API did not answer: {exc}")
    return worker_process


def docs_ready(base: str) -> bool:
    return requests.get(f"{base}/docs", timeout=1).status_code == 200


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the worker, then make sure nothing it started is left in its process group."""
    pgid = proc.pid  # start_new_session made the worker its group's leader
    stop(proc, timeout=15)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    pytest.fail("the worker left processes running in its group")


def runsync(api: LocalApi, job_input: dict[str, Any]) -> dict[str, Any]:
    res = requests.post(f"{api.base}/runsync", json={"input": job_input}, timeout=120)
    assert res.status_code == 200, res.text
    return res.json()


def test_local_api_graph_upload(local_api, s3):
    key = "runpod/local-api.json"
    url = s3.presign_put(key, content_encoding="gzip")
    result = runsync(
        local_api, graph_body(slug_identifier="local-api", signed_url=url, compress=True)
    )
    assert result["status"] == "COMPLETED", result
    assert result["id"].startswith("test-")
    output = result["output"]
    assert output["success"] == "Graph uploaded" and output["compressed"] is True
    payload = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert output["bytes"] == len(payload)
    assert orjson.loads(gzip.decompress(payload))["metadata"]["slug"] == "local-api"
    # The SDK logs every handler output at its default DEBUG level: no signature may be in it.
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    assert "Handler output" in local_api.log() and signature not in local_api.log()


def test_local_api_forward_pass_and_steer(local_api, handler):
    body = {"request_type": "forward-pass", "prompt": PROMPT, "max_n_logits": 5}
    result = runsync(local_api, body)
    assert result["status"] == "COMPLETED", result
    assert result["output"] == handler(job(**body))

    result = runsync(local_api, {"request_type": "steer", **steer_body()})
    assert result["status"] == "COMPLETED", result
    assert result["output"] == handler(job(request_type="steer", **steer_body()))


def test_local_api_reports_an_invalid_job_as_failed(local_api, handler):
    body = graph_body(
        batch_size=0, signed_url="https://example.invalid/x?X-Amz-Signature=do-not-leak"
    )
    result = runsync(local_api, body)
    expected = handler(job(**body))["error"]
    assert expected.startswith("Invalid request: batch_size: ")
    # The SDK's local API keeps only the message: {"id", "status": "FAILED", "error"}.
    assert result == {"id": result["id"], "status": "FAILED", "error": expected}
    assert runsync(local_api, {"request_type": "forward-pass", "prompt": PROMPT})["status"] == (
        "COMPLETED"
    )
