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
   `<start_of_turn>` 106; gemma-3 `<start_of_turn>` 105, "\n" 107, "user" 2364, because
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

from testkit.hubcache.layout import CacheRepo, revision_for
from testkit.hubcache.models import GEMMA2_2B, LLAMA32_1B, SMALL, ModelShape, write_model
from testkit.hubcache.pairs import PAIRS, Pair, build
from testkit.hubcache.tokenizers import CORPUS, bpe_tokenizer, gemma_tokenizer

__all__ = [
    "CORPUS",
    "GEMMA2_2B",
    "LLAMA32_1B",
    "PAIRS",
    "SMALL",
    "CacheRepo",
    "ModelShape",
    "Pair",
    "bpe_tokenizer",
    "build",
    "gemma_tokenizer",
    "revision_for",
    "write_model",
]
