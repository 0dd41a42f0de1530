"""Chat prompts: rendering messages with the model's template, and reading a rendered prompt back.

The Neuronpedia web app was written against the original graph server, so both directions
behave as that server's do: the web app stores the rendered string as the graph's prompt, sends
it back for "Remix" and steering, and greys out steering controls at the positions
`/parse-chat-prompt` reports.

Positions use circuit-tracer's convention: `ensure_tokenized` tokenizes without special tokens
and prepends a BOS *unless the text already starts with a special token*. That exception matters
for Gemma-style templates, whose turns start with `<start_of_turn>` (a special token): with the
template's leading `<bos>` stripped, circuit-tracer would run the model with no BOS at all.
`canonical_prompt` is the one place that decides when the BOS text is dropped (circuit-tracer
re-adds it) and when it must stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from neuronpedia_graph.schemas import ChatMessage, ParsedChatPrompt, Role

if TYPE_CHECKING:
    from neuronpedia_graph.models.protocols import Tokenizer

# The roles whose turn delimiters are learned, in the order they win ties while parsing.
_ROLES: tuple[Role, ...] = ("system", "user", "assistant")

# Stands in for every message's content while probing a template. Upper-case letters survive
# `trim`, `upper` and similar filters, and cannot collide with any template's own text.
_PROBE = "QZXNPGRAPHPROBEQZX"


class ChatRenderError(ValueError):
    """The model's chat template cannot render these messages (the client's input is at fault)."""


class ChatTemplateMissing(ChatRenderError):
    """The model's tokenizer has no chat template, so messages cannot be rendered."""


def strip_leading_bos(tokenizer: Tokenizer, text: str) -> str:
    """`text` without one leading BOS string: the form shown to (and edited by) people."""
    bos = tokenizer.bos_token
    return text[len(bos) :] if bos and text.startswith(bos) else text


def canonical_prompt(tokenizer: Tokenizer, text: str) -> str:
    """The spelling of `text` whose circuit-tracer tokenization starts with exactly one BOS.

    A leading BOS string is dropped when circuit-tracer puts the BOS back itself, and kept when
    the rest starts with a special token (circuit-tracer then prepends nothing). So "<bos>The"
    and "The" give the same token positions, and a Gemma chat keeps its BOS. Idempotent.
    """
    body = strip_leading_bos(tokenizer, text)
    bos = tokenizer.bos_token
    if not bos or not body:
        return body
    first = tokenizer.encode(body, add_special_tokens=False)[:1]
    if first and first[0] in tokenizer.all_special_ids:
        return str(bos) + body
    return body


