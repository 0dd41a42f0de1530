"""Chat prompts: rendering messages with the model's template, and reading a rendered prompt back.

Everything here is about the text circuit-tracer tokenizes, so positions use its convention:
`ensure_tokenized` tokenizes without special tokens and prepends a BOS *unless the text already
starts with a special token*. That exception matters for Gemma-style templates, whose turns
start with `<start_of_turn>` (a special token): with the template's leading `<bos>` stripped,
circuit-tracer would run the model with no BOS at all. `canonical_prompt` is the one place that
decides when the BOS text is dropped (circuit-tracer re-adds it) and when it must stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from circuit_tracer.replacement_model.common import ensure_tokenized

from neuronpedia_graph.schemas import ChatMessage, ParsedChatPrompt

# Probe contents for learning a template's turn delimiters: plain letters survive `trim` and
# similar filters, and they cannot collide with any template's own text.
_PROBES = ("QqzxSENTINELzero", "QqzxSENTINELone", "QqzxSENTINELtwo")


class ChatTemplateMissing(ValueError):
    """The model's tokenizer has no chat template, so messages cannot be rendered."""


def strip_leading_bos(tokenizer: Any, text: str) -> str:
    """`text` without one leading BOS string: the form shown to (and edited by) people."""
    bos = tokenizer.bos_token
    return text[len(bos) :] if bos and text.startswith(bos) else text


def canonical_prompt(tokenizer: Any, text: str) -> str:
    """The spelling of `text` whose circuit-tracer tokenization starts with exactly one BOS.

    A leading BOS string is dropped when circuit-tracer puts the BOS back itself, and kept when
    the rest starts with a special token (circuit-tracer then prepends nothing). So "<bos>The"
    and "The" give the same token positions, and a Gemma chat keeps its BOS. Idempotent.
    """
    body = strip_leading_bos(tokenizer, text)
    bos = tokenizer.bos_token
    if not bos or not body:
        return body
    first = tokenizer(body, add_special_tokens=False).input_ids[:1]
    if first and first[0] in tokenizer.all_special_ids:
        return bos + body
    return body


