"""Word-level tokenizer for the demo model, built locally with the `tokenizers` library.

Word-level tokens that carry their leading space (" France", " 7") make graphs readable: prompt
tokens and logit labels show up as words, never as byte-level fragments. Ids 0-3 follow Gemma's
layout (pad, eos, bos, unk), so bos is 2: circuit-tracer prepends the first *truthy* id among
bos/pad/eos, and a bos of 0 would be skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from neuronpedia_graph.demo.corpus import END_OF_TURN, START_OF_TURN

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN)

# A newline, or a run of letters / digits / one other symbol with at most one leading space,
# or any other single whitespace character: every character of any text lands in some piece,
# so unknown text maps to <unk> pieces instead of failing.
WORD_PATTERN = r"\n| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]|\s"

# Gemma-style turns; bos is part of the rendered text, as with the real Gemma templates, so that
# circuit-tracer (which tokenizes with add_special_tokens=False) sees it at position 0.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Build a fast tokenizer whose vocabulary is every word piece of `texts`.

    Pieces are sorted so that ids depend only on the set of texts, not their order.
    """
    pre = _pre_tokenizer()
    pieces: set[str] = set()
    for text in texts:
        for chunk in text.replace(START_OF_TURN, "\n").replace(END_OF_TURN, "\n").split("\n"):
            pieces.update(piece for piece, _ in pre.pre_tokenize_str(chunk))
    pieces.update({"\n", "user", "model"})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for piece in sorted(pieces - set(SPECIAL_TOKENS)):
        vocab[piece] = len(vocab)

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    # Fuse concatenates pieces as they are: the spaces live inside the tokens.
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, vocab[BOS])],
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[START_OF_TURN, END_OF_TURN],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
        padding_side="right",
    )
