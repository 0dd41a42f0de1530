"""A fabricated Hugging Face hub cache: random-weight models and transcoder sets under REAL ids.

Why: model weights cannot be downloaded here, yet the paths users take (`google/gemma-2-2b` +
`gemma`, `meta-llama/Llama-3.2-1B` + `llama`, ...) go through circuit-tracer's Hub loaders,
transformers' cache lookups and our offline resolution. Writing an `HF_HOME` that holds those
repositories, in the layouts the loaders read, lets the real CLI and server run them end to end
with `HF_HUB_OFFLINE=1`. Small shapes (nnsight reads the architecture from config.json) keep
CI fast; `size="full"` writes the real architectures for TransformerLens, which hard-codes them.

Layout written (as huggingface_hub 0.36 writes it):
`HF_HOME/hub/models--ORG--NAME/{blobs/<sha256>, snapshots/<40-hex revision>/<path> -> blob,
refs/main}`. The revision is a fixed hash of the repository id, so rebuilding gives the same
paths.

The upstream config.yaml files cannot be read from here. What each fabricated repository holds
is derived from what circuit-tracer 0.5.0 reads (utils/hf_utils.py, transcoder/*.py,
utils/tl_nnsight_mapping.py); every assumption is listed:

1. `mwhanna/gemma-scope-transcoders` (`gemma`): config.yaml with `model_kind: transcoder_set`,
   `feature_input_hook: ln2.hook_normalized`, `feature_output_hook: hook_mlp_out` and
   `transcoders:` = one `hf://google/gemma-scope-2b-pt-transcoders/layer_{i}/width_16k/
   average_l0_{L}/params.npz` URI per layer (L differs per layer upstream; ours are made up).
   circuit-tracer picks its GemmaScope loader because the repo id contains "gemma-scope", the
   config lists `transcoders` and the files end in `.npz`.
2. `google/gemma-scope-2b-pt-transcoders` params.npz: float32 `W_enc` (d_model, width), `W_dec`
   (width, d_model), `b_enc` (width), `b_dec` (d_model), `threshold` (width) (JumpReLU).
3. `mntss/transcoder-Llama-3.2-1B` (`llama`): config.yaml with hooks `mlp.hook_in` /
   `mlp.hook_out` and NO `transcoders` list, so circuit-tracer snapshot-downloads
   `layer_{i}.safetensors` from the repository itself; each holds `W_enc` (width, d_model),
   `W_dec` (width, d_model), `b_enc`, `b_dec` and `W_skip` (d_model, d_model); ReLU (no
   threshold).
4. `mntss/clt-gemma-2-2b-2.5M`: config.yaml with `model_kind: cross_layer_transcoder`, hooks
   `hook_resid_mid` / `hook_mlp_out`, no file list; `W_enc_{i}.safetensors` holds `W_enc_{i}`
   (width, d_model), `b_enc_{i}`, `b_dec_{i}`, `threshold_{i}`; `W_dec_{i}.safetensors` holds
   `W_dec_{i}` (width, n_layers - i, d_model).
5. `mwhanna/qwen3-4b-transcoders`: config.yaml with hooks `mlp.hook_in` / `mlp.hook_out` (the
   only ones circuit-tracer maps for Qwen3) and a `transcoders:` list of
   `hf://mwhanna/qwen3-4b-transcoders/layer_{i}.safetensors` (whether upstream lists them or
   relies on `layer_*` discovery is unknown; both paths are covered: llama uses discovery);
   keys as in 3 plus `activation_function.threshold` (JumpReLU).
6. `mwhanna/gemma-scope-2-4b-it`: `transcoder_all/width_262k_l0_small_affine/config.yaml` with
   hooks `mlp.hook_in` / `hook_mlp_out` and `transcoders:` =
   `hf://google/gemma-scope-2-4b-it/transcoder_all/layer_{i}_width_262k_l0_small_affine/
   params.safetensors`; circuit-tracer picks its GemmaScope 2 loader because the repo id
   contains "gemma-scope-2". Files hold `w_enc` (d_model, width), `w_dec` (width, d_model),
   `b_enc`, `b_dec`, `threshold` and `affine_skip_connection` (d_model, d_model).
7. Models: config.json as transformers' config classes write it with `architectures` set
   (Gemma2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM, Gemma3ForConditionalGeneration with
   a tiny SigLIP vision tower), generation_config.json, and safetensors weights named as the
   transformers modules name them (tied embeddings stored once), sharded with an index above
   2 GB. Full-size shapes are the published ones (gemma-2-2b 2304 x 26, vocab 256000;
   Llama-3.2-1B 2048 x 16, 32/8 heads, vocab 128256, llama3 rope scaling, tied embeddings).
8. Tokenizers are small real `tokenizers` tokenizers wrapped as PreTrainedTokenizerFast (the
   real ones are SentencePiece / tiktoken-derived with 128k-262k entries): Gemma ones are
   word-level with Gemma's special-token ids (pad 0, eos 1, bos 2, unk 3; gemma-2
   `<start_of_turn>` 106; gemma-3 `<start_of_turn>` 105, "\\n" 107, "user" 2364, because
   circuit-tracer checks gemma-3-it prompts start with ids [2, 105, 2364, 107]); Llama and Qwen
   ones are byte-level BPE trained on a small corpus. Chat templates: Gemma-style for
   gemma-2-2b and gemma-3-4b-it, ChatML (Qwen) for Qwen3-4B, none for the Llama base model.
   Qwen has no BOS token (eos `<|im_end|>`, pad `<|endoftext|>`), as upstream.

Random weights: linear weights N(0, 0.02); RMSNorm weights 0 for Gemma (it scales by 1 + w)
and 1 otherwise. Transcoder encoders are N(0, 1/d_model) with the JumpReLU threshold (or the
negative ReLU bias) set so that about `target_l0` features fire per token and layer on a
unit-RMS input. Random transcoders still activate more, and more evenly, than trained ones, so
graph timings measured on them are a worst case.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

SHARD_BYTES = 2 * 1024**3
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


# --------------------------------------------------------------------------- the cache layout
def revision_for(repo_id: str) -> str:
    """A fixed 40-hex commit hash per repository (rebuilds give the same snapshot paths)."""
    return hashlib.sha1(f"fabricated:{repo_id}".encode()).hexdigest()


class CacheRepo:
    """One model repository in the hub cache: blobs, a snapshot of symlinks, refs/main."""

    def __init__(self, hf_home: Path, repo_id: str) -> None:
        self.repo_id = repo_id
        self.root = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
        self.revision = revision_for(repo_id)
        self.snapshot = self.root / "snapshots" / self.revision
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "refs").mkdir(parents=True, exist_ok=True)
        self.snapshot.mkdir(parents=True, exist_ok=True)
        (self.root / "refs" / "main").write_text(self.revision)

    def put(self, filename: str, write: Callable[[Path], None]) -> Path:
        """Write one file through `write(tmp_path)`, store it as a blob and link it in."""
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "blobs", prefix=".incoming-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            write(tmp)
            digest = hashlib.sha256()
            with tmp.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    digest.update(block)
            blob = self.root / "blobs" / digest.hexdigest()
            tmp.replace(blob)
        finally:
            tmp.unlink(missing_ok=True)
        link = self.snapshot / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        return link

    def put_text(self, filename: str, text: str) -> Path:
        return self.put(filename, lambda p: p.write_text(text))

    def put_json(self, filename: str, obj: Any) -> Path:
        return self.put_text(filename, json.dumps(obj, indent=2) + "\n")

    def put_yaml(self, filename: str, obj: Any) -> Path:
        return self.put_text(filename, yaml.safe_dump(obj, sort_keys=False))

    def put_tensors(self, filename: str, tensors: dict[str, torch.Tensor]) -> Path:
        return self.put(
            filename,
            lambda p: save_file(
                {k: v.contiguous() for k, v in tensors.items()}, str(p), {"format": "pt"}
            ),
        )

    def put_directory(self, directory: Path) -> None:
        for path in sorted(directory.iterdir()):
            if path.is_file():
                self.put(path.name, lambda p, src=path: p.write_bytes(src.read_bytes()))


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


# ------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class ModelShape:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    vocab_size: int | None = None  # None: the tokenizer's size (small models)


SMALL = ModelShape(d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=32, d_mlp=128)
GEMMA2_2B = ModelShape(2304, 26, 8, 4, 256, 9216, 256000)
LLAMA32_1B = ModelShape(2048, 16, 32, 8, 64, 8192, 128256)


def _dims(shape: ModelShape, vocab: int) -> dict[str, int]:
    """The config fields that every architecture here names the same way."""
    return {
        "vocab_size": vocab,
        "hidden_size": shape.d_model,
        "intermediate_size": shape.d_mlp,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim,
    }


def _gemma2_config(shape: ModelShape, vocab: int) -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(
        **_dims(shape, vocab),
        query_pre_attn_scalar=shape.head_dim,
        max_position_embeddings=8192,
        sliding_window=4096,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        architectures=["Gemma2ForCausalLM"],
    )


def _llama_config(shape: ModelShape, vocab: int, bos: int, eos: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        **_dims(shape, vocab),
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        architectures=["LlamaForCausalLM"],
    )


def _qwen3_config(shape: ModelShape, vocab: int, eos: int) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        **_dims(shape, vocab),
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=eos,
        architectures=["Qwen3ForCausalLM"],
    )


def _gemma3_config(shape: ModelShape, vocab: int) -> Any:
    from transformers import Gemma3Config

    return Gemma3Config(
        text_config={
            **_dims(shape, vocab),
            "query_pre_attn_scalar": shape.head_dim,
            "sliding_window": 1024,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        mm_tokens_per_image=4,
        boi_token_index=255_999 if vocab > 256_000 else vocab - 3,
        eoi_token_index=256_000 if vocab > 256_000 else vocab - 2,
        image_token_index=262_144 if vocab > 262_144 else vocab - 1,
        bos_token_id=2,
        eos_token_id=[1, 106],
        pad_token_id=0,
        architectures=["Gemma3ForConditionalGeneration"],
    )


def _init_value(name: str, shape: torch.Size, gemma: bool, dtype: torch.dtype, gen) -> torch.Tensor:
    if len(shape) == 1 and "norm" in name:
        return torch.full(shape, 0.0 if gemma else 1.0, dtype=dtype)
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    return torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=gen)


def write_model(
    repo: CacheRepo, config: Any, dtype: torch.dtype, seed: int, shard_bytes: int = SHARD_BYTES
) -> int:
    """Write config.json, generation_config.json and random safetensors weights, shard by shard.

    Only one shard is ever in memory, so a full-size model is written in a few GB of RAM.

    Returns:
        The number of parameters written.
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(config)
    params = [(n, p.shape) for n, p in meta_model.named_parameters()]  # tied weights once
    del meta_model
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[tuple[str, torch.Size]]] = [[]]
    size = 0
    for name, shape in params:
        nbytes = int(np.prod(shape)) * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    gemma = config.model_type.startswith("gemma")
    gen = torch.Generator().manual_seed(seed)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    for filename, shard in zip(names, shards, strict=True):
        tensors = {name: _init_value(name, shape, gemma, dtype, gen) for name, shape in shard}
        repo.put_tensors(filename, tensors)
        weight_map.update(dict.fromkeys(tensors, filename))
        del tensors
    if len(shards) > 1:
        total = sum(int(np.prod(s)) * itemsize for _, s in params)
        repo.put_json(
            "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
        )
    config.dtype = str(dtype).removeprefix("torch.")
    repo.put_text("config.json", config.to_json_string())
    repo.put_text(
        "generation_config.json", GenerationConfig.from_model_config(config).to_json_string()
    )
    return sum(int(np.prod(s)) for _, s in params)


