"""The work behind every operation: graphs, forward passes, steering, chat parsing.

Transport-free: the HTTP routes and the Runpod worker both call `GraphService.run` with an
entry of the operations table and a decoded JSON body. The body is validated once, against
this model's limits (`context`), then handed to the operation's method as a typed request.
Errors are `neuronpedia_graph.errors` exceptions. The model lock is held only while the model
is in use: compression and upload (`deliver_graph`) run after it is released, so the next graph
can start while this one is still travelling to S3.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from circuit_tracer import attribute
from circuit_tracer.attribution.targets import AttributionTargets
from circuit_tracer.graph import Graph, PruneResult
from pydantic import BaseModel

from neuronpedia_graph import __version__, graph_json
from neuronpedia_graph.attribution_store import (
    AttributionStore,
    Packed,
    StoredGraphNotFound,
    StoredGraphUnreadable,
    reuse_key,
)
from neuronpedia_graph.compression import gzip_compress
from neuronpedia_graph.errors import GraphTooLarge, ServerBusy
from neuronpedia_graph.hooks import NO_HOOKS, Hooks
from neuronpedia_graph.jobs.progress import PHASE_NAMES, ProgressTracker, instrumented
from neuronpedia_graph.json_types import JSONValue
from neuronpedia_graph.model_lock import ModelLock
from neuronpedia_graph.models.loading import LoadedModel, circuit_tracer_version
from neuronpedia_graph.models.protocols import backend_model
from neuronpedia_graph.operations import Operation, check_service_methods
from neuronpedia_graph.prompts.chat import parse_chat_prompt
from neuronpedia_graph.prompts.encoding import ModelPrompts
from neuronpedia_graph.schemas import (
    ForwardPassRequest,
    ForwardPassResponse,
    GraphRequest,
    HealthResponse,
    ParseChatPromptRequest,
    ParsedChatPrompt,
    RequestContext,
    SalientLogit,
    SmallVocabulary,
    SteerRequest,
    SteerResponse,
    UploadResponse,
    parse_request,
)
from neuronpedia_graph.scores import GraphScores
from neuronpedia_graph.settings import Settings
from neuronpedia_graph.steering import steer
from neuronpedia_graph.targets import library_targets
from neuronpedia_graph.upload.queue import Ticket, UploadQueue

# A vocabulary this small (the demo model's ~250 words) is sent with /health for the viewer's
# unknown-word notice; a real model's (256k tokens) is not.
SMALL_VOCABULARY = 1000

logger = logging.getLogger(__name__)


@dataclass
class Timings:
    """Wall time per phase, in milliseconds, in the order the phases ran."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = (time.perf_counter() - started) * 1000

    def server_timing(self) -> str:
        return ", ".join(f"{name};dur={ms:.1f}" for name, ms in self.phases.items())


class TrackedTimings(Timings):
    """Timings that also move a graph's progress tracker to each phase as it starts."""

    def __init__(self, tracker: ProgressTracker) -> None:
        super().__init__()
        self.tracker = tracker

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name in PHASE_NAMES:  # each later phase is a cancellation point too
            self.tracker.enter(name)
            self.tracker.checkpoint("graph-" + name.replace("_", "-"))
        with super().phase(name):
            yield


@dataclass
class GraphResult:
    """A finished graph: the document itself (direct mode) or where it was uploaded."""

    json_bytes: int
    nodes: int
    links: int
    document: bytes | None = None
    upload: UploadResponse | None = None
    graph_id: str | None = None


@dataclass
class StagedGraph:
    """A graph document computed while the model was held, waiting to be delivered."""

    body: bytes
    nodes: int
    links: int
    scores: GraphScores
    pruner: str  # the module whose prune_graph ran (the per-graph log line names it)
    # What the store needs: the reuse key, and either the packed attribution (new) or the id
    # of the stored one it was pruned from (reused). graph_id is set by `execute`.
    key: str | None = None
    packed: Packed | None = None
    reused_from: str | None = None
    graph_id: str | None = None


@dataclass
class Outcome:
    """What an operation produced, and how long each phase took (HTTP's Server-Timing)."""

    value: BaseModel | GraphResult
    timings: Timings


