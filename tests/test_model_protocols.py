"""The Protocols of `neuronpedia_graph.models.protocols` against what circuit-tracer really gives.

mypy checks our code against the Protocols; this checks the Protocols against both backends:
every member exists on the backend class (or on a loaded instance), every method accepts the
calls the Protocol declares, and every property's value has the declared type (Protocol-typed
values are checked the same way, recursively). The nnsight model is the session's demo model;
the TransformerLens one is built from a `HookedTransformerConfig` of the demo's shapes with the
demo's tokenizer and transcoders (TransformerLens loads only official model names from weights),
so its weights are random: these tests check structure, and the cached generation on it against
a full recompute.

The checker is shown to reject a class that lacks a member, a method that lacks a parameter,
and a property of the wrong type, so a passing run means something.
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass

import pytest
import torch
import typing_extensions

from neuronpedia_graph import demo
from neuronpedia_graph.models.protocols import (
    AttributionContext,
    ModelConfig,
    ReplacementModelLike,
    Tokenizer,
    as_nnsight,
    as_transformerlens,
    backend_model,
)
from neuronpedia_graph.models.spec import local_transcoder_config
from testkit.protocols import conformance_problems as check

PROMPT = "The city of Paris is in"


def conformance_problems(protocol: type, cls: type, instance: object, where: str = "") -> list[str]:
    """The shared checker, with the name protocols.py imports for type checkers only."""
    return check(protocol, instance, cls=cls, where=where, namespace={"torch": torch})


# ----------------------------------------------------------------------------- the models
@pytest.fixture(scope="module")
def nnsight_model(demo_loaded):
    return demo_loaded.model


@pytest.fixture(scope="module")
def transformerlens_model():
    """A TransformerLens replacement model of the demo's shapes, tokenizer and transcoders."""
    import json

    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.utils.hf_utils import load_transcoders
    from transformer_lens import HookedTransformerConfig
    from transformers import AutoTokenizer

    hf = json.loads((demo.MODEL_DIR / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(demo.MODEL_DIR)
    cfg = HookedTransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        d_head=hf["head_dim"],
        n_heads=hf["num_attention_heads"],
        n_key_value_heads=hf["num_key_value_heads"],
        d_mlp=hf["intermediate_size"],
        d_vocab=len(tokenizer),
        n_ctx=128,
        act_fn="gelu_pytorch_tanh",
        normalization_type="RMS",
        model_name="demo",
        original_architecture=hf["architectures"][0],
        device="cpu",
        seed=0,
    )
    device = torch.device("cpu")
    transcoders = load_transcoders(
        local_transcoder_config(demo.TRANSCODER_DIR), device, torch.float32
    )
    return TransformerLensReplacementModel.from_config(cfg, transcoders, tokenizer=tokenizer)


@pytest.fixture(params=["nnsight", "transformerlens"])
def model(request):
    return request.getfixturevalue(f"{request.param}_model")


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo.MODEL_DIR)


# ------------------------------------------------------------------ both backends conform
def test_both_backends_are_the_classes_we_check(nnsight_model, transformerlens_model) -> None:
    from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )

    assert type(nnsight_model) is NNSightReplacementModel
    assert type(transformerlens_model) is TransformerLensReplacementModel
    assert (nnsight_model.backend, transformerlens_model.backend) == ("nnsight", "transformerlens")


def test_the_backend_class_provides_the_replacement_model_protocol(model) -> None:
    assert conformance_problems(ReplacementModelLike, type(model), model) == []


def test_each_method_is_found_on_the_class_itself(model) -> None:
    """Methods come from the backend class, not from something set on one instance."""
    for name, member in vars(ReplacementModelLike).items():
        if inspect.isfunction(member) and name in typing_extensions.get_protocol_members(
            ReplacementModelLike
        ):
            assert callable(inspect.getattr_static(type(model), name)), name


def test_the_model_config_and_tokenizer_conform(model) -> None:
    # Also reached through the properties above; checked on their own classes here.
    assert conformance_problems(ModelConfig, type(model.cfg), model.cfg) == []
    assert conformance_problems(ModelConfig, type(model.model_config), model.model_config) == []
    assert conformance_problems(Tokenizer, type(model.tokenizer), model.tokenizer) == []


def test_the_attribution_context_conforms(model) -> None:
    ctx = model.setup_attribution(model.ensure_tokenized(PROMPT))
    assert conformance_problems(AttributionContext, type(ctx), ctx) == []
    assert ctx.activation_matrix.is_sparse and ctx.activation_matrix._nnz() > 0


def test_a_real_hugging_face_tokenizer_conforms(hf_tokenizer) -> None:
    assert conformance_problems(Tokenizer, type(hf_tokenizer), hf_tokenizer) == []
    # What the Protocol says about the values, on a real one.
    assert (
        hf_tokenizer.encode(PROMPT, add_special_tokens=False)
        == hf_tokenizer(PROMPT, add_special_tokens=False).input_ids
    )
    rendered = hf_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert isinstance(rendered, str) and "hi" in rendered


def test_narrowing_finds_each_backend_class(nnsight_model, transformerlens_model) -> None:
    assert as_nnsight(nnsight_model) is nnsight_model
    assert as_transformerlens(nnsight_model) is None
    assert as_transformerlens(transformerlens_model) is transformerlens_model
    assert as_nnsight(transformerlens_model) is None
    assert backend_model(nnsight_model) is nnsight_model
    assert backend_model(transformerlens_model) is transformerlens_model


