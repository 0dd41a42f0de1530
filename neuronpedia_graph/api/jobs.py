"""The job routes: POST/GET /graphs, GET/DELETE /graphs/<id>, its document and its events.

Every route needs the secret: a job is visible only to holders of it. The job runner and the
event pump are built on first use (`runner_for`), or at start-up by the server (`start_jobs`),
so an app that never serves jobs (tests of other endpoints) starts no threads and writes no
store.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, current_app, request

from neuronpedia_graph.api.auth import require_secret
from neuronpedia_graph.api.responses import json_response
from neuronpedia_graph.errors import InvalidField
from neuronpedia_graph.jobs.models import FINISHED, ID_PATTERN, MAX_OFFSET, MAX_PAGE, JobCreated
from neuronpedia_graph.schemas import GraphRequest, parse_request
from neuronpedia_graph.serving.stream_handoff import ENVIRON_KEY, Handoff, supported

if TYPE_CHECKING:
    from neuronpedia_graph.jobs.events import EventPump
    from neuronpedia_graph.jobs.runner import JobRunner
    from neuronpedia_graph.service import GraphService

_START_LOCK = threading.Lock()


def init_app(app: Flask) -> None:
    bp = Blueprint("jobs", __name__)
    bp.add_url_rule("/graphs", view_func=require_secret(create_job), methods=["POST"])
    bp.add_url_rule("/graphs", view_func=require_secret(list_jobs), methods=["GET"])
    bp.add_url_rule("/graphs/<job_id>", view_func=require_secret(get_job), methods=["GET"])
    bp.add_url_rule("/graphs/<job_id>", view_func=require_secret(cancel_job), methods=["DELETE"])
    bp.add_url_rule(
        "/graphs/<job_id>/document", view_func=require_secret(job_document), methods=["GET"]
    )
    bp.add_url_rule(
        "/graphs/<job_id>/upload", view_func=require_secret(upload_stored), methods=["POST"]
    )
    bp.add_url_rule(
        "/graphs/<job_id>/events", view_func=require_secret(job_events), methods=["GET"]
    )
    app.register_blueprint(bp)


def start_jobs(app: Flask) -> tuple[JobRunner, EventPump]:
    """The app's job runner and event pump, created (and the store recovered) on first call."""
    with _START_LOCK:
        parts = app.extensions.get("npg_jobs")
        if parts is None:
            from neuronpedia_graph.jobs.events import EventPump
            from neuronpedia_graph.jobs.runner import JobRunner
            from neuronpedia_graph.jobs.store import JobStore

            service: GraphService = app.extensions["npg_service"]
            settings = service.settings
            runner = JobRunner(service, JobStore(settings.graph_store_dir), settings.job_queue_size)
            pump = EventPump(runner, settings.job_event_streams, settings.job_events_heartbeat)
            parts = app.extensions["npg_jobs"] = (runner, pump)
        return parts


def _runner() -> JobRunner:
    return start_jobs(current_app)[0]


def _job_id(job_id: str) -> str:
    from neuronpedia_graph.jobs.runner import JobNotFound

    if not ID_PATTERN.match(job_id):
        raise JobNotFound()
    return job_id


def create_job() -> Response:
    from neuronpedia_graph.api.routes import _body

    service: GraphService = current_app.extensions["npg_service"]
    # Validated exactly as /generate-graph validates, before anything is queued.
    graph_request = parse_request(GraphRequest, _body(), service.context)
    if graph_request.signed_url is not None:
        service.uploads.check(graph_request.signed_url)
    view = _runner().submit(graph_request)
    created = JobCreated(
        id=view.id, status=view.status, queue_position=view.queue_position, links=view.links
    )
    return json_response(created, 202, headers={"Location": view.links.self})