# ------------------------------------------------------------------------------ transcoders
def _threshold(width: int, target_l0: float) -> float:
    """Pre-activation cut so ~target_l0 of `width` N(0, 1) pre-activations exceed it."""
    return statistics.NormalDist().inv_cdf(1.0 - min(target_l0 / width, 0.5))


def _plt_tensors(
    d_model: int, width: int, gen, target_l0: float, skip: bool, jumprelu: bool
) -> dict[str, torch.Tensor]:
    cut = _threshold(width, target_l0)
    tensors = {
        "W_enc": torch.randn(width, d_model, generator=gen) / d_model**0.5,
        "W_dec": torch.randn(width, d_model, generator=gen) * 0.02,
        "b_enc": torch.zeros(width) if jumprelu else torch.full((width,), -cut),
        "b_dec": torch.zeros(d_model),
    }
    if jumprelu:
        tensors["activation_function.threshold"] = torch.full((width,), cut)
    if skip:
        tensors["W_skip"] = torch.randn(d_model, d_model, generator=gen) * 0.01
    return tensors


def _config_yaml(
    model_kind: str,
    input_hook: str,
    output_hook: str,
    scan: str,
    transcoders: list[str] | None = None,
) -> dict[str, Any]:
    """A transcoder config.yaml as circuit-tracer reads it; no `transcoders`: file discovery."""
    config: dict[str, Any] = {
        "model_kind": model_kind,
        "feature_input_hook": input_hook,
        "feature_output_hook": output_hook,
        "scan": scan,
    }
    if transcoders is not None:
        config["transcoders"] = transcoders
    return config


