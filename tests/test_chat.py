"""Chat rendering and parsing on the demo model's tokenizer (tokenizer only: fast)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from neuronpedia_graph.chat import (
    ChatMessage,
    ChatTemplateMissing,
    canonical_prompt,
    parse_chat_prompt,
    prompt_positions,
    render_chat,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PARIS = "The city of Paris is in"


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


@pytest.fixture(scope="module")
def tokenizer():
    from neuronpedia_graph.demo import MODEL_DIR

    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


@pytest.fixture
def fresh_tokenizer():
    """A private copy, for tests that change the chat template."""
    from neuronpedia_graph.demo import MODEL_DIR

    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


def decode_each(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def test_render_uses_the_template_and_keeps_exactly_one_bos(tokenizer) -> None:
    rendered = render_chat(tokenizer, [user(PARIS)])

    assert rendered == f"<bos><start_of_turn>user\n{PARIS}<end_of_turn>\n<start_of_turn>model\n"
    # The turn starts with a special token, so circuit-tracer would prepend no BOS: the text
    # must carry it, once.
    tokens = decode_each(tokenizer, prompt_positions(tokenizer, rendered))
    assert tokens[:3] == ["<bos>", "<start_of_turn>", "user"]
    assert tokens.count("<bos>") == 1
    assert tokens[-3:] == ["<start_of_turn>", "model", "\n"]


def test_render_leaves_a_final_assistant_turn_open(tokenizer) -> None:
    rendered = render_chat(
        tokenizer, [user(PARIS), ChatMessage(role="assistant", content="It is in")]
    )

    assert rendered.endswith("<start_of_turn>model\nIt is in")


def test_render_without_a_template_raises(fresh_tokenizer) -> None:
    fresh_tokenizer.chat_template = None

    with pytest.raises(ChatTemplateMissing, match="no chat template"):
        render_chat(fresh_tokenizer, [user(PARIS)])


def test_render_needs_a_message(tokenizer) -> None:
    with pytest.raises(ValueError, match="at least one message"):
        render_chat(tokenizer, [])


def test_canonical_prompt_drops_bos_only_where_circuit_tracer_restores_it(tokenizer) -> None:
    chat_body = f"<start_of_turn>user\n{PARIS}<end_of_turn>\n"

    assert canonical_prompt(tokenizer, f"<bos>{PARIS}") == PARIS
    assert canonical_prompt(tokenizer, PARIS) == PARIS
    assert canonical_prompt(tokenizer, chat_body) == f"<bos>{chat_body}"
    assert canonical_prompt(tokenizer, f"<bos>{chat_body}") == f"<bos>{chat_body}"
    # With or without the BOS text, the positions are the same.
    assert prompt_positions(tokenizer, chat_body) == prompt_positions(
        tokenizer, f"<bos>{chat_body}"
    )
    assert prompt_positions(tokenizer, PARIS) == prompt_positions(tokenizer, f"<bos>{PARIS}")


def test_parse_recovers_a_rendered_chat(tokenizer) -> None:
    rendered = render_chat(tokenizer, [user(PARIS)])

    parsed = parse_chat_prompt(tokenizer, rendered)

    assert parsed.is_chat
    assert parsed.messages == [user(PARIS)]
    assert parsed.prompt == rendered.removeprefix("<bos>")
    tokens = decode_each(tokenizer, prompt_positions(tokenizer, rendered))
    unsteerable = [tokens[p] for p in parsed.unsteerable_positions]
    assert unsteerable == [
        "<bos>",
        "<start_of_turn>",
        "user",
        "\n",
        "<end_of_turn>",
        "\n",
        "<start_of_turn>",
        "model",
        "\n",
    ]
    steerable = [t for p, t in enumerate(tokens) if p not in parsed.unsteerable_positions]
    assert "".join(steerable) == PARIS


def test_parse_round_trips_a_multi_turn_chat(tokenizer) -> None:
    messages = [
        ChatMessage(role="system", content="Answer with one word ."),
        user("1 2 3"),
        ChatMessage(role="assistant", content="4"),
        user(PARIS),
    ]

    parsed = parse_chat_prompt(tokenizer, render_chat(tokenizer, messages))

    assert parsed.is_chat
    assert parsed.messages == messages


def test_parse_keeps_an_open_assistant_turn_as_a_message(tokenizer) -> None:
    messages = [user(PARIS), ChatMessage(role="assistant", content="It is")]

    parsed = parse_chat_prompt(tokenizer, render_chat(tokenizer, messages))

    assert parsed.messages == messages


def test_parse_plain_prompt_is_not_a_chat(tokenizer) -> None:
    parsed = parse_chat_prompt(tokenizer, f"<bos>{PARIS}")

    assert not parsed.is_chat
    assert parsed.messages is None
    assert parsed.prompt == PARIS
    assert parsed.unsteerable_positions == []


@pytest.mark.parametrize(
    "text",
    [
        "Hello <start_of_turn>user\n1 2 3<end_of_turn>\n",  # prose before the first turn
        "<start_of_turn>user\n1 2 3",  # a user turn left open
        "<start_of_turn>user\n1 2 3<end_of_turn>\n4 5",  # text after a turn that is no turn
    ],
)
def test_parse_rejects_text_that_is_not_made_of_turns(tokenizer, text: str) -> None:
    parsed = parse_chat_prompt(tokenizer, text)

    assert not parsed.is_chat
    assert parsed.messages is None
    assert parsed.unsteerable_positions == []


def test_parse_learns_other_templates(fresh_tokenizer) -> None:
    fresh_tokenizer.chat_template = CHATML
    messages = [ChatMessage(role="system", content="1 2 3"), user(PARIS)]
    rendered = render_chat(fresh_tokenizer, messages)

    parsed = parse_chat_prompt(fresh_tokenizer, rendered)

    assert parsed.messages == messages
    tokens = decode_each(fresh_tokenizer, prompt_positions(fresh_tokenizer, rendered))
    steerable = [t for p, t in enumerate(tokens) if p not in parsed.unsteerable_positions]
    assert "".join(steerable) == "1 2 3" + PARIS
