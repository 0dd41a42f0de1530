"""The loaded model's `PromptEncoder`: renders chats and tokenizes prompts for validation.

One canonical tokenization serves graphs, forward passes and steering (see `chat`), so a graph
node's `ctx_idx` is a valid steering position and a chat prompt never gets two BOS tokens or
none. It runs once per request, during validation (`schemas.parse_request`).
"""

from __future__ import annotations

from typing import Any

from neuronpedia_graph.chat import ChatTemplateMissing, canonical_prompt, render_chat
from neuronpedia_graph.errors import InvalidRequest
from neuronpedia_graph.schemas import ChatMessage, EncodedPrompt


class ModelPrompts:
    """Prompt rendering and tokenization exactly as circuit-tracer's `ensure_tokenized` sees it."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def render(self, messages: list[ChatMessage]) -> str:
        """Chat messages as the model's template renders them (400 when it has no template)."""
        try:
            return render_chat(self._model.tokenizer, messages)
        except ChatTemplateMissing as exc:
            raise InvalidRequest(str(exc)) from exc

    def encode(self, text: str) -> EncodedPrompt:
        """Token ids by position, BOS at 0; an empty prompt gives no ids and no content."""
        tokenizer = self._model.tokenizer
        canonical = canonical_prompt(tokenizer, text)
        if not canonical or not tokenizer(canonical, add_special_tokens=False).input_ids:
            return EncodedPrompt(text=canonical, ids=[], content_tokens=0)
        ids: list[int] = self._model.ensure_tokenized(canonical).tolist()
        bos = ids[0] if ids[0] in set(tokenizer.all_special_ids) else None
        unsteerable = frozenset(p for p, i in enumerate(ids) if i == bos)
        return EncodedPrompt(
            text=canonical,
            ids=ids,
            content_tokens=len(ids) - (1 if bos is not None else 0),
            unsteerable=unsteerable,
        )
