"""Chat rendering and /parse-chat-prompt parsing, as the original graph server does them.

The contract vectors (tests/contracts/webapp-parity.json) are what the original server's own
functions return on the demo tokenizer; the other tests pin the same rules on templates of other
shapes (no BOS, a default system turn, strict alternation, a decorated final turn).
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from neuronpedia_graph.prompts.chat import (
    ChatMessage,
    ChatRenderError,
    ChatTemplateMissing,
    canonical_prompt,
    parse_chat_prompt,
    prompt_positions,
    render_chat,
    unsteerable_positions,
)
from tests.conftest import PARITY_PATH, SHARED_PARITY_PATH

PARIS = "The city of Paris is in"
VECTORS = json.loads(PARITY_PATH.read_text())

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen-style: a default system turn when none is given, and an empty <think> block decorating an
# assistant turn in final position (but not earlier ones).
QWEN_LIKE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Q.<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma 2's rules: no system role, and user/assistant must alternate starting with user.
GEMMA_STRICT = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
    "{% if m['role'] == 'assistant' %}{% set role = 'model' %}{% else %}"
    "{% set role = m['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# The system header "<<" is a prefix of the user header "<<U>>" (and system wins ties on rank).
NESTED_HEADERS = (
    "{% for m in messages %}"
    "{{ {'system': '<<', 'user': '<<U>>', 'assistant': '>>'}[m['role']] }}{{ m['content'] }}|"
    "{% endfor %}{% if add_generation_prompt %}>>{% endif %}"
)
# Leaves the final message's content out, so transformers refuses continue_final_message.
DROPS_FINAL_CONTENT = (
    "{% for m in messages %}[{{ m['role'] }}]{% if not loop.last %}{{ m['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)
# The BOS text followed by ordinary (not special) tokens.
PLAIN_WITH_BOS = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} {{ m['content'] }} .\n{% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


def msg(role: str, content: str) -> ChatMessage:
    return ChatMessage.model_validate({"role": role, "content": content})


def user(text: str) -> ChatMessage:
    return msg("user", text)


@pytest.fixture(scope="module")
def tokenizer(demo_loaded):
    """The tokenizer the demo server serves with (the one the contract vectors were made on)."""
    return demo_loaded.tokenizer


@pytest.fixture
def fresh_tokenizer():
    """A private copy of the demo tokenizer, for tests that change its chat template."""
    from neuronpedia_graph.demo import MODEL_DIR

    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


def with_template(fresh_tokenizer, template: str):
    fresh_tokenizer.chat_template = template
    return fresh_tokenizer


def tokens_of(tokenizer, text: str) -> list[str]:
    return [tokenizer.decode([i]) for i in prompt_positions(tokenizer, text)]


# ------------------------------------------------------------------------ contract vectors
def test_vendored_parity_vectors_match_the_published_ones() -> None:
    if not SHARED_PARITY_PATH.is_file():
        pytest.skip(f"no published contract beside the repo ({SHARED_PARITY_PATH})")
    assert json.loads(PARITY_PATH.read_text()) == json.loads(SHARED_PARITY_PATH.read_text())


@pytest.mark.parametrize("case", VECTORS["render"], ids=lambda c: repr(c["messages"]))
def test_render_matches_the_original(tokenizer, case) -> None:
    messages = [ChatMessage.model_validate(m) for m in case["messages"]]

    rendered = render_chat(tokenizer, messages)

    assert rendered == case["rendered"]
    assert tokens_of(tokenizer, rendered).count(tokenizer.bos_token) == 1


@pytest.mark.parametrize("case", VECTORS["parse"], ids=lambda c: repr(c["prompt"]))
def test_parse_matches_the_original(tokenizer, case) -> None:
    assert parse_chat_prompt(tokenizer, case["prompt"]).model_dump() == case["response"]


# ------------------------------------------------------------------------------- rendering
def test_every_final_turn_stays_open(tokenizer) -> None:
    conversation = [msg("system", "Be brief ."), user("1 2 3"), msg("assistant", "4"), user(PARIS)]

    assert render_chat(tokenizer, conversation).endswith(f"<start_of_turn>user\n{PARIS}")
    assert render_chat(tokenizer, [*conversation, msg("assistant", "It is")]).endswith(
        "<start_of_turn>model\nIt is"
    )


@pytest.mark.parametrize("blank", ["", " ", "\n\t "])
def test_a_trailing_blank_assistant_turn_asks_for_the_generation_prompt(tokenizer, blank) -> None:
    before = [user("1 2 3"), msg("assistant", "4"), user(PARIS)]

    rendered = render_chat(tokenizer, [*before, msg("assistant", blank)])

    assert rendered == render_chat(tokenizer, before) + "<end_of_turn>\n<start_of_turn>model\n"


def test_a_lone_blank_assistant_turn_is_continued_not_replaced(tokenizer) -> None:
    # The original only swaps in the generation prompt when turns precede the blank one.
    assert render_chat(tokenizer, [msg("assistant", "")]) == "<bos><start_of_turn>model"


def test_a_template_that_rejects_continuing_gets_the_generation_prompt(fresh_tokenizer) -> None:
    tok = with_template(fresh_tokenizer, DROPS_FINAL_CONTENT)
    with pytest.raises(ValueError, match="continue_final_message"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], continue_final_message=True)

    assert render_chat(tok, [msg("system", "a"), user("hi")]) == "[system]a[user][assistant]"


def test_a_template_that_refuses_the_messages_raises_a_render_error(fresh_tokenizer) -> None:
    tok = with_template(fresh_tokenizer, GEMMA_STRICT)

    with pytest.raises(ChatRenderError, match="roles must alternate"):
        render_chat(tok, [user("a"), user("b")])
    with pytest.raises(ChatRenderError, match="System role not supported"):
        render_chat(tok, [msg("system", "a"), user("b")])
    assert render_chat(tok, [user("a")]) == "<bos><start_of_turn>user\na"


def test_render_without_a_template_raises(fresh_tokenizer) -> None:
    fresh_tokenizer.chat_template = None

    with pytest.raises(ChatTemplateMissing, match="no chat template"):
        render_chat(fresh_tokenizer, [user(PARIS)])


def test_render_needs_a_message(tokenizer) -> None:
    with pytest.raises(ValueError, match="at least one message"):
        render_chat(tokenizer, [])


def test_a_template_without_bos_text_is_rendered_as_is(fresh_tokenizer) -> None:
    tok = with_template(fresh_tokenizer, CHATML)

    rendered = render_chat(tok, [user("1 2 3")])

    assert rendered == "<|im_start|>user\n1 2 3"
    assert tokens_of(tok, rendered).count("<bos>") == 1


def test_bos_text_before_ordinary_tokens_still_gives_exactly_one_bos(fresh_tokenizer) -> None:
    tok = with_template(fresh_tokenizer, PLAIN_WITH_BOS)

    rendered = render_chat(tok, [user("1 2 3")])

    assert rendered == "<bos>user 1 2 3"  # kept as the template wrote it, like the original
    assert tokens_of(tok, rendered)[:3] == ["<bos>", "user", " 1"]
    assert tokens_of(tok, rendered).count("<bos>") == 1


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


# --------------------------------------------------------------------------------- parsing
def test_parse_round_trips_a_multi_turn_chat(tokenizer) -> None:
    messages = [msg("system", "Answer with one word ."), user("1 2 3"), msg("assistant", "4")]
    messages.append(user(PARIS))

    parsed = parse_chat_prompt(tokenizer, render_chat(tokenizer, messages))

    assert parsed.is_chat
    assert parsed.messages == messages


def test_parse_keeps_a_generation_prompt_as_an_empty_assistant_turn(tokenizer) -> None:
    messages = [user("1 2 3"), msg("assistant", "")]

    parsed = parse_chat_prompt(tokenizer, render_chat(tokenizer, messages))

    assert parsed.messages == messages


def test_turn_markers_stay_steerable(tokenizer) -> None:
    rendered = render_chat(tokenizer, [user("1 2 3"), msg("assistant", "4")])
    tokens = tokens_of(tokenizer, rendered)

    parsed = parse_chat_prompt(tokenizer, rendered)

    assert parsed.unsteerable_positions == [0]
    assert tokens[0] == "<bos>"
    assert tokens[1] == "<start_of_turn>" and tokens.count("<start_of_turn>") == 2


def test_every_bos_is_unsteerable(tokenizer) -> None:
    assert unsteerable_positions(tokenizer, f"1 2<bos> 3{PARIS}") == [0, 3]
    # One leading BOS text is the prompt's own; a second one is a real token.
    parsed = parse_chat_prompt(tokenizer, f"<bos><bos>{PARIS}")
    assert parsed.prompt == f"<bos>{PARIS}"
    assert parsed.unsteerable_positions == [0, 1]
    assert not parsed.is_chat


def test_an_empty_prompt_is_just_a_bos(tokenizer) -> None:
    for prompt in ("", "<bos>"):
        parsed = parse_chat_prompt(tokenizer, prompt).model_dump()
        assert parsed == {
            "messages": None,
            "is_chat": False,
            "prompt": "",
            "unsteerable_positions": [0],
        }


def test_text_around_turns_is_read_as_the_original_reads_it(tokenizer) -> None:
    # Prose before the first header is dropped; text after a closed turn joins its content.
    prose_first = "Hello <start_of_turn>user\n1 2<end_of_turn>\n"
    text_after = "<start_of_turn>user\n1 2<end_of_turn>\n3"

    assert parse_chat_prompt(tokenizer, prose_first).messages == [user("1 2")]
    assert parse_chat_prompt(tokenizer, text_after).messages == [user("1 2<end_of_turn>\n3")]


def test_without_a_template_nothing_is_a_chat(fresh_tokenizer) -> None:
    fresh_tokenizer.chat_template = None
    rendered = "<bos><start_of_turn>user\n1 2 3<end_of_turn>\n"

    parsed = parse_chat_prompt(fresh_tokenizer, rendered)

    assert (parsed.messages, parsed.is_chat, parsed.unsteerable_positions) == (None, False, [0])
    assert parsed.prompt == rendered.removeprefix("<bos>")


@pytest.mark.parametrize(
    ("template", "messages"),
    [
        (CHATML, [msg("system", "1 2 3"), user(PARIS), msg("assistant", "It is")]),
        (GEMMA_STRICT, [user("1 2"), msg("assistant", "3"), user(PARIS)]),
        (NESTED_HEADERS, [msg("system", "be brief"), user("hi"), msg("assistant", "yo")]),
    ],
    ids=["chatml", "gemma-strict", "nested-headers"],
)
def test_parse_learns_the_template_it_is_given(fresh_tokenizer, template, messages) -> None:
    tok = with_template(fresh_tokenizer, template)

    parsed = parse_chat_prompt(tok, render_chat(tok, messages))

    assert parsed.is_chat
    assert parsed.messages == messages


def test_parse_reads_undecorated_headers_and_keeps_default_turns(fresh_tokenizer) -> None:
    tok = with_template(fresh_tokenizer, QWEN_LIKE)
    rendered = render_chat(tok, [user(PARIS), msg("assistant", "It is")])
    assert "<think>" in rendered

    parsed = parse_chat_prompt(tok, rendered)

    assert parsed.messages == [
        msg("system", "You are Q."),
        user(PARIS),
        msg("assistant", "<think>\n\n</think>\n\nIt is"),
    ]


def test_a_tokenizer_without_bos_counts_circuit_tracers_stand_in(fresh_tokenizer) -> None:
    fresh_tokenizer.bos_token = None

    positions = prompt_positions(fresh_tokenizer, PARIS)

    assert positions[0] == fresh_tokenizer.eos_token_id  # bos unset, pad id 0 is skipped
    assert unsteerable_positions(fresh_tokenizer, PARIS) == [0]
