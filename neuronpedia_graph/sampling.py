"""The next-token rule of `/steer`: the original Neuronpedia server's, token for token.

The original sampled both its runs through TransformerLens's `sample_logits` after
`torch.manual_seed(seed)`, so the same request must give the same continuation here:

- temperature 0: the argmax of the raw logits; the frequency penalty is ignored;
- otherwise the logits are divided by the temperature first, then `freq_penalty` times the
  count of each token in the whole sequence so far (prompt, BOS included, and the tokens
  generated) is subtracted, only when the penalty is positive; the result, in float32, is
  normalised and one token drawn with `torch.multinomial`.

The arithmetic runs in the logits' own dtype and on their device, as there, so bfloat16 models
round as the original did. The draw uses a `torch.Generator` of that device seeded with the
request's seed rather than the global generator: on CPU its stream is the one
`torch.manual_seed(seed)` starts, so the draws are the original's, and the server's global
random state is left alone.
"""

from __future__ import annotations

import torch


def new_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on `device` in the state `torch.manual_seed(seed)` leaves that device's."""
    return torch.Generator(device=device).manual_seed(seed)


def next_token(
    logits: torch.Tensor,
    sequence: torch.Tensor,
    temperature: float,
    freq_penalty: float,
    generator: torch.Generator,
) -> int:
    """The token to append after `sequence`, given the model's next-token `logits`.

    Args:
        logits: (vocab,) next-token logits, in the model's dtype, on the model's device.
        sequence: (n,) every token id so far, prompt included, on the same device.
        temperature: 0 for greedy decoding, else the softmax temperature.
        freq_penalty: subtracted per earlier occurrence, after the temperature; only if > 0.
        generator: the random stream (see `new_generator`), on the logits' device.

    Returns:
        The chosen token id.
    """
    if not bool(torch.isfinite(logits).all()):
        # Never draw from NaN or infinity (a model fault); finite logits are left untouched so
        # the stream stays the original's.
        logits = torch.nan_to_num(logits.float(), nan=-torch.inf).clamp(-1e30, 1e30)
    if temperature == 0:
        return int(logits.argmax())
    scores = logits / temperature
    if freq_penalty > 0:
        counts = torch.bincount(sequence, minlength=scores.shape[-1])[: scores.shape[-1]]
        scores = (scores - freq_penalty * counts).to(scores.dtype)
    scores = scores.to(torch.float32)
    probs = torch.softmax(scores - scores.logsumexp(-1, keepdim=True), dim=-1)
    return int(torch.multinomial(probs, 1, replacement=True, generator=generator))
