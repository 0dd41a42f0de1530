"""Runpod Serverless worker: the HTTP service's work, fed from Runpod's job queue.

This is a thin adapter. Validation, attribution, serialization and upload are the package's
(the same code the Flask routes call); the worker only unpacks the job, picks the operation and
turns results and errors into Runpod job outputs (`jobs`), builds the service on first use
(`loader`) and hands the handler to the runpod SDK (`sdk`).

Runpod marks a job FAILED when the handler's output dict has a truthy ``"error"`` key (the SDK
pops it into the job's ``error`` and keeps the rest as ``output``), so every failure is returned
that way and never as a successful output. ``refresh_worker: True`` (also popped by the SDK)
asks Runpod to replace this worker after the job; it is only set when the model failed to load.

The SDK is the optional extra ``neuronpedia-graph[runpod]`` and only `sdk` imports it, inside
its functions: importing this package needs neither the SDK nor torch. Run
``python -m neuronpedia_graph.runpod_worker`` (or ``runpod/handler.py``, the image's entry
file) on Runpod, ``--rp_serve_api`` for the SDK's local API, ``--test_input '{"input": {...}}'``
for one local job. See runpod/README.md.
"""

from __future__ import annotations

from neuronpedia_graph.runpod_worker.jobs import (
    LOCK_TIMEOUT_S,
    MAX_OUTPUT_BYTES,
    DeadlineExpired,
    JobEnvelope,
    OutputTooLarge,
    error_output,
    make_handler,
    process_job,
)
from neuronpedia_graph.runpod_worker.loader import ModelUnavailable, ServiceLoader
from neuronpedia_graph.runpod_worker.sdk import main, sdk_progress_update

__all__ = [
    "LOCK_TIMEOUT_S",
    "MAX_OUTPUT_BYTES",
    "DeadlineExpired",
    "JobEnvelope",
    "ModelUnavailable",
    "OutputTooLarge",
    "ServiceLoader",
    "error_output",
    "main",
    "make_handler",
    "process_job",
    "sdk_progress_update",
]
