"""The progress instrumentation relies on the calls circuit-tracer 0.5.0 makes: pin them.

If an upgrade renames, reorders or stops making one of the wrapped calls, these tests fail
before progress and cancellation silently stop working.
"""

from __future__ import annotations

import inspect
import threading
from importlib.metadata import version

import pytest

from neuronpedia_graph.jobs.progress import PHASE_NAMES, JobCancelled, ProgressTracker
from neuronpedia_graph.operations import BY_NAME
from tests.conftest import REPO, graph_body


def test_circuit_tracer_is_pinned_to_the_version_the_wrappers_were_written_for():
    assert version("circuit-tracer") == "0.5.0"
    assert '"circuit-tracer==0.5.0"' in (REPO / "pyproject.toml").read_text()


def test_attribute_still_makes_the_wrapped_calls_in_order():
    from circuit_tracer.attribution import attribute

    source = inspect.getsource(attribute._run_attribution)
    calls = [
        "ctx = model.setup_attribution(input_ids)",
        "model.run_forward_pass(input_ids, batch_size, ctx)",
        "rows = ctx.compute_batch(\n",  # logit batches: no retain_graph
        "rows = ctx.compute_batch(\n",  # feature batches
        "retain_graph=n_visited < max_feature_nodes",
    ]
    at = 0
    for call in calls:
        found = source.find(call, at)
        assert found >= 0, f"attribute() no longer calls {call!r} (after offset {at})"
        at = found + 1
    assert source.count("ctx.compute_batch(") == 2


def _tracked_graph(service, **overrides):
    changes: list[tuple[str, float]] = []
    tracker = ProgressTracker(on_change=lambda p, v: changes.append((p, v)), hooks=service.hooks)
    outcome = service.run(BY_NAME["generate-graph"], graph_body(**overrides), tracker=tracker)
    return tracker, changes, outcome


def test_a_graph_reports_every_phase_in_order_and_counts_every_feature(service):
    tracker, changes, outcome = _tracked_graph(service, batch_size=16)
    phases = list(dict.fromkeys(p for p, _ in changes))
    assert phases == [
        "activations",
        "forward_pass",
        "logit_batches",
        "feature_batches",
        "prune",
        "build_json",
    ]
    values = [v for _, v in changes]
    assert values == sorted(values) and values[-1] < 1.0
    assert tracker.features_done == tracker.feature_total > 16  # several batches, all counted
    assert len([p for p, _ in changes if p == "feature_batches"]) >= 3
    assert outcome.value.nodes > 0
    assert set(phases) <= set(PHASE_NAMES)


def test_the_wrappers_are_removed_after_the_graph_even_when_cancelled(service):
    model = service.loaded.model
    cancel = threading.Event()
    cancel.set()
    tracker = ProgressTracker(hooks=service.hooks, cancel=cancel)
    with pytest.raises(JobCancelled):
        service.run(BY_NAME["generate-graph"], graph_body(), tracker=tracker)
    assert "setup_attribution" not in vars(model) and "run_forward_pass" not in vars(model)
    assert not service.lock.busy
    _, changes, outcome = _tracked_graph(service)
    assert outcome.value.document and changes[-1][0] == "build_json"