def write_gemmascope(
    hf_home: Path, n_layers: int, d_model: int, width: int, seed: int, target_l0: float
) -> None:
    """`gemma` = mwhanna/gemma-scope-transcoders -> google/gemma-scope-2b-pt-transcoders npz."""
    params = CacheRepo(hf_home, "google/gemma-scope-2b-pt-transcoders")
    gen = torch.Generator().manual_seed(seed)
    uris = []
    for layer in range(n_layers):
        path = f"layer_{layer}/width_16k/average_l0_{40 + (layer * 37) % 60}/params.npz"
        t = _plt_tensors(d_model, width, gen, target_l0, skip=False, jumprelu=True)
        arrays = {
            "W_enc": t["W_enc"].T.contiguous().numpy(),
            "W_dec": t["W_dec"].numpy(),
            "b_enc": t["b_enc"].numpy(),
            "b_dec": t["b_dec"].numpy(),
            "threshold": t["activation_function.threshold"].numpy(),
        }
        params.put(path, lambda p, a=arrays: _savez(p, a))
        uris.append(f"hf://google/gemma-scope-2b-pt-transcoders/{path}")
    CacheRepo(hf_home, "mwhanna/gemma-scope-transcoders").put_yaml(
        "config.yaml",
        _config_yaml("transcoder_set", "ln2.hook_normalized", "hook_mlp_out", "gemma-2-2b", uris),
    )


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as fh:
        np.savez(fh, **arrays)


