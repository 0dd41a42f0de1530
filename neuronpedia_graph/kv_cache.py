"""A key/value cache under circuit-tracer's `feature_intervention`, on both backends.

Why: `feature_intervention` runs the whole sequence, so generating token by token with it costs
O(n²) in the sequence length. Its interventions, activation reads and frozen attention are
hooks inside one forward pass, so instead of re-implementing them we keep calling it and only
make the forward pass it triggers read and extend a cache: each step then feeds just the new
tokens. The cache is attached with plain torch hooks for the duration of a `with` block and
removed on exit, whatever happens:

- nnsight: circuit-tracer calls the Hugging Face model's `forward` directly (nnsight bypasses
  module hooks on the root), so the hooks sit on its decoder body (`hf_model.model`), the module
  that derives positions and the causal mask from `past_key_values`. A first call gets no cache
  and the body creates the one its architecture needs (sliding windows included); the output's
  `past_key_values` is kept for the next step.
- TransformerLens: the ReplacementModel is the HookedTransformer; its forward takes
  `past_kv_cache` and an explicit all-ones attention mask (without it TransformerLens masks
  tokens equal to the pad id).

With frozen attention circuit-tracer runs one unsteered pass to record the patterns before the
intervened one. Every forward pass of a step before the first cache exists gets a fresh cache,
and the last one (the intervened pass) is kept; later steps are single passes that extend it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeAlias

import torch

from neuronpedia_graph.models.protocols import (
    ReplacementModelLike,
    as_transformerlens,
    backend_model,
)

if TYPE_CHECKING:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformers.cache_utils import Cache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    #: nnsight: the Hugging Face cache its decoder body builds; TransformerLens: its own.
    PastKeyValues: TypeAlias = "Cache | TransformerLensKeyValueCache"

#: A forward hook's positional and keyword arguments: the hooked forward's own, which we pass
#: through (a Hugging Face decoder body's or a HookedTransformer's; torch does not type them).
HookArgs: TypeAlias = tuple[object, ...]
HookKwargs: TypeAlias = dict[str, object]


class KVCache:
    """The cache of one generation: attach it around each `feature_intervention` step.

    Usage: `with cache.attached(): model.feature_intervention(new_tokens, ...)`, then
    `cache.advance()` once the step's output is accepted. Interventions must be given in the
    coordinates of the tokens fed (position 0 is the first new token).
    """

    def __init__(self, model: ReplacementModelLike) -> None:
        self._model = model
        self._instance = backend_model(model)  # its own class: the hooks reach into its modules
        self._past: PastKeyValues | None = None  # what the next step extends (None at first)
        self._latest: PastKeyValues | None = None  # the cache the current step produced

    @property
    def length(self) -> int:
        """Tokens held in the cache (0 before the first step)."""
        from transformers.cache_utils import Cache

        if self._past is None:
            return 0
        if isinstance(self._past, Cache):
            return int(self._past.get_seq_length())
        return int(self._past[0].past_keys.shape[1])

    def advance(self) -> None:
        """Accept the current step: the next step extends the cache it produced."""
        if self._latest is None:
            raise RuntimeError("the step ran no forward pass through the key/value cache")
        self._past, self._latest = self._latest, None

    @contextmanager
    def attached(self) -> Iterator[None]:
        """Make the model's forward passes read and extend this cache inside the block."""
        model = self._instance
        if model.backend == "nnsight":
            # nnsight's `_model` is the Hugging Face model; nnsight has no types.
            module = getattr(model._model, "model", None)
            if not isinstance(module, torch.nn.Module):
                raise RuntimeError("cannot find the decoder body (`model`) of the nnsight model")
            handles = [
                module.register_forward_pre_hook(self._nnsight_inputs, with_kwargs=True),
                module.register_forward_hook(self._nnsight_output, with_kwargs=True),
            ]
        else:
            handles = [model.register_forward_pre_hook(self._tl_inputs, with_kwargs=True)]
        # circuit-tracer zeroes the activations it reads at the BOS positions (`zero_positions`,
        # counted from the start of what it is given); shift them to the tokens fed, or every
        # new token would read as inactive and an intervention's delta would be off.
        zero_positions: slice = model.zero_positions
        start = self.length
        first = zero_positions.start or 0
        model.zero_positions = slice(max(first - start, 0), max(zero_positions.stop - start, 0))
        try:
            yield
        finally:
            model.zero_positions = zero_positions
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------------------ hooks
    def _check_single_pass(self) -> None:
        # A second pass in one step would append the same tokens to the cache twice.
        if self._past is not None and self._latest is not None:
            raise RuntimeError("a cached step ran more than one forward pass")

    def _nnsight_inputs(
        self, _module: torch.nn.Module, args: HookArgs, kwargs: HookKwargs
    ) -> tuple[HookArgs, HookKwargs]:
        self._check_single_pass()
        # Batch of one, never padded: no mask needed, and positions follow from the cache.
        kwargs.update(past_key_values=self._past, use_cache=True, attention_mask=None)
        kwargs.pop("cache_position", None)
        kwargs.pop("position_ids", None)
        return args, kwargs

    def _nnsight_output(
        self,
        _module: torch.nn.Module,
        _args: HookArgs,
        _kwargs: HookKwargs,
        output: BaseModelOutputWithPast,
    ) -> None:
        self._latest = output.past_key_values

    def _tl_inputs(
        self, _module: torch.nn.Module, args: HookArgs, kwargs: HookKwargs
    ) -> tuple[HookArgs, HookKwargs]:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        self._check_single_pass()
        model = as_transformerlens(self._model)
        if model is None:
            raise RuntimeError("the TransformerLens hook is attached to an nnsight model")
        tokens = args[0] if args else kwargs["input"]
        if not isinstance(tokens, torch.Tensor):
            raise RuntimeError(f"TransformerLens was given {type(tokens).__name__}, not token ids")
        cache = self._past
        if cache is None:
            cache = TransformerLensKeyValueCache.init_cache(
                model.cfg, model.cfg.device, batch_size=1
            )
        self._latest = cache
        n_new = tokens.shape[-1]
        kwargs.update(
            past_kv_cache=cache,
            attention_mask=torch.ones((1, n_new), dtype=torch.long, device=tokens.device),
        )
        return args, kwargs