def test_narrowing_refuses_a_model_that_only_claims_a_backend(nnsight_model) -> None:
    impostor = types.SimpleNamespace(backend="nnsight")
    assert as_nnsight(impostor) is None  # not a model, on purpose
    with pytest.raises(TypeError, match="not circuit-tracer's nnsight replacement model"):
        backend_model(impostor)  # not a model, on purpose


# ------------------------------------------------------------ the checker can say no
class _Tokenizer:
    """A hand-written tokenizer that provides the Protocol (the checker's control)."""

    bos_token, bos_token_id, eos_token_id, pad_token_id = "<bos>", 2, 1, 0
    unk_token, unk_token_id = "<unk>", 3
    all_special_ids, all_special_tokens = [0, 1, 2, 3], ["<pad>", "<eos>", "<bos>", "<unk>"]
    chat_template, name_or_path = None, "hand-written"

    def __len__(self) -> int:
        return 4

    def get_vocab(self) -> dict[str, int]:
        return dict(zip(self.all_special_tokens, self.all_special_ids, strict=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return [3] * len(text.split())

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return " ".join("<unk>" for _ in token_ids)

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        *,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
    ) -> str:
        return "".join(m["content"] for m in conversation)


def test_the_checker_accepts_a_complete_hand_written_tokenizer() -> None:
    assert conformance_problems(Tokenizer, _Tokenizer, _Tokenizer()) == []


def test_the_checker_rejects_a_missing_member() -> None:
    kept = {k: v for k, v in vars(_Tokenizer).items() if k == "__len__" or not k.startswith("__")}
    no_decode = type("NoDecode", (), {k: v for k, v in kept.items() if k != "decode"})
    no_name = type("NoName", (), {k: v for k, v in kept.items() if k != "name_or_path"})
    assert conformance_problems(Tokenizer, no_decode, no_decode()) == [
        "NoDecode.decode is missing (a method)"
    ]
    assert conformance_problems(Tokenizer, no_name, no_name()) == ["NoName.name_or_path is missing"]


def test_the_checker_rejects_a_method_that_lacks_a_declared_parameter() -> None:
    class NoOptions(_Tokenizer):
        def apply_chat_template(self, conversation: list[dict[str, str]]) -> str:
            return ""

    (problem,) = conformance_problems(Tokenizer, NoOptions, NoOptions())
    assert problem.startswith("NoOptions.apply_chat_template does not accept")


def test_the_checker_rejects_a_method_that_needs_more_than_declared() -> None:
    class NeedsPair(_Tokenizer):
        def encode(self, text: str, pair: str, *, add_special_tokens: bool = True) -> list[int]:
            return []

    (problem,) = conformance_problems(Tokenizer, NeedsPair, NeedsPair())
    assert problem.startswith("NeedsPair.encode does not accept")


def test_the_checker_rejects_a_value_of_the_wrong_type() -> None:
    class TextIds(_Tokenizer):
        bos_token_id = "2"  # on purpose

    assert conformance_problems(Tokenizer, TextIds, TextIds()) == [
        "TextIds.bos_token_id = '2' is not int | None: Input should be a valid integer"
    ]


def test_the_checker_rejects_a_model_whose_tokenizer_does_not_conform(nnsight_model) -> None:
    """Protocol-typed members are checked recursively."""

    class Proxy:
        def __init__(self, model: object) -> None:
            self._model = model

        def __getattr__(self, name: str) -> object:
            return getattr(self._model, name)

    broken = type("BrokenTokenizer", (), {"encode": lambda self, text: []})()
    proxy = Proxy(nnsight_model)
    proxy.tokenizer = broken  # an instance attribute, on purpose
    problems = conformance_problems(ReplacementModelLike, type(nnsight_model), proxy)
    assert "NNSightReplacementModel.tokenizer.decode is missing (a method)" in problems
    assert any(
        p.startswith("NNSightReplacementModel.tokenizer.encode does not accept") for p in problems
    )


# --------------------------------------------- the typed code paths run on TransformerLens
@dataclass
class _Greedy:
    n_tokens: int = 4
    temperature: float = 0.0
    freq_penalty: float = 0.0
    freeze_attention: bool = False


def test_cached_generation_on_transformerlens_equals_a_full_recompute(
    transformerlens_model,
) -> None:
    """The key/value cache's TransformerLens path (narrowed with `as_transformerlens`)."""
    from neuronpedia_graph.prompts.encoding import ModelPrompts
    from neuronpedia_graph.steering import generate

    model = transformerlens_model
    ids = ModelPrompts(model).encode(PROMPT).ids
    tokens, rows = generate(model, torch.tensor(ids), [], _Greedy(), seed=0)

    assert len(tokens) == 4 and len(rows) == 5
    for step in range(len(rows)):
        sequence = torch.tensor(ids + tokens[:step])
        logits, _ = model.feature_intervention(
            sequence, [], freeze_attention=False, return_activations=False
        )
        full = logits.reshape(-1, logits.shape[-1])[-1].float()
        assert float((rows[step] - full).abs().max()) < 1e-4
        if step < len(tokens):
            assert tokens[step] == int(full.argmax())