def prompt_positions(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` indexed by position, as attribution and steering count them.

    Args:
        tokenizer: the model's Hugging Face tokenizer.
        text: a prompt, with or without its leading BOS text.

    Returns:
        The ids circuit-tracer runs the model on, BOS first; just the BOS for an empty prompt.
    """
    from circuit_tracer.replacement_model.common import ensure_tokenized

    text = canonical_prompt(tokenizer, text)
    if not tokenizer.encode(text, add_special_tokens=False):
        return [_stand_in_bos(tokenizer)]  # ensure_tokenized cannot take zero tokens
    model_name = getattr(tokenizer, "name_or_path", "") or ""
    return ensure_tokenized(text, tokenizer, "cpu", model_name).tolist()


def unsteerable_positions(tokenizer: Tokenizer, text: str) -> list[int]:
    """The positions `/steer` refuses to steer at: every BOS, in `prompt_positions` order.

    A BOS carries no content, and pushing on it destabilises everything after it; turn markers
    and other special tokens are legitimate targets, so they stay steerable. `/steer` applies
    this rule and `/parse-chat-prompt` reports it, so a client hides exactly the controls the
    server would ignore. Position 0 counts as a BOS also when circuit-tracer prepended a stand-in
    (a tokenizer without a BOS token).

    Args:
        tokenizer: the model's Hugging Face tokenizer.
        text: the prompt as the client sends it to `/steer` (a leading BOS text is fine).

    Returns:
        Sorted positions; `[0]` for a plain prompt.
    """
    ids = prompt_positions(tokenizer, text)
    body = tokenizer.encode(canonical_prompt(tokenizer, text), add_special_tokens=False)
    return bos_positions(tokenizer, ids, len(body))


def bos_positions(tokenizer: Tokenizer, ids: list[int], n_body: int) -> list[int]:
    """`unsteerable_positions` from an already tokenized prompt.

    Args:
        tokenizer: the model's Hugging Face tokenizer (for its BOS id).
        ids: the prompt's ids as `prompt_positions` gives them.
        n_body: how many of them the canonical text itself tokenizes to (the rest were
            prepended by circuit-tracer).

    Returns:
        Sorted positions.
    """
    prepended = set(range(len(ids) - n_body))
    bos_id = tokenizer.bos_token_id
    holding_bos = {i for i, token in enumerate(ids) if bos_id is not None and token == bos_id}
    return sorted(prepended | holding_bos)


def render_chat(tokenizer: Tokenizer, messages: list[ChatMessage]) -> str:
    """Render messages exactly as the original server does: the text it attributes and echoes.

    The final turn stays open (`continue_final_message`), so the model continues it rather than
    starting the next speaker's turn. A trailing empty (or whitespace-only) assistant turn
    cannot be expressed that way (transformers finds the empty content at the very end and
    leaves the turn closed), so it means "the turns before it, plus the generation prompt".
    A template that rejects `continue_final_message` gets the generation prompt instead.
    The result keeps whatever BOS text the template writes; `canonical_prompt` makes sure it
    still tokenizes with exactly one BOS.

    Args:
        tokenizer: the model's Hugging Face tokenizer (it must have a chat template).
        messages: the conversation, at least one message.

    Returns:
        The rendered prompt string.

    Raises:
        ChatTemplateMissing: the tokenizer has no chat template.
        ChatRenderError: the template refuses these messages (e.g. roles that must alternate).
    """
    if not messages:
        raise ValueError("messages: at least one message is required")
    _require_template(tokenizer)
    conversation = [m.model_dump() for m in messages]
    final = messages[-1]
    try:  # arbitrary template code: whatever it raises is a verdict on the client's messages
        if len(messages) > 1 and final.role == "assistant" and not final.content.strip():
            return _apply(tokenizer, conversation[:-1], add_generation_prompt=True)
        try:
            return _apply(tokenizer, conversation, continue_final_message=True)
        except Exception:
            return _apply(tokenizer, conversation, add_generation_prompt=True)
    except Exception as exc:
        raise ChatRenderError(
            f"The chat template of {_model_name(tokenizer)} cannot render these messages: {exc}"
        ) from exc


def parse_chat_prompt(tokenizer: Tokenizer, prompt: str) -> ParsedChatPrompt:
    """Recover the turns behind a rendered chat prompt, and the positions steering skips.

    Answers as the original server's `/parse-chat-prompt`: `prompt` is the input without one
    leading BOS text (what the web app puts back in its editor). The turn delimiters are learned
    from the tokenizer's own template (no template is hard-coded); every occurrence of a turn
    header starts a message that runs to the next header, minus the turn's closing text, and
    text before the first header is ignored. Roles come back canonical (Gemma's `model` is
    `assistant`), and an empty trailing assistant turn (a generation prompt) is kept.
    `is_chat` is true when a header was found; otherwise `messages` is None.

    Args:
        tokenizer: the model's Hugging Face tokenizer.
        prompt: a rendered prompt, e.g. a graph's `metadata.prompt`.

    Returns:
        The parsed reply; `unsteerable_positions` as `unsteerable_positions` computes them.
    """
    body = strip_leading_bos(tokenizer, prompt)
    turns = _learn_turns(tokenizer) if _has_template(tokenizer) else []
    messages = _split_turns(body, turns)
    return ParsedChatPrompt(
        messages=messages,
        is_chat=messages is not None,
        prompt=body,
        unsteerable_positions=unsteerable_positions(tokenizer, prompt),
    )


# --------------------------------------------------------------------------- template helpers
def _has_template(tokenizer: Tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def _model_name(tokenizer: Tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or "this model"


def _require_template(tokenizer: Tokenizer) -> None:
    if not _has_template(tokenizer):
        raise ChatTemplateMissing(
            f"The tokenizer of {_model_name(tokenizer)} has no chat template, so chat messages "
            "cannot be rendered; send a plain prompt instead."
        )


def _apply(tokenizer: Tokenizer, conversation: list[dict[str, str]], **options: bool) -> str:
    return str(tokenizer.apply_chat_template(conversation, tokenize=False, **options))


def _stand_in_bos(tokenizer: Tokenizer) -> int:
    """The id circuit-tracer puts first when the text has none: the first truthy candidate."""
    candidates = [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id]
    return next(filter(None, [*candidates, *tokenizer.all_special_ids]), 0)


# ---------------------------------------------------------------------------- turn delimiters
@dataclass(frozen=True)
class _Turn:
    role: Role
    header: str  # the literal text that opens this role's turns
    footer: str  # the literal text that closes them


def _probe(tokenizer: Tokenizer, roles: tuple[str, ...]) -> list[str] | None:
    """The template's own text around each content of a probe conversation, or None.

    None when the template refuses the role sequence or does not show each content once.
    """
    conversation = [{"role": role, "content": _PROBE} for role in roles]
    try:
        rendered = _apply(tokenizer, conversation, add_generation_prompt=False)
    except Exception:  # arbitrary template code: a refusal just means "no such turn"
        return None
    pieces = rendered.split(_PROBE)
    return pieces if len(pieces) == len(roles) + 1 else None


def _header_after_user(pieces: list[str] | None, user_footer: str) -> str | None:
    """The second turn's header in a probe that starts with a user turn."""
    if pieces is None or not pieces[1].startswith(user_footer):
        return None
    return pieces[1][len(user_footer) :]


def _learn_turns(tokenizer: Tokenizer) -> list[_Turn]:
    """Every role's header and footer, learned by rendering probe conversations.

    A role's header is read between two user turns where the template allows that (a turn in
    final position may be decorated, like Qwen 3's empty `<think>` block), else after one user
    turn. A template that forbids two user turns in a row (Gemma's alternation rule) leaves only
    the opening of a lone user turn, read without its BOS. The footer is what follows the role's
    content when it is the last turn. Roles the template refuses, and empty headers (which could
    not be searched for), are left out.
    """
    lone_user = _probe(tokenizer, ("user",))
    if lone_user is None:
        return []
    opening, user_footer = lone_user
    turns = []
    for role in _ROLES:
        pair = _probe(tokenizer, ("user", role))
        header = _header_after_user(_probe(tokenizer, ("user", role, "user")), user_footer)
        if header is None:
            header = _header_after_user(pair, user_footer)
        if header is None and role == "user":
            header = strip_leading_bos(tokenizer, opening)
        if header:
            turns.append(_Turn(role, header, pair[-1] if pair is not None else user_footer))
    return turns


def _split_turns(text: str, turns: list[_Turn]) -> list[ChatMessage] | None:
    """The messages of `text` given the learned turns; None when no header occurs in it.

    Where headers overlap, the earliest wins, then the longest (so a header that is a prefix of
    another cannot claim its match), then the role listed first.
    """
    found: list[tuple[int, int, int, _Turn]] = []
    for rank, turn in enumerate(turns):
        at = text.find(turn.header)
        while at != -1:
            found.append((at, -len(turn.header), rank, turn))
            at = text.find(turn.header, at + len(turn.header))
    found.sort(key=lambda hit: hit[:3])
    kept: list[tuple[int, _Turn]] = []
    for at, _, _, turn in found:
        if not kept or at >= kept[-1][0] + len(kept[-1][1].header):
            kept.append((at, turn))
    if not kept:
        return None
    messages = []
    for i, (at, turn) in enumerate(kept):
        end = kept[i + 1][0] if i + 1 < len(kept) else len(text)
        content = text[at + len(turn.header) : end]
        if content.endswith(turn.footer):
            content = content[: len(content) - len(turn.footer)]
        messages.append(ChatMessage(role=turn.role, content=content))
    return messages
