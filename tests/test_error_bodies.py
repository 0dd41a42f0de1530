"""One error body for every transport: HTTP, graph jobs and the Runpod worker add only their
own parts to `errors.error_reply`'s (HTTP the request id and Retry-After, Runpod the status)."""

from __future__ import annotations

import orjson
import pytest

from neuronpedia_graph.api.responses import render_error
from neuronpedia_graph.errors import (
    InvalidField,
    ServerBusy,
    UploadFailed,
    error_body,
    error_reply,
)
from neuronpedia_graph.logging_setup import request_id_var
from neuronpedia_graph.runpod_worker import ModelUnavailable, error_output


def test_a_service_error_keeps_its_status_message_and_extra_fields():
    exc = UploadFailed("Failed to upload graph: refused", spool_file="g.json")
    assert error_reply(exc) == (
        502,
        {"error": "Failed to upload graph: refused", "spool_file": "g.json"},
    )
    assert error_reply(InvalidField("Invalid request: x", fields=["x"])) == (
        422,
        {"error": "Invalid request: x", "fields": ["x"]},
    )


def test_an_unexpected_error_is_a_500_naming_only_its_type():
    status, body = error_reply(KeyError("SECRET=hunter2"))
    assert (status, body) == (500, {"error": "Internal server error (KeyError)"})
    assert "hunter2" not in orjson.dumps(body).decode()


@pytest.mark.parametrize(
    "exc",
    [
        ServerBusy(),
        UploadFailed("Failed to upload graph: refused", spool_file="g.json"),
        ModelUnavailable("Model could not be loaded on this worker: x", refresh_worker=True),
        RuntimeError("a bug"),
    ],
    ids=["busy", "upload", "model-unavailable", "bug"],
)
def test_http_and_runpod_carry_the_same_body(exc):
    token = request_id_var.set("req-1")
    try:
        response = render_error(*error_reply(exc))
    finally:
        request_id_var.reset(token)
    http = orjson.loads(response.get_data())
    runpod = error_output(exc)
    assert http.pop("request_id") == "req-1"
    assert runpod.pop("status") == response.status_code
    assert http == runpod
    retry = response.headers.get("Retry-After")
    assert (retry is not None) == (response.status_code == 503)


def test_the_body_is_the_message_then_the_extra_fields():
    assert list(error_body("m", b=1, a=2)) == ["error", "b", "a"]


def test_the_error_tree_in_the_errors_docstring_names_every_service_error():
    """The drawing in `neuronpedia_graph.errors` is the map of every error: it must stay true."""
    import importlib

    from neuronpedia_graph import errors

    for module in (
        "jobs.runner",
        "jobs.events",
        "upload.queue",
        "attribution_store",
        "runpod_worker.jobs",
        "runpod_worker.loader",
    ):
        importlib.import_module(f"neuronpedia_graph.{module}")

    def subclasses(cls: type) -> list[type]:
        return [cls, *(c for sub in cls.__subclasses__() for c in subclasses(sub))]

    found = [
        c for c in subclasses(errors.ServiceError) if c.__module__.startswith("neuronpedia_graph.")
    ]
    assert len(found) >= 16
    drawn = errors.__doc__ or ""
    for cls in found:
        assert f"{cls.__name__} ({cls.status}" in drawn or (
            cls.__name__ in drawn and issubclass(cls, errors.ServerBusy)
        ), cls.__name__
