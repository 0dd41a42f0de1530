"""Small real tokenizers with the upstream special-token ids and chat templates (assumption 8).

See the package docstring for what each repository holds and why.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from testkit.hubcache.layout import CacheRepo

# Id 0 of the BPE vocabularies: circuit-tracer skips a BOS/pad id of 0 (it takes the first
# *truthy* one), while upstream Llama/Qwen ids are 128000/151643; keep ours non-zero too.
RESERVED = "<|reserved_special_token_0|>"


# Sentences the tokenizers are built from; test prompts use these words.
CORPUS = [
    "The city of Paris is in France .",
    "The city of Rome is in Italy .",
    "The city of Berlin is in Germany .",
    "The city of Madrid is in Spain .",
    "The capital of the state containing Dallas is Austin .",
    "Hello , how are you ? I am fine , thank you .",
    "What is the capital of France ? The capital of France is Paris .",
    "Answer in one word : how many legs does a spider have ? Eight .",
    "one two three four five six seven eight nine ten",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "a plus b equals c . the quick brown fox jumps over the lazy dog .",
]


WORD_PATTERN = r"\n| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]|\s"


GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + (system if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)


# ------------------------------------------------------------------------------- tokenizers
def _fast(tok: Any, **kwargs: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, clean_up_tokenization_spaces=False, model_max_length=8192, **kwargs
    )


def gemma_tokenizer(fixed: dict[int, str], vocab_size: int | None = None) -> Any:
    """Word-level tokenizer with Gemma's special tokens at the given ids.

    Args:
        fixed: id -> token that must have exactly that id (special tokens, gemma-3's "user").
        vocab_size: pad the vocabulary with `<unusedN>` entries up to this size.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")
    pieces = {piece for text in CORPUS for piece, _ in pre.pre_tokenize_str(text)}
    pieces |= {"\n", "user", "model", "system"}
    size = max(vocab_size or 0, max(fixed) + 1, len(pieces) + len(fixed) + 8)
    tokens: list[str | None] = [None] * size
    for index, token in fixed.items():
        tokens[index] = token
    free = (i for i, t in enumerate(tokens) if t is None)
    for piece in sorted(pieces - set(fixed.values())):
        tokens[next(free)] = piece
    for i in free:
        tokens[i] = f"<unused{i}>"
    vocab = {token: i for i, token in enumerate(tokens) if token is not None}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Fuse()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok.add_special_tokens(specials)
    return _fast(
        tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=GEMMA_CHAT_TEMPLATE,
    )


def bpe_tokenizer(
    specials: list[str],
    vocab_size: int,
    bos: str | None,
    eos: str,
    pad: str | None,
    chat_template: str | None,
) -> Any:
    """Byte-level BPE (as Llama 3 and Qwen use) trained on CORPUS; specials get ids 0..k-1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    extra = [s for s in specials if s not in (bos, eos, pad)]
    return _fast(
        tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=extra,
        chat_template=chat_template,
    )


def _save_tokenizer(repo: CacheRepo, tokenizer: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        repo.put_directory(Path(tmp))
