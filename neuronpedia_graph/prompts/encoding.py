"""The loaded model's `PromptEncoder`: renders chats and tokenizes prompts for validation.

One canonical tokenization serves graphs, forward passes and steering (see `chat`), so a graph
node's `ctx_idx` is a valid steering position and a chat prompt never gets two BOS tokens or
none. It runs once per request, during validation (`schemas.parse_request`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neuronpedia_graph.errors import InvalidRequest
from neuronpedia_graph.prompts.chat import (
    ChatRenderError,
    bos_positions,
    canonical_prompt,
    render_chat,
)
from neuronpedia_graph.prompts.rules import PromptFormatError, check_prompt_format
from neuronpedia_graph.schemas import ChatMessage, EncodedPrompt, TokenPiece

if TYPE_CHECKING:
    from neuronpedia_graph.models.protocols import ReplacementModelLike


class ModelPrompts:
    """Prompt rendering and tokenization exactly as circuit-tracer's `ensure_tokenized` sees it."""

    def __init__(self, model: ReplacementModelLike) -> None:
        self._model = model

    def render(self, messages: list[ChatMessage]) -> str:
        """Chat messages as the model's template renders them (400 when it has no template, or
        the template refuses the messages)."""
        try:
            return render_chat(self._model.tokenizer, messages)
        except ChatRenderError as exc:
            raise InvalidRequest(str(exc)) from exc

    def encode(self, text: str) -> EncodedPrompt:
        """Token ids by position, BOS at 0; an empty prompt gives no ids and no content.

        `content_tokens` counts as the original server counted against TOKEN_LIMIT: the text's
        own tokens, without the BOS that circuit-tracer adds (a BOS written in the text, as
        rendered chat templates do, is part of the text and counts).
        """
        tokenizer = self._model.tokenizer
        canonical = canonical_prompt(tokenizer, text)
        body = tokenizer.encode(canonical, add_special_tokens=False) if canonical else []
        if not body:
            return EncodedPrompt(text=canonical, ids=[], content_tokens=0)
        try:
            check_prompt_format(self._model, canonical)
        except PromptFormatError as exc:
            raise InvalidRequest(str(exc)) from None
        ids: list[int] = self._model.ensure_tokenized(canonical).tolist()
        own = body if canonical == text else tokenizer.encode(text, add_special_tokens=False)
        return EncodedPrompt(
            text=canonical,
            ids=ids,
            content_tokens=len(own),
            unsteerable=frozenset(bos_positions(tokenizer, ids, len(body))),
        )

    def tokenize(self, text: str) -> list[TokenPiece]:
        """`text` tokenized as circuit-tracer tokenizes a token-string attribution target
        (`tokenizer.encode(text, add_special_tokens=False)`), each token decoded on its own."""
        tokenizer = self._model.tokenizer
        unknown = tokenizer.unk_token_id
        return [
            TokenPiece(
                id=i, text=tokenizer.decode([i]), unknown=unknown is not None and i == unknown
            )
            for i in tokenizer.encode(text, add_special_tokens=False)
        ]