def prompt_positions(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` indexed by position, as attribution and steering count them."""
    model_name = getattr(tokenizer, "name_or_path", "") or ""
    ids = ensure_tokenized(canonical_prompt(tokenizer, text), tokenizer, "cpu", model_name)
    return ids.tolist()


def render_chat(tokenizer: Any, messages: list[ChatMessage]) -> str:
    """Render messages as the model was trained to see them, ready for attribution or steering.

    A conversation ending with a user (or system) turn gets the template's generation prompt, so
    the model's next token is its reply. One ending with an assistant turn is left open
    (`continue_final_message`): that turn is a prefill the model continues. The leading BOS
    string follows `canonical_prompt` (dropped only when circuit-tracer re-adds it).
    """
    if not messages:
        raise ValueError("messages: at least one message is required")
    _require_template(tokenizer)
    conversation = [m.model_dump() for m in messages]
    open_final = messages[-1].role == "assistant"
    rendered = tokenizer.apply_chat_template(
        conversation,
        tokenize=False,
        add_generation_prompt=not open_final,
        continue_final_message=open_final,
    )
    return canonical_prompt(tokenizer, rendered)


def parse_chat_prompt(tokenizer: Any, prompt: str) -> ParsedChatPrompt:
    """Recover the messages of a rendered chat prompt and the positions steering should skip.

    The template's delimiters are learned by rendering probe conversations, so no template is
    hard-coded. A prompt is a chat when it is made entirely of those turns (an optional
    template preamble, complete turns, then a generation prompt or one open assistant turn).
    For a chat, `unsteerable_positions` lists position 0 (the BOS) and every token lying wholly
    inside the template's own text (turn markers, role names, the newlines they add), in the
    positions of `prompt_positions`. A plain prompt has none.
    """
    body = strip_leading_bos(tokenizer, prompt)
    delimiters = _learn_delimiters(tokenizer) if _has_template(tokenizer) else None
    parsed = _parse(body, delimiters) if delimiters else None
    if parsed is None:
        return ParsedChatPrompt(messages=None, is_chat=False, prompt=body, unsteerable_positions=[])
    messages, template_spans = parsed
    return ParsedChatPrompt(
        messages=messages,
        is_chat=True,
        prompt=body,
        unsteerable_positions=_template_positions(tokenizer, body, template_spans),
    )


# --------------------------------------------------------------------------- template learning
@dataclass(frozen=True)
class _Delimiters:
    preamble: str  # text before the first turn when there is no system turn (e.g. a default one)
    turns: dict[str, tuple[str, str]]  # role -> (prefix, suffix) around the content
    generation_prompt: str


def _has_template(tokenizer: Any) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def _require_template(tokenizer: Any) -> None:
    if not _has_template(tokenizer):
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        raise ChatTemplateMissing(
            f"The tokenizer of {name} has no chat template, so chat messages cannot be "
            "rendered; send a plain prompt instead."
        )


def _render(tokenizer: Any, turns: list[tuple[str, str]], generation_prompt: bool) -> str:
    conversation = [{"role": role, "content": content} for role, content in turns]
    text = tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=generation_prompt
    )
    return strip_leading_bos(tokenizer, text)


def _cut(text: str, marker: str) -> tuple[str, str]:
    """The text before and after `marker`, which must occur exactly once."""
    if text.count(marker) != 1:
        raise ValueError(f"probe {marker!r} does not occur exactly once in the render")
    before, _, after = text.partition(marker)
    return before, after


def _learn_delimiters(tokenizer: Any) -> _Delimiters | None:
    """Learn prefixes and suffixes per role from probe renders; None when they are not clean.

    Renders [user], [user, assistant] and [user, assistant, user]: the text between two probes
    is the first turn's suffix followed by the next turn's prefix, and the suffixes are known
    from the shorter renders, so every prefix and suffix falls out without guessing.
    """
    a, b, c = _PROBES
    try:  # arbitrary template code: any failure just means "cannot parse chats of this model"
        one = _render(tokenizer, [("user", a)], False)
        one_gen = _render(tokenizer, [("user", a)], True)
        two = _render(tokenizer, [("user", a), ("assistant", b)], False)
        three = _render(tokenizer, [("user", a), ("assistant", b), ("user", c)], False)
        head, user_suffix = _cut(one, a)
        user_then_assistant, assistant_suffix = _cut(_cut(two, a)[1], b)
        assistant_then_user = _cut(_cut(three, b)[1], c)[0]
    except Exception:
        return None
    if not (
        user_then_assistant.startswith(user_suffix)
        and assistant_then_user.startswith(assistant_suffix)
        and one_gen.startswith(one)
    ):
        return None
    user_prefix = assistant_then_user[len(assistant_suffix) :]
    assistant_prefix = user_then_assistant[len(user_suffix) :]
    if not head.endswith(user_prefix):
        return None
    turns = {"user": (user_prefix, user_suffix), "assistant": (assistant_prefix, assistant_suffix)}
    system = _learn_system(tokenizer, user_prefix)
    if system is not None:
        turns["system"] = system
    if not all(prefix and suffix for prefix, suffix in turns.values()):
        return None  # an empty delimiter would make turn boundaries ambiguous
    return _Delimiters(
        preamble=head[: len(head) - len(user_prefix)],
        turns=turns,
        generation_prompt=one_gen[len(one) :],
    )


def _learn_system(tokenizer: Any, user_prefix: str) -> tuple[str, str] | None:
    """A system turn's delimiters, or None when the template rejects or folds system turns."""
    a, b, _ = _PROBES
    try:  # e.g. Gemma 2 raises "System role not supported"
        prefix, after = _cut(_render(tokenizer, [("system", a), ("user", b)], False), a)
        system_then_user = _cut(after, b)[0]
    except Exception:
        return None
    if not system_then_user.endswith(user_prefix):
        return None  # folded into the user turn (Gemma 3): no delimiters of its own
    return prefix, system_then_user[: len(system_then_user) - len(user_prefix)]


# --------------------------------------------------------------------------------- parsing
def _parse(
    text: str, delimiters: _Delimiters
) -> tuple[list[ChatMessage], list[tuple[int, int]]] | None:
    """Messages and the character spans of template text, or None when `text` is not a chat."""
    spans: list[tuple[int, int]] = []
    messages: list[ChatMessage] = []
    pos = 0
    preamble = delimiters.preamble
    if preamble and text.startswith(preamble):
        spans.append((0, len(preamble)))
        pos = len(preamble)
    by_prefix_length = sorted(delimiters.turns.items(), key=lambda kv: -len(kv[1][0]))
    while pos < len(text):
        rest = text[pos:]
        if messages and delimiters.generation_prompt and rest == delimiters.generation_prompt:
            spans.append((pos, len(text)))
            break
        match = next(((r, d) for r, d in by_prefix_length if rest.startswith(d[0])), None)
        if match is None:
            return None
        role, (prefix, suffix) = match
        start = pos + len(prefix)
        spans.append((pos, start))
        end = text.find(suffix, start)
        if end < 0:  # an open final turn: only an assistant prefill may be left unterminated
            if role != "assistant":
                return None
            messages.append(ChatMessage(role="assistant", content=text[start:]))
            break
        messages.append(ChatMessage.model_validate({"role": role, "content": text[start:end]}))
        spans.append((end, end + len(suffix)))
        pos = end + len(suffix)
    return (messages, spans) if messages else None


def _template_positions(tokenizer: Any, body: str, spans: list[tuple[int, int]]) -> list[int]:
    """Positions (BOS at 0) of the tokens that lie wholly inside the template's text."""
    encoding = tokenizer(body, add_special_tokens=False, return_offsets_mapping=True)
    body_ids: list[int] = encoding.input_ids
    positions = prompt_positions(tokenizer, body)
    lead = len(positions) - len(body_ids)
    if lead < 0 or positions[lead:] != body_ids:
        raise RuntimeError("chat prompt tokenization does not line up with circuit-tracer's")
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    unsteerable = list(range(lead))
    for k, (start, end) in enumerate(encoding.offset_mapping):
        if any(s <= start and end <= e for s, e in merged):
            unsteerable.append(lead + k)
    return unsteerable