def _write_layer_files(
    hf_home: Path,
    repo_id: str,
    n_layers: int,
    d_model: int,
    width: int,
    seed: int,
    target_l0: float,
    *,
    jumprelu: bool,
    scan: str,
    list_files: bool,
) -> None:
    """A per-layer transcoder set in the repository itself: `layer_{i}.safetensors` files.

    Args:
        list_files: name the files in config.yaml as hf:// URIs; False leaves circuit-tracer
            to discover them (`layer_*`), so both of its paths are exercised.
    """
    repo = CacheRepo(hf_home, repo_id)
    gen = torch.Generator().manual_seed(seed)
    names = [f"layer_{layer}.safetensors" for layer in range(n_layers)]
    for name in names:
        repo.put_tensors(
            name, _plt_tensors(d_model, width, gen, target_l0, skip=True, jumprelu=jumprelu)
        )
    uris = [f"hf://{repo_id}/{name}" for name in names] if list_files else None
    repo.put_yaml(
        "config.yaml", _config_yaml("transcoder_set", "mlp.hook_in", "mlp.hook_out", scan, uris)
    )


def write_llama_transcoders(
    hf_home: Path, n_layers: int, d_model: int, width: int, seed: int, target_l0: float
) -> None:
    """`llama` = mntss/transcoder-Llama-3.2-1B: layer_{i}.safetensors found by discovery."""
    _write_layer_files(
        hf_home,
        "mntss/transcoder-Llama-3.2-1B",
        n_layers,
        d_model,
        width,
        seed,
        target_l0,
        jumprelu=False,
        scan="llama-3-131k-relu",
        list_files=False,
    )


def write_qwen_transcoders(
    hf_home: Path, n_layers: int, d_model: int, width: int, seed: int, target_l0: float
) -> None:
    """mwhanna/qwen3-4b-transcoders: layer files listed as hf:// URIs of the same repository."""
    _write_layer_files(
        hf_home,
        "mwhanna/qwen3-4b-transcoders",
        n_layers,
        d_model,
        width,
        seed,
        target_l0,
        jumprelu=True,
        scan="qwen3-4b",
        list_files=True,
    )


