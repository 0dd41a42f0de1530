"""How far a graph has got: its phases, a monotonic progress value, and cancellation points.

`attribute()` takes no callback and its "attribution" logger does not propagate, so progress
comes from wrapping the calls it makes through our replacement model (circuit-tracer 0.5.0,
`circuit_tracer/attribution/attribute.py`): `model.setup_attribution(input_ids)` (activations),
`model.run_forward_pass(input_ids, batch_size, ctx)` (the forward pass), then
`ctx.compute_batch(...)` once per logit batch (called without `retain_graph`) and once per
feature batch (called with `retain_graph`; `len(layers)` features each). The wrappers are
instance attributes set while the model is held and removed afterwards, so nothing else sees
them. `WRAPPED_CALLS` names what they rely on; tests/test_jobs_progress.py fails if the
installed circuit-tracer no longer makes these calls.

Each wrapped call is also a cancellation point and a hook point (`graph-activations`,
`graph-forward-pass`, `graph-logit-batch`, `graph-feature-batch`): a cancelled job raises
`JobCancelled` before its next batch starts, so the model is given back within one batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from neuronpedia_graph.hooks import NO_HOOKS, Hooks

if TYPE_CHECKING:
    import torch

    from neuronpedia_graph.models.protocols import AttributionContext, ReplacementModelLike

# (phase, share of the whole). The model phases dominate a real graph; the weights only need
# to be roughly right, since the value is a guide for people, and it never goes backwards.
PHASES: tuple[tuple[str, float], ...] = (
    ("activations", 0.05),
    ("forward_pass", 0.05),
    ("logit_batches", 0.05),
    ("feature_batches", 0.60),
    ("prune", 0.10),
    ("build_json", 0.05),
    ("compress", 0.05),
    ("upload", 0.05),
)
PHASE_NAMES: tuple[str, ...] = tuple(name for name, _ in PHASES)
_START: dict[str, float] = {}
_WEIGHT: dict[str, float] = dict(PHASES)
_acc = 0.0
for _name, _weight in PHASES:
    _START[_name] = _acc
    _acc += _weight
del _acc, _name, _weight
# Below 1 until the job is really done: only its finished record says 1.
_BEFORE_DONE = 0.999

# What the wrappers rely on: attribute.py calls these, with these arguments.
WRAPPED_CALLS = (
    "model.setup_attribution(input_ids)",
    "model.run_forward_pass(input_ids, batch_size, ctx)",
    "ctx.compute_batch(layers=..., positions=..., inject_values=...)",
    "ctx.compute_batch(layers=..., positions=..., inject_values=..., retain_graph=...)",
)


class JobCancelled(Exception):
    """Raised at the next cancellation point of a job whose cancel was requested."""


class ProgressTracker:
    """The phase and progress (0–1) of one graph, reported to `on_change` as they move.

    Progress never goes backwards and stays below 1: only a done job's record says 1. Thread-
    safe: the runner thread updates it while request threads read it.

    Args:
        on_change: called with (phase, progress) after every change (outside the lock).
        hooks: the service's hook points (`graph-*` are reached at each wrapped call).
        cancel: set to stop the graph at its next cancellation point.
    """

    def __init__(
        self,
        on_change: Callable[[str, float], None] | None = None,
        hooks: Hooks = NO_HOOKS,
        cancel: threading.Event | None = None,
    ) -> None:
        self._on_change = on_change
        self.hooks = hooks
        self.cancel = cancel or threading.Event()
        self._lock = threading.Lock()
        self.phase: str | None = None
        self.progress = 0.0
        self.feature_total = 0
        self.features_done = 0
        self.logits_done = 0
        self.logit_total = 1

    def enter(self, phase: str) -> None:
        """The graph has started `phase` (later phases only; earlier ones are ignored)."""
        self._move(phase, 0.0)

    def within(self, phase: str, fraction: float) -> None:
        """`fraction` (0–1) of `phase` is done."""
        self._move(phase, fraction)

    def checkpoint(self, point: str) -> None:
        """A hook point and a cancellation point, reached before each wrapped call runs."""
        self.hooks.reached(point)
        if self.cancel.is_set():
            raise JobCancelled(point)

    def _move(self, phase: str, fraction: float) -> None:
        value = min(_START[phase] + _WEIGHT[phase] * max(0.0, min(1.0, fraction)), _BEFORE_DONE)
        with self._lock:
            if self.phase is not None and PHASE_NAMES.index(phase) < PHASE_NAMES.index(self.phase):
                return
            changed = phase != self.phase or value > self.progress
            self.phase = phase
            self.progress = max(self.progress, value)
            progress = self.progress
        if changed:
            self._notify(phase, progress)

    def _notify(self, phase: str, progress: float) -> None:
        if self._on_change is not None:
            self._on_change(phase, progress)


@contextmanager
def instrumented(
    model: ReplacementModelLike,
    tracker: ProgressTracker,
    max_feature_nodes: int,
    max_n_logits: int,
) -> Iterator[None]:
    """Wrap the calls `attribute()` makes through `model` while the block runs (model held).

    Args:
        model: the replacement model (nnsight or TransformerLens backend).
        tracker: where progress goes; its hooks and cancel flag are honoured at every call.
        max_feature_nodes: the request's cap (the feature phase ends at min(cap, active)).
        max_n_logits: the request's cap on logit targets (the logit phase's estimate).
    """
    tracker.logit_total = max(1, max_n_logits)
    original_setup = model.setup_attribution
    original_forward = model.run_forward_pass

    def setup_attribution(inputs: str | torch.Tensor) -> AttributionContext:
        tracker.enter("activations")
        tracker.checkpoint("graph-activations")
        ctx = original_setup(inputs)
        tracker.feature_total = max(1, min(max_feature_nodes, int(ctx.activation_matrix._nnz())))
        original_batch = ctx.compute_batch

        def compute_batch(
            layers: torch.Tensor,
            positions: torch.Tensor,
            inject_values: torch.Tensor,
            **options: bool,
        ) -> torch.Tensor:
            # Feature batches pass `retain_graph`; logit batches do not.
            feature_batch = "retain_graph" in options
            phase, point = (
                ("feature_batches", "graph-feature-batch")
                if feature_batch
                else ("logit_batches", "graph-logit-batch")
            )
            tracker.enter(phase)
            tracker.checkpoint(point)
            rows = original_batch(
                layers=layers, positions=positions, inject_values=inject_values, **options
            )
            if feature_batch:
                tracker.features_done += len(layers)
                tracker.within(phase, tracker.features_done / tracker.feature_total)
            else:
                tracker.logits_done += len(layers)
                tracker.within(phase, tracker.logits_done / tracker.logit_total)
            return rows

        ctx.compute_batch = compute_batch
        return ctx

    def run_forward_pass(input_ids: torch.Tensor, batch_size: int, ctx: AttributionContext) -> None:
        tracker.enter("forward_pass")
        tracker.checkpoint("graph-forward-pass")
        original_forward(input_ids, batch_size, ctx)

    # Instance attributes that shadow the methods for this block, set and removed through the
    # model's own __setattr__/__delattr__ (nnsight's Envoy and torch's Module define them).
    wrappers = {"setup_attribution": setup_attribution, "run_forward_pass": run_forward_pass}
    for name, wrapper in wrappers.items():
        setattr(model, name, wrapper)
    try:
        yield
    finally:
        for name in wrappers:
            delattr(model, name)
