"""Write a fabricated Hugging Face hub cache (random weights under the real repository ids).

    .venv/bin/python -m bench.hubcache /tmp/hf                       # every pair, small shapes
    .venv/bin/python -m bench.hubcache /tmp/hf --pairs gemma,llama --full-size --width 512
    HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 SECRET=x .venv/bin/neuronpedia-graph google/gemma-2-2b

What is written, and every assumption about the upstream repositories: testkit/hubcache/.
Full size streams the weights to disk shard by shard (bfloat16 by default), so gemma-2-2b
(5.2 GB) is written in a few GB of RAM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from testkit.hubcache import PAIRS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_home", type=Path, help="directory to use as HF_HOME")
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma list of {list(PAIRS)}")
    parser.add_argument(
        "--full-size", action="store_true", help="real architectures (gemma, llama)"
    )
    parser.add_argument("--width", type=int, default=None, help="transcoder features per layer")
    parser.add_argument("--target-l0", type=float, default=None, help="active features per token")
    parser.add_argument("--dtype", default=None, help="model weights: float32 | bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from testkit.hubcache import build

    dtype_name = args.dtype or ("bfloat16" if args.full_size else "float32")
    started = time.perf_counter()
    pairs = build(
        args.hf_home,
        [p.strip() for p in args.pairs.split(",") if p.strip()],
        full_size=args.full_size,
        width=args.width or (512 if args.full_size else 64),
        target_l0=args.target_l0 or (64.0 if args.full_size else 8.0),
        dtype=getattr(torch, dtype_name),
        seed=args.seed,
    )
    seconds = time.perf_counter() - started
    for pair in pairs.values():
        tc = f" --transcoder-set {pair.transcoder_set}" if pair.transcoder_set else ""
        print(f"{pair.key:7s} {pair.model_id}{tc}  (scan {pair.scan})")
    print(f"hf_home={args.hf_home} pairs={','.join(pairs)} seconds={seconds:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