class GraphService:
    """One loaded model and the operations on it (see `neuronpedia_graph.operations`)."""

    def __init__(self, loaded: LoadedModel, settings: Settings, hooks: Hooks = NO_HOOKS) -> None:
        self.loaded = loaded
        self.settings = settings
        self.hooks = hooks
        self.lock = ModelLock()
        self.started_at = time.time()
        self.ct_version = circuit_tracer_version()
        self.uploads = UploadQueue.from_settings(settings)
        self.attributions = AttributionStore(settings.graph_store_dir, settings.graph_store_bytes)
        self.context = RequestContext(
            prompts=ModelPrompts(loaded.model),
            model_id=loaded.spec.model_id,
            model_ids=loaded.spec.accepted_ids,
            token_limit=settings.token_limit,
            forward_pass_token_limit=settings.forward_pass_token_limit,
            max_feature_nodes=settings.max_feature_nodes,
            n_layers=loaded.n_layers,
            d_transcoder=loaded.d_transcoder,
        )

    # ---------------------------------------------------------------- dispatch
    def run(
        self,
        op: Operation,
        body: JSONValue,
        *,
        lock_timeout: float | None = None,
        tracker: ProgressTracker | None = None,
    ) -> Outcome:
        """Validate `body` for `op` and do it.

        Every operation method takes the validated request and the request's `Timings`.

        Args:
            op: the operation.
            body: the decoded JSON body.
            lock_timeout: seconds to wait for a busy model; None answers busy (503) at once
                (a graph waits behind a queued job, see `neuronpedia_graph.model_lock`).
            tracker: where a graph reports its phases and progress (the Runpod worker).

        Returns:
            The outcome: an `op.response` model, or a `GraphResult` for graphs.
        """
        timings = TrackedTimings(tracker) if tracker is not None else Timings()
        with timings.phase("tokenize"):  # validation renders and tokenizes the prompt
            request = parse_request(op.request, body, self.context)
        return self.execute(op, request, timings, lock_timeout=lock_timeout, tracker=tracker)

    def execute(
        self,
        op: Operation,
        request: BaseModel,
        timings: Timings,
        *,
        lock_timeout: float | None = None,
        tracker: ProgressTracker | None = None,
        job: bool = False,
        graph_id: str | None = None,
    ) -> Outcome:
        """Do `op` for an already validated request (`run`, and queued graph jobs).

        Args:
            op: the operation.
            request: the request, validated with this service's context.
            timings: the request's phase timings.
            lock_timeout: as in `run`.
            tracker: progress and cancellation of a graph (see `neuronpedia_graph.jobs`).
            job: a queued job: it takes the model after synchronous callers
                (`ModelLock.hold_for_job`).
            graph_id: the id a graph's attribution is stored under (a job's id); None mints
                one.
        """
        method = getattr(self, op.method)
        if not op.needs_lock:
            return Outcome(method(request, timings), timings)
        # Reserved before the model is taken, so a refused or busy resource costs no GPU time;
        # given back if anything before the finish step fails.
        reservation = getattr(self, op.reserve)(request, lock_timeout) if op.reserve else None
        if job:
            held = self.lock.hold_for_job(grace=ServerBusy.retry_after_seconds)
        else:
            held = self.lock.hold(
                lock_timeout,
                behind_job=isinstance(request, GraphRequest),
                on_wait=lambda: self.hooks.reached("wait-for-model"),
            )
        with reservation or contextlib.nullcontext():
            with held:
                try:
                    self.hooks.reached("graph-job" if job else op.name)
                    if isinstance(request, GraphRequest):
                        tracker = tracker or ProgressTracker(hooks=self.hooks)
                        with instrumented(
                            self.loaded.model,
                            tracker,
                            request.max_feature_nodes,
                            request.max_n_logits,
                        ):
                            value = method(request, timings)
                    else:
                        value = method(request, timings)
                finally:
                    self.free_memory()
            if isinstance(value, StagedGraph):
                value.graph_id = graph_id or secrets.token_urlsafe(18)
            if op.finish:
                value = getattr(self, op.finish)(request, value, timings, reservation)
        return Outcome(value, timings)

    def free_memory(self) -> None:
        """Give attribution's large accelerator temporaries back before the next request.

        Host tensors are freed by reference counting as soon as a request's locals go; a full
        `gc.collect()` costs ~250 ms with transformers loaded (3x a demo graph), so it only runs
        where cached device memory must really be returned.
        """
        if self.loaded.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def health(self) -> HealthResponse:
        spec = self.loaded.spec
        return HealthResponse(
            model_id=spec.model_id,
            neuronpedia_id=spec.neuronpedia_id,
            scan=spec.scan,
            transcoder_set=spec.transcoder_ref if not spec.transcoder_is_local else "local",
            backend=spec.backend,
            device=str(self.loaded.device),
            dtype=str(self.loaded.dtype).removeprefix("torch."),
            circuit_tracer_version=self.ct_version,
            version=__version__,
            uptime_seconds=round(time.time() - self.started_at, 3),
            busy=self.lock.busy,
            token_limit=self.settings.token_limit,
            forward_pass_token_limit=self.settings.forward_pass_token_limit,
            max_feature_nodes=self.settings.max_feature_nodes,
            vocabulary=self.small_vocabulary,
        )

    @functools.cached_property
    def small_vocabulary(self) -> SmallVocabulary | None:
        """The vocabulary when it has at most SMALL_VOCABULARY tokens (built once: /health is
        polled); real models' vocabularies are far larger and are not sent."""
        tokenizer = self.loaded.tokenizer
        if len(tokenizer) > SMALL_VOCABULARY:
            return None
        specials = set(tokenizer.all_special_tokens)
        vocab = tokenizer.get_vocab()
        words = [w for w, _ in sorted(vocab.items(), key=lambda item: item[1]) if w not in specials]
        return SmallVocabulary(words=words, unk_token=tokenizer.unk_token)

    def decode_each(self, ids: list[int]) -> list[str]:
        return [self.loaded.tokenizer.decode([i]) for i in ids]

    # ------------------------------------------------------------------ graphs
    def attribute_graph(self, request: GraphRequest, timings: Timings) -> StagedGraph:
        """Attribution (or a stored one with the same reuse key), pruning and the JSON
        document (the model is held)."""
        key = self.reuse_key(request)
        graph, reused_from = None, None
        if self.attributions.enabled and not request.no_cache:
            reused_from = self.attributions.find(key)
        if reused_from is not None:
            with timings.phase("reused"):
                try:
                    graph = self.load_stored(reused_from)
                except (StoredGraphNotFound, StoredGraphUnreadable) as exc:
                    logger.warning("not reusing %s: %s", reused_from, exc.message)
                    graph, reused_from = None, None
        packed = None
        if graph is None:
            with timings.phase("attribute"):
                graph = self.attribution_graph(request)
            if self.attributions.enabled:
                packed = self.attributions.pack(graph)
        staged = self.document_from_graph(graph, request, timings)
        staged.key, staged.packed, staged.reused_from = key, packed, reused_from
        return staged

    def document_from_graph(
        self, graph: Graph, request: GraphRequest, timings: Timings
    ) -> StagedGraph:
        """Pruning, scores, size checks and the JSON document of an unpruned graph, fresh or
        stored: the same code either way, so a re-pruned document is the fresh one."""
        with timings.phase("prune"):
            graph.to(self.loaded.device)
            (node_mask, edge_mask, cumulative), scores = self.prune_and_score(graph, request)
            pruner = self.pruner_module()
        n_links = graph_json.count_links(edge_mask, node_mask)
        self._check_size(request, n_links=n_links)
        with timings.phase("build_json"):
            metadata = graph_json.graph_metadata(
                request,
                self.loaded.spec,
                prompt=self.loaded.tokenizer.decode(request.encoded.ids),
                tokens=self.decode_each(request.encoded.ids),
                generator_version=self.ct_version,
                create_time_ms=int(time.time() * 1000),
                scores=scores,
                targets=graph_json.targets_metadata(request.targets, graph),
            )
            body = graph_json.build_graph_json(
                graph, node_mask, edge_mask, cumulative, metadata=metadata
            )
        n_nodes = int(node_mask.sum())
        del graph, node_mask, edge_mask, cumulative
        self._check_size(request, n_links=n_links, n_bytes=len(body))
        return StagedGraph(body=body, nodes=n_nodes, links=n_links, scores=scores, pruner=pruner)

    # ------------------------------------------------------------ stored graphs
    def reuse_key(self, request: GraphRequest) -> str:
        """What decides the unpruned attribution: model, transcoders, tokens, parameters."""
        spec = self.loaded.spec
        fields = request.model_dump(mode="json", exclude={"signed_url", "no_cache"})
        return reuse_key(spec.model_id, spec.transcoder_ref, list(request.encoded.ids), fields)

    def load_stored(self, graph_id: str) -> Graph:
        model = self.loaded.model
        return self.attributions.load(graph_id, model.model_config, model.scan, self.loaded.device)

    def stored_request(
        self, graph_id: str, node_threshold: float | None, edge_threshold: float | None
    ) -> GraphRequest:
        """The stored graph's request with new thresholds, validated as a new request is."""
        body = self.attributions.request(graph_id)
        if node_threshold is not None:
            body["node_threshold"] = node_threshold
        if edge_threshold is not None:
            body["edge_threshold"] = edge_threshold
        return parse_request(GraphRequest, body, self.context)

    def stored_document(
        self,
        graph_id: str,
        node_threshold: float | None,
        edge_threshold: float | None,
        timings: Timings,
    ) -> StagedGraph:
        """A stored graph's document for these thresholds: no attribution, no model lock."""
        request = self.stored_request(graph_id, node_threshold, edge_threshold)
        with timings.phase("load"):
            graph = self.load_stored(graph_id)
        staged = self.document_from_graph(graph, request, timings)
        staged.graph_id = graph_id
        return staged

    def upload_stored(
        self,
        graph_id: str,
        signed_url: str,
        node_threshold: float | None,
        edge_threshold: float | None,
        compress: bool,
        timings: Timings,
    ) -> UploadResponse:
        """Re-prune a stored graph and upload it under the upload policy (no model lock)."""
        request = self.stored_request(graph_id, node_threshold, edge_threshold)
        request = request.model_copy(update={"signed_url": signed_url, "compress": compress})
        ticket = self.uploads.admit(signed_url, None)
        with ticket:
            with timings.phase("load"):
                graph = self.load_stored(graph_id)
            staged = self.document_from_graph(graph, request, timings)
        return self._upload(request, staged.body, timings, ticket)

    def attribution_graph(self, request: GraphRequest) -> Graph:
        """circuit-tracer's unpruned graph for the request: its prompt, attribution targets
        (the salient logits when it names none) and parameters (the model is held)."""
        model = self.loaded.model
        targets = library_targets(request.targets, model.unembed_proj, model.cfg.d_vocab)
        return attribute(
            model.ensure_tokenized(list(request.encoded.ids)),
            backend_model(model),  # attribute() is annotated with the backend classes
            attribution_targets=targets,
            max_n_logits=request.max_n_logits,
            desired_logit_prob=request.desired_logit_prob,
            batch_size=request.batch_size,
            max_feature_nodes=request.max_feature_nodes,
            verbose=False,
        )

    def prune_and_score(
        self, graph: Graph, request: GraphRequest
    ) -> tuple[PruneResult, GraphScores]:
        """The pruned masks and cumulative influence, and the unpruned graph's scores.

        With PRUNE=lean the scores come from the influence pruning computes anyway; with
        PRUNE=circuit-tracer both are the library's own calls.
        """
        if self.settings.prune == "lean":
            from neuronpedia_graph.prune import prune_and_score

            return prune_and_score(graph, request.node_threshold, request.edge_threshold)
        from circuit_tracer.graph import compute_graph_scores, prune_graph

        pruned = prune_graph(graph, request.node_threshold, request.edge_threshold)
        return pruned, GraphScores(*compute_graph_scores(graph))

    def pruner_module(self) -> str:
        """The module whose prune code PRUNE selects, for the per-graph log line (so the log, not
        just the setting, says which one an operator's graphs went through)."""
        if self.settings.prune == "lean":
            from neuronpedia_graph.prune import prune_and_score

            return prune_and_score.__module__
        from circuit_tracer.graph import prune_graph

        return prune_graph.__module__

    def _check_size(
        self, request: GraphRequest, *, n_links: int, n_bytes: int | None = None
    ) -> None:
        """Refuse graphs over MAX_GRAPH_LINKS, or over MAX_GRAPH_BYTES for a direct reply."""
        hint = (
            "lower node_threshold or edge_threshold, or max_feature_nodes (now "
            f"node_threshold={request.node_threshold}, edge_threshold={request.edge_threshold}, "
            f"max_feature_nodes={request.max_feature_nodes})"
        )
        limit = self.settings.max_graph_links
        if n_links > limit:
            raise GraphTooLarge(
                f"Graph too large: {n_links} links exceed MAX_GRAPH_LINKS={limit}; {hint}",
                links=n_links,
                max_graph_links=limit,
            )
        if request.signed_url is not None:
            return
        limit = self.settings.max_graph_bytes
        size = n_bytes if n_bytes is not None else graph_json.min_json_bytes(n_links)
        if size > limit:
            raise GraphTooLarge(
                f"Graph too large: {'' if n_bytes else 'at least '}{size} bytes of JSON exceed "
                f"MAX_GRAPH_BYTES={limit} for a direct reply; send signed_url to have it "
                f"uploaded, or {hint}",
                json_bytes=size,
                max_graph_bytes=limit,
            )

    def reserve_upload(self, request: GraphRequest, lock_timeout: float | None) -> Ticket:
        """An upload slot and a target that passed the SSRF policy (422 / 503 before any work)."""
        return self.uploads.admit(request.signed_url, lock_timeout)

    def deliver_graph(
        self, request: GraphRequest, staged: StagedGraph, timings: Timings, ticket: Ticket
    ) -> GraphResult:
        """Return the document, or compress and upload it (the model is free again)."""
        body, n_nodes, n_links = staged.body, staged.nodes, staged.links
        result = GraphResult(json_bytes=len(body), nodes=n_nodes, links=n_links)
        if request.signed_url is None:
            result.document = body
        else:
            result.upload = self._upload(request, body, timings, ticket)
        result.graph_id = self._store(request, staged, timings)
        logger.info(
            "graph slug=%s json_bytes=%d nodes=%d links=%d replacement_score=%.6g "
            "completeness_score=%.6g prune=%s %s",
            request.slug_identifier,
            len(body),
            n_nodes,
            n_links,
            staged.scores.replacement,
            staged.scores.completeness,
            staged.pruner,
            " ".join(f"{k}_ms={v:.1f}" for k, v in timings.phases.items()),
        )
        return result

    def _store(self, request: GraphRequest, staged: StagedGraph, timings: Timings) -> str | None:
        """Keep the attribution for re-pruning and reuse; returns the id it is stored under
        (None: not stored). A full or failing disk costs the store, never the graph."""
        if staged.graph_id is None or staged.key is None:
            return None
        if staged.packed is None and staged.reused_from is None:
            return None
        try:
            fields = request.model_dump(mode="json", exclude={"signed_url", "no_cache"})
            if staged.packed is not None:
                with timings.phase("store"):
                    size = self.attributions.save(
                        staged.graph_id, staged.key, fields, staged.packed
                    )
                logger.info(
                    "stored attribution %s: %d bytes (%d adjacency)",
                    staged.graph_id,
                    size,
                    staged.packed.adjacency_bytes,
                )
            elif staged.reused_from is not None and staged.reused_from != staged.graph_id:
                self.attributions.link(staged.reused_from, staged.graph_id, fields)
        except OSError as exc:
            logger.warning("could not store attribution %s: %s", staged.graph_id, exc)
            return None
        finally:
            staged.packed = None
        return staged.graph_id

    def _upload(
        self, request: GraphRequest, body: bytes, timings: Timings, ticket: Ticket
    ) -> UploadResponse:
        with ticket:  # gives the upload slot back if compression fails
            if request.compress:
                with timings.phase("compress"):
                    body = gzip_compress(body, level=self.settings.gzip_level)
            with timings.phase("upload"):
                done = self.uploads.deliver(
                    ticket, body, slug=request.slug_identifier, compressed=request.compress
                )
        return UploadResponse(url=done.url, bytes=done.bytes, compressed=done.compressed)

    # ------------------------------------------------------------ forward pass
    def forward_pass(self, request: ForwardPassRequest, timings: Timings) -> ForwardPassResponse:
        model = self.loaded.model
        ids = model.ensure_tokenized(list(request.encoded.ids))
        with torch.inference_mode():
            logits, _ = model.get_activations(ids, sparse=True)
            targets = AttributionTargets(
                None,
                logits=logits[0, -1] if logits.dim() == 3 else logits[-1],
                unembed_proj=model.unembed_proj,
                tokenizer=model.tokenizer,
                max_n_logits=request.max_n_logits,
                desired_logit_prob=request.desired_logit_prob,
            )
        probs = targets.logit_probabilities.float().cpu().tolist()
        salient = [
            SalientLogit(token=t.token_str, token_id=int(t.vocab_idx), probability=p)
            for t, p in zip(targets.logit_targets, probs, strict=True)
        ]
        return ForwardPassResponse(
            prompt=request.prompt if request.prompt is not None else request.encoded.text,
            input_tokens=self.decode_each(request.encoded.ids),
            salient_logits=salient,
            total_salient_tokens=len(salient),
            cumulative_probability=float(sum(probs)),
        )

    # ---------------------------------------------------------------- steering
    def steer(self, request: SteerRequest, timings: Timings) -> SteerResponse:
        with timings.phase("steer"):
            return steer(self.loaded.model, request)

    def parse_chat_prompt(
        self, request: ParseChatPromptRequest, timings: Timings
    ) -> ParsedChatPrompt:
        """Tokenizer-only work, so it needs no model lock."""
        return parse_chat_prompt(self.loaded.tokenizer, request.prompt)


# A renamed or missing method fails this import, not the first request that needs it.
check_service_methods(GraphService)