def write_clt(
    hf_home: Path, n_layers: int, d_model: int, width: int, seed: int, target_l0: float
) -> None:
    """mntss/clt-gemma-2-2b-2.5M: a cross-layer transcoder in the repository itself."""
    repo = CacheRepo(hf_home, "mntss/clt-gemma-2-2b-2.5M")
    gen = torch.Generator().manual_seed(seed)
    cut = _threshold(width, target_l0)
    for layer in range(n_layers):
        repo.put_tensors(
            f"W_enc_{layer}.safetensors",
            {
                f"W_enc_{layer}": torch.randn(width, d_model, generator=gen) / d_model**0.5,
                f"b_enc_{layer}": torch.zeros(width),
                f"b_dec_{layer}": torch.zeros(d_model),
                f"threshold_{layer}": torch.full((width,), cut),
            },
        )
        repo.put_tensors(
            f"W_dec_{layer}.safetensors",
            {f"W_dec_{layer}": torch.randn(width, n_layers - layer, d_model, generator=gen) * 0.02},
        )
    repo.put_yaml(
        "config.yaml",
        _config_yaml("cross_layer_transcoder", "hook_resid_mid", "hook_mlp_out", "gemma-2-2b-clt"),
    )


GEMMA3_SUBFOLDER = "transcoder_all/width_262k_l0_small_affine"


def write_gemmascope2(
    hf_home: Path, n_layers: int, d_model: int, width: int, seed: int, target_l0: float
) -> None:
    """The gemma-scope-2-4b-it set: mwhanna config.yaml -> google params.safetensors files."""
    params = CacheRepo(hf_home, "google/gemma-scope-2-4b-it")
    gen = torch.Generator().manual_seed(seed)
    uris = []
    for layer in range(n_layers):
        path = f"transcoder_all/layer_{layer}_width_262k_l0_small_affine/params.safetensors"
        t = _plt_tensors(d_model, width, gen, target_l0, skip=True, jumprelu=True)
        params.put_tensors(
            path,
            {
                "w_enc": t["W_enc"].T.contiguous(),
                "w_dec": t["W_dec"],
                "b_enc": t["b_enc"],
                "b_dec": t["b_dec"],
                "threshold": t["activation_function.threshold"],
                "affine_skip_connection": t["W_skip"].T.contiguous(),
            },
        )
        uris.append(f"hf://google/gemma-scope-2-4b-it/{path}")
    CacheRepo(hf_home, "mwhanna/gemma-scope-2-4b-it").put_yaml(
        f"{GEMMA3_SUBFOLDER}/config.yaml",
        _config_yaml("transcoder_set", "mlp.hook_in", "hook_mlp_out", "gemma-3-4b-it", uris),
    )


# ------------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pair:
    """A model + transcoder set, as a server is started with them."""

    key: str
    model_id: str
    transcoder_set: str | None  # None: the model's default set
    scan: str
    has_chat_template: bool
    chat_prompt_prefix: str = ""  # what a plain prompt needs (gemma-3-it: the user turn)


PAIRS: dict[str, Pair] = {
    p.key: p
    for p in (
        Pair("gemma", "google/gemma-2-2b", None, "gemma-2-2b", True),
        Pair("llama", "meta-llama/Llama-3.2-1B", None, "llama-3-131k-relu", False),
        Pair("clt", "google/gemma-2-2b", "mntss/clt-gemma-2-2b-2.5M", "gemma-2-2b", True),
        Pair("qwen", "Qwen/Qwen3-4B", None, "qwen3-4b", True),
        Pair(
            "gemma3",
            "google/gemma-3-4b-it",
            None,
            "gemma-3-4b-it",
            True,
            chat_prompt_prefix="<start_of_turn>user\n",
        ),
    )
}


def _gemma2_model(hf_home: Path, shape: ModelShape, dtype: torch.dtype, seed: int) -> None:
    repo = CacheRepo(hf_home, "google/gemma-2-2b")
    tokenizer = gemma_tokenizer(
        {
            0: "<pad>",
            1: "<eos>",
            2: "<bos>",
            3: "<unk>",
            106: "<start_of_turn>",
            107: "<end_of_turn>",
        }
    )
    _save_tokenizer(repo, tokenizer)
    write_model(repo, _gemma2_config(shape, shape.vocab_size or len(tokenizer)), dtype, seed)