def list_jobs() -> Response:
    def number(name: str, default: int, low: int, high: int) -> int:
        raw = request.args.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise InvalidField(
                f"Invalid request: {name}: must be an integer from {low} to {high}", fields=[name]
            )
        return int(raw)

    limit = number("limit", 20, 1, MAX_PAGE)
    offset = number("offset", 0, 0, MAX_OFFSET)
    return json_response(_runner().list(offset, limit))


def get_job(job_id: str) -> Response:
    return json_response(_runner().view(_job_id(job_id)))


def cancel_job(job_id: str) -> Response:
    view = _runner().cancel(_job_id(job_id))
    return json_response(view, 200 if view.status == "cancelled" else 202)


def _threshold(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise InvalidField(
            f"Invalid request: {name}: must be a number above 0 and at most 1", fields=[name]
        )
    return value


def job_document(job_id: str) -> Response:
    """The stored document, or with thresholds (or for a synchronous graph's X-Graph-Id) the
    stored attribution re-pruned: no attribution, no model lock."""
    from neuronpedia_graph.jobs.runner import JobConflict, JobNotFound
    from neuronpedia_graph.service import Timings

    service: GraphService = current_app.extensions["npg_service"]
    job_id = _job_id(job_id)
    node_threshold, edge_threshold = _threshold("node_threshold"), _threshold("edge_threshold")
    runner = _runner()
    headers = {"Vary": "Accept-Encoding"}
    try:
        view = runner.view(job_id)
    except JobNotFound:
        view = None  # a synchronous graph's id: only its stored attribution exists
    if view is not None and view.status != "done":
        raise JobConflict(
            f"Job is {view.status}; its document exists once it is done", job_status=view.status
        )
    body, uploaded = None, None
    if view is not None and node_threshold is None and edge_threshold is None:
        try:
            body = runner.document(job_id)
        except JobConflict as exc:  # uploaded: re-pruned from the store at its own thresholds
            uploaded = exc
    if body is None:
        from neuronpedia_graph.attribution_store import StoredGraphNotFound

        timings = Timings()
        try:
            staged = service.stored_document(job_id, node_threshold, edge_threshold, timings)
        except StoredGraphNotFound:
            raise uploaded or StoredGraphNotFound() from None
        body = staged.body
        headers["Server-Timing"] = timings.server_timing()
    if request.accept_encodings.best_match(("gzip", "identity")) == "gzip":
        from neuronpedia_graph.compression import gzip_compress

        body = gzip_compress(body, level=service.settings.gzip_level)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status=200, mimetype="application/json", headers=headers)


def upload_stored(job_id: str) -> Response:
    """Re-prune a stored graph and upload it to `signed_url` (the upload policy applies)."""
    from neuronpedia_graph.api.routes import _body
    from neuronpedia_graph.schemas import StoredUploadRequest
    from neuronpedia_graph.service import Timings

    service: GraphService = current_app.extensions["npg_service"]
    job_id = _job_id(job_id)
    body = parse_request(StoredUploadRequest, _body())
    timings = Timings()
    done = service.upload_stored(
        job_id,
        body.signed_url,
        body.node_threshold,
        body.edge_threshold,
        body.compress,
        timings,
    )
    return json_response(done, headers={"Server-Timing": timings.server_timing()})


def job_events(job_id: str) -> Response:
    from neuronpedia_graph.jobs.events import state_event, stream_events

    runner, pump = start_jobs(current_app)
    job_id = _job_id(job_id)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if not supported():
        runner.view(job_id)  # 404 before the stream starts
        heartbeat = current_app.extensions["npg_service"].settings.job_events_heartbeat
        return Response(
            stream_events(runner, job_id, heartbeat), mimetype="text/event-stream", headers=headers
        )
    with runner.cond:
        version = runner.version(job_id)
        view = runner.view(job_id)
    pump.reserve()
    request.environ[ENVIRON_KEY] = Handoff(
        first=state_event(view, version),
        take=lambda sock: pump.take(sock, job_id, version, view.status in FINISHED),
        abandon=pump.release,
    )
    return Response(status=200, mimetype="text/event-stream", headers=headers)
