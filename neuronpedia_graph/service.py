"""The work behind every endpoint: graphs, forward passes, steering. Used by HTTP and Runpod.

Everything here is transport-free: it takes validated request models, raises
``neuronpedia_graph.errors`` exceptions, and returns plain results. The model lock is held
only while the model is in use; compression and upload run after it is released so the
next graph can start while this one is still travelling to S3.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from neuronpedia_graph import __version__
from neuronpedia_graph.errors import InvalidField, InvalidRequest, UploadFailed
from neuronpedia_graph.loading import LoadedModel, circuit_tracer_version
from neuronpedia_graph.model_lock import ModelLock
from neuronpedia_graph.schemas import (
    ForwardPassRequest,
    ForwardPassResponse,
    GraphRequest,
    PromptOrMessages,
    SalientLogit,
)
from neuronpedia_graph.settings import Settings

logger = logging.getLogger(__name__)

GENERATOR = {
    "name": "neuronpedia-graph (circuit-tracer)",
    "url": "https://github.com/safety-research/circuit-tracer",
}


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


@dataclass
class GraphResult:
    """Either the graph document (direct mode) or where it was uploaded."""

    timings: Timings
    json_bytes: int
    body: bytes | None = None
    upload: Any = None  # neuronpedia_graph.upload.UploadResult
    nodes: int = 0
    links: int = 0


class GraphService:
    def __init__(self, loaded: LoadedModel, settings: Settings) -> None:
        self.loaded = loaded
        self.settings = settings
        self.lock = ModelLock()
        self.started_at = time.time()
        self.ct_version = circuit_tracer_version()

    # ----------------------------------------------------------------- helpers
    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def check_model_id(self, model_id: str | None) -> None:
        if model_id is None or self.loaded.accepts(model_id):
            return
        raise InvalidRequest(
            f"Model '{model_id}' is not available. Only '{self.loaded.spec.model_id}' is "
            "currently loaded."
        )

    def prompt_text(self, request: PromptOrMessages) -> str:
        """The text attribution sees: the raw prompt or the chat-rendered messages."""
        if request.prompt is not None:
            return request.prompt
        from neuronpedia_graph.chat import ChatTemplateMissing, render_chat

        try:
            return render_chat(self.tokenizer, request.messages or [])
        except ChatTemplateMissing as exc:
            raise InvalidRequest(str(exc)) from exc

    def tokenize(self, prompt: str) -> torch.Tensor:
        """Token ids exactly as attribution and steering see them, with exactly one BOS."""
        from neuronpedia_graph.prompt_rules import PromptFormatError
        from neuronpedia_graph.steering import SteerValidationError, prompt_token_ids

        try:
            ids = prompt_token_ids(self.model, prompt)
        except SteerValidationError:
            raise InvalidRequest("Prompt produced no tokens") from None
        except PromptFormatError as exc:
            raise InvalidRequest(str(exc)) from None
        limit = self.settings.token_limit
        if len(ids) > limit:
            raise InvalidRequest(
                f"Prompt exceeds token limit ({len(ids)} > {limit}); the count includes the "
                "BOS token that attribution prepends",
                token_count=len(ids),
                token_limit=limit,
            )
        return ids

    def decode_each(self, ids: torch.Tensor | list[int]) -> list[str]:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return [self.tokenizer.decode([i]) for i in values]

    def free_memory(self) -> None:
        """Give attribution's large accelerator temporaries back before the next request.

        Host tensors are freed by reference counting as soon as a request's locals go; a full
        `gc.collect()` costs ~250 ms with transformers loaded (3x a demo graph), so it only runs
        where cached device memory must really be returned.
        """
        if self.loaded.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def health(self) -> dict[str, Any]:
        spec = self.loaded.spec
        return {
            "model_id": spec.model_id,
            "neuronpedia_id": spec.neuronpedia_id,
            "scan": spec.scan,
            "transcoder_set": spec.transcoder_ref if not spec.transcoder_is_local else "local",
            "backend": spec.backend,
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "circuit_tracer_version": self.ct_version,
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "busy": self.lock.busy,
            "token_limit": self.settings.token_limit,
            "max_feature_nodes": self.settings.max_feature_nodes,
        }

    # ------------------------------------------------------------------ graphs
    def graph_metadata(self, request: GraphRequest, prompt: str, tokens: list[str]) -> dict:
        spec = self.loaded.spec
        metadata: dict[str, Any] = {
            "slug": request.slug_identifier,
            "scan": spec.scan,
            "transcoder_list": [],
            "prompt_tokens": tokens,
            "prompt": prompt,
            "node_threshold": request.node_threshold,
            "schema_version": 1,
            "info": {
                "creator_name": request.user_id or "Anonymous (CT)",
                "creator_url": "https://neuronpedia.org",
                "source_urls": list(spec.source_urls),
                "generator": {**GENERATOR, "version": self.ct_version},
                "create_time_ms": int(time.time() * 1000),
            },
            "generation_settings": {
                "max_n_logits": request.max_n_logits,
                "desired_logit_prob": request.desired_logit_prob,
                "batch_size": request.batch_size,
                "max_feature_nodes": request.max_feature_nodes,
            },
            "pruning_settings": {
                "node_threshold": request.node_threshold,
                "edge_threshold": request.edge_threshold,
            },
        }
        if spec.neuronpedia_source_set:
            metadata["feature_details"] = {"neuronpedia_source_set": spec.neuronpedia_source_set}
        return metadata

    def generate_graph(
        self, request: GraphRequest, lock_timeout: float | None = None
    ) -> GraphResult:
        self.check_model_id(request.model_id)
        cap = self.settings.max_feature_nodes
        if "max_feature_nodes" not in request.model_fields_set:
            # The default must work on a server configured with a lower cap.
            request = request.model_copy(
                update={"max_feature_nodes": min(request.max_feature_nodes, cap)}
            )
        elif request.max_feature_nodes > cap:
            raise InvalidField(
                f"max_feature_nodes: must be at most {cap} on this server "
                f"(got {request.max_feature_nodes})",
                fields=["max_feature_nodes"],
            )
        prompt = self.prompt_text(request)
        timings = Timings()
        with self.lock.hold(lock_timeout):
            try:
                body = self._attribute_to_json(request, prompt, timings)
            finally:
                self.free_memory()
        result = GraphResult(timings=timings, json_bytes=len(body))
        if request.signed_url is None:
            result.body = body
        else:
            result.upload = self._upload(request, body, timings)
        logger.info(
            "graph slug=%s json_bytes=%d %s",
            request.slug_identifier,
            len(body),
            " ".join(f"{k}_ms={v:.1f}" for k, v in timings.phases.items()),
        )
        return result

    def _attribute_to_json(self, request: GraphRequest, prompt: str, timings: Timings) -> bytes:
        from circuit_tracer import attribute
        from circuit_tracer.graph import prune_graph

        from neuronpedia_graph.graph_json import build_graph_json

        with timings.phase("tokenize"):
            ids = self.tokenize(prompt)
            tokens = self.decode_each(ids)
        with timings.phase("attribute"):
            graph = attribute(
                ids,
                self.model,
                max_n_logits=request.max_n_logits,
                desired_logit_prob=request.desired_logit_prob,
                batch_size=request.batch_size,
                max_feature_nodes=request.max_feature_nodes,
                verbose=False,
            )
        with timings.phase("prune"):
            graph.to(self.loaded.device)
            node_mask, edge_mask, scores = prune_graph(
                graph, request.node_threshold, request.edge_threshold
            )
        with timings.phase("build_json"):
            metadata = self.graph_metadata(request, prompt, tokens)
            body = build_graph_json(graph, node_mask, edge_mask, scores, metadata=metadata)
        del graph, node_mask, edge_mask, scores
        return body

    def _upload(self, request: GraphRequest, body: bytes, timings: Timings) -> Any:
        from neuronpedia_graph.compression import gzip_compress
        from neuronpedia_graph.upload import UploadError, UploadPolicy, put_graph, spool_graph

        if request.compress:
            with timings.phase("compress"):
                body = gzip_compress(body, level=self.settings.gzip_level)
        policy = UploadPolicy(
            connect_timeout=self.settings.upload_connect_timeout,
            read_timeout=self.settings.upload_read_timeout,
            retries=self.settings.upload_retries,
            backoff_factor=self.settings.upload_backoff,
        )
        try:
            with timings.phase("upload"):
                return put_graph(
                    request.signed_url or "", body, compressed=request.compress, policy=policy
                )
        except UploadError as exc:
            path = spool_graph(
                body,
                self.settings.spool_dir,
                slug=request.slug_identifier,
                compressed=request.compress,
            )
            logger.error("upload failed (%s); graph kept in spool file %s", exc.detail, path)
            raise UploadFailed(
                f"Failed to upload graph: {exc.detail}",
                spool_file=path.name,
                upload_status=exc.status,
                upload_code=exc.code,
            ) from exc

    # ------------------------------------------------------------ forward pass
    def forward_pass(
        self, request: ForwardPassRequest, lock_timeout: float | None = None
    ) -> ForwardPassResponse:
        from circuit_tracer.attribution.targets import AttributionTargets

        self.check_model_id(request.model_id)
        prompt = self.prompt_text(request)
        with self.lock.hold(lock_timeout):
            try:
                ids = self.tokenize(prompt)
                with torch.inference_mode():
                    logits, _ = self.model.get_activations(ids, sparse=True)
                    targets = AttributionTargets(
                        None,
                        logits=logits[0, -1] if logits.dim() == 3 else logits[-1],
                        unembed_proj=self.model.unembed_proj,
                        tokenizer=self.tokenizer,
                        max_n_logits=request.max_n_logits,
                        desired_logit_prob=request.desired_logit_prob,
                    )
                probs = targets.logit_probabilities.float().cpu().tolist()
                salient = [
                    SalientLogit(token=t.token_str, token_id=int(t.vocab_idx), probability=p)
                    for t, p in zip(targets.logit_targets, probs, strict=True)
                ]
                return ForwardPassResponse(
                    prompt=prompt,
                    input_tokens=self.decode_each(ids),
                    salient_logits=salient,
                    total_salient_tokens=len(salient),
                    cumulative_probability=float(sum(probs)),
                )
            finally:
                self.free_memory()

    # ---------------------------------------------------------------- steering
    def steer(self, data: dict[str, Any], lock_timeout: float | None = None) -> Any:
        """Validate and run a steer request given as a decoded JSON object."""
        from neuronpedia_graph.schemas import SteerEnvelope, parse_request
        from neuronpedia_graph.steering import (
            SteerRequest,
            SteerValidationError,
            steer,
            validate_features,
        )

        envelope = parse_request(SteerEnvelope, data)
        self.check_model_id(envelope.model_id)
        prompt = self.prompt_text(envelope)
        fields = {k: v for k, v in data.items() if k not in ("messages", "model_id")}
        request = parse_request(SteerRequest, {**fields, "prompt": prompt})
        with self.lock.hold(lock_timeout):
            try:
                ids = self.tokenize(prompt)
                try:
                    validate_features(self.model, request, len(ids))
                except SteerValidationError as exc:
                    raise InvalidRequest(str(exc)) from exc
                return steer(self.model, request)
            finally:
                self.free_memory()

    def parse_chat_prompt(self, prompt: str) -> Any:
        """Tokenizer-only work, so it needs no model lock."""
        from neuronpedia_graph.chat import parse_chat_prompt

        return parse_chat_prompt(self.tokenizer, prompt)
