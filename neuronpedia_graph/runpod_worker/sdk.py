"""The runpod SDK's side of the worker: start it with our handler, send progress through it.

The SDK (the optional extra ``neuronpedia-graph[runpod]``) is imported inside these functions
only, so that the server, the tests of the job logic and `import neuronpedia_graph` never need
it. `import runpod` also takes seconds and configures logging, another reason to defer it.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from neuronpedia_graph.json_types import JSONObject
from neuronpedia_graph.logging_setup import configure_logging
from neuronpedia_graph.runpod_worker.jobs import ProgressSender, make_handler
from neuronpedia_graph.runpod_worker.loader import ModelUnavailable, ServiceLoader

# Each progress update's POST may take this long before the next one is sent anyway.
PROGRESS_SEND_TIMEOUT_S = 10.0


def sdk_progress_update(job: JSONObject) -> ProgressSender:
    """The SDK's `progress_update` for `job`, waiting for the thread it starts, so that the
    updates of one job reach Runpod in the order they were made."""

    def send(update: JSONObject) -> None:
        from runpod.serverless import progress_update

        before = set(threading.enumerate())
        progress_update(job, update)
        for thread in set(threading.enumerate()) - before:
            thread.join(PROGRESS_SEND_TIMEOUT_S)

    return send


def main() -> None:
    """Load the model, then take jobs from Runpod (or the SDK's local modes, from argv)."""
    try:
        import runpod
    except ImportError as exc:
        raise SystemExit(
            f"The Runpod worker needs the runpod SDK ({exc}): install the `runpod` extra, "
            "pip install 'neuronpedia-graph[runpod]'"
        ) from exc

    # `import runpod` runs logging.basicConfig (serverless/utils/rp_upload.py); with our handler
    # added as well, every line would be printed twice.
    logging.getLogger().handlers.clear()
    # Reads the environment here, not at import: importing the worker loads nothing.
    loader = ServiceLoader()
    try:
        configure_logging(loader.settings().log_level)
    except Exception:  # a settings error is reported to every job by loader.get()
        configure_logging("INFO")
    # Load before taking jobs so the first job does not pay for it; a failure is reported
    # to every job instead of crashing, so callers see why rather than a job stuck in queue.
    with contextlib.suppress(ModelUnavailable):
        loader.get()
    handler = make_handler(loader.get, send_progress=sdk_progress_update)
    runpod.serverless.start({"handler": handler})