def _llama_model(hf_home: Path, shape: ModelShape, dtype: torch.dtype, seed: int) -> None:
    repo = CacheRepo(hf_home, "meta-llama/Llama-3.2-1B")
    specials = [
        RESERVED,
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    tokenizer = bpe_tokenizer(specials, 420, "<|begin_of_text|>", "<|end_of_text|>", None, None)
    _save_tokenizer(repo, tokenizer)
    config = _llama_config(
        shape, shape.vocab_size or len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id
    )
    write_model(repo, config, dtype, seed)


def _qwen3_model(hf_home: Path, shape: ModelShape, dtype: torch.dtype, seed: int) -> None:
    repo = CacheRepo(hf_home, "Qwen/Qwen3-4B")
    specials = [RESERVED, "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tokenizer = bpe_tokenizer(
        specials, 420, None, "<|im_end|>", "<|endoftext|>", QWEN_CHAT_TEMPLATE
    )
    _save_tokenizer(repo, tokenizer)
    config = _qwen3_config(shape, shape.vocab_size or len(tokenizer), tokenizer.eos_token_id)
    write_model(repo, config, dtype, seed)


def _gemma3_model(hf_home: Path, shape: ModelShape, dtype: torch.dtype, seed: int) -> None:
    repo = CacheRepo(hf_home, "google/gemma-3-4b-it")
    fixed = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 105: "<start_of_turn>"}
    fixed |= {106: "<end_of_turn>", 107: "\n", 2364: "user"}
    tokenizer = gemma_tokenizer(fixed)
    _save_tokenizer(repo, tokenizer)
    write_model(repo, _gemma3_config(shape, shape.vocab_size or len(tokenizer)), dtype, seed)


def build(
    hf_home: Path | str,
    pairs: Iterable[str] = tuple(PAIRS),
    *,
    full_size: bool = False,
    width: int = 64,
    target_l0: float = 8.0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, Pair]:
    """Write the models and transcoder sets of `pairs` into the hub cache under `hf_home`.

    Args:
        hf_home: the directory to use as HF_HOME (created if missing).
        pairs: keys of PAIRS.
        full_size: the real architectures (gemma and llama only; for TransformerLens).
        width: transcoder features per layer.
        target_l0: expected active features per token and layer on a unit-RMS input.
        dtype: dtype of the model weights (transcoders are float32, like the published ones).
        seed: all random values derive from it.

    Returns:
        The pairs written, by key.
    """
    hf_home = Path(hf_home)
    keys = list(dict.fromkeys(pairs))
    unknown = [k for k in keys if k not in PAIRS]
    if unknown:
        raise ValueError(f"unknown pairs {unknown}; choose from {sorted(PAIRS)}")
    if full_size and set(keys) - {"gemma", "llama", "clt"}:
        raise ValueError("full size is available for gemma-2-2b (gemma, clt) and llama only")
    tc = dict(width=width, seed=seed + 1, target_l0=target_l0)
    gemma_shape = GEMMA2_2B if full_size else SMALL
    done: set[str] = set()
    for key in keys:
        if key in ("gemma", "clt") and "gemma2" not in done:
            _gemma2_model(hf_home, gemma_shape, dtype, seed)
            done.add("gemma2")
        if key == "gemma":
            write_gemmascope(hf_home, gemma_shape.n_layers, gemma_shape.d_model, **tc)
        elif key == "clt":
            write_clt(hf_home, gemma_shape.n_layers, gemma_shape.d_model, **tc)
        elif key == "llama":
            shape = LLAMA32_1B if full_size else SMALL
            _llama_model(hf_home, shape, dtype, seed)
            write_llama_transcoders(hf_home, shape.n_layers, shape.d_model, **tc)
        elif key == "qwen":
            _qwen3_model(hf_home, SMALL, dtype, seed)
            write_qwen_transcoders(hf_home, SMALL.n_layers, SMALL.d_model, **tc)
        elif key == "gemma3":
            _gemma3_model(hf_home, SMALL, dtype, seed)
            write_gemmascope2(hf_home, SMALL.n_layers, SMALL.d_model, **tc)
    return {k: PAIRS[k] for k in keys}
