"""Prompt shapes a model cannot run, refused as bad input before circuit-tracer asserts.

Why: circuit-tracer 0.5.0 zeroes the first four positions of gemma-3 instruct models
(`<bos><start_of_turn>user\\n`, where GemmaScope 2 transcoders are not meaningful) and
*asserts* that every prompt starts with exactly those token ids. A plain prompt therefore
raised AssertionError inside attribution, forward passes and steering: a 500 for what is the
client's mistake. The original server only prepended `<bos>` and failed the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuronpedia_graph.models.protocols import ReplacementModelLike


# circuit-tracer's hard-coded prefix for gemma-3 "-it" models (replacement_model/common.py).
GEMMA3_IT_PREFIX_IDS = (2, 105, 2364, 107)
GEMMA3_IT_PREFIX_TEXT = "<bos><start_of_turn>user\n"


class PromptFormatError(ValueError):
    """The prompt is well-formed text the loaded model cannot be run on; a 400 for the client."""


def is_gemma3_it(model_name: str) -> bool:
    """circuit-tracer's own test for the gemma-3 instruct special case."""
    return "gemma-3" in model_name and model_name.endswith("-it")


def check_prompt_format(model: ReplacementModelLike, text: str) -> None:
    """Raise PromptFormatError if `text` (as circuit-tracer will tokenize it) cannot be run.

    Args:
        model: the loaded ReplacementModel (its `cfg.model_name` and tokenizer are read).
        text: the canonical prompt text, exactly as passed to `ensure_tokenized`.
    """
    model_name = model.cfg.model_name or ""
    if not is_gemma3_it(model_name):
        return
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if tuple(ids[: len(GEMMA3_IT_PREFIX_IDS)]) != GEMMA3_IT_PREFIX_IDS:
        raise PromptFormatError(
            f"{model_name} is an instruct model: prompts must be chat turns starting with "
            f"{GEMMA3_IT_PREFIX_TEXT!r} (send `messages`, or render the chat template)"
        )
