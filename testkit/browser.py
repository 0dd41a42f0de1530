"""Headless Debian Chromium for the viewer's tests and render benchmark, plus synthetic graphs.

Playwright's own browser download needs the internet, so both drive the system `chromium`
package (`make browser` installs it) through Playwright's `executable_path`. The flags keep
Chromium from phoning home, so "no request leaves the server" can be checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class BrowserMissing(RuntimeError):
    """Debian's chromium is not installed: run `make browser` (apt-get install chromium)."""


def launch_chromium(playwright: Any) -> Any:
    """Start headless Chromium from the system package.

    Args:
        playwright: the object `playwright.sync_api.sync_playwright().start()` returns.

    Returns:
        A Playwright Browser.
    """
    if not CHROMIUM.exists():
        raise BrowserMissing(
            f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)"
        )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def synthetic_graph_document(
    n_nodes: int, n_links: int, *, n_layers: int = 26, n_pos: int = 64, seed: int = 0
) -> dict[str, Any]:
    """A graph document in this server's format (circuit-tracer's) with random contents.

    The node mix follows real graphs (one embedding per position, 10 logits at the last
    position, some error nodes, the rest transcoder features) and every link goes from a lower
    layer at an earlier or equal position, as attribution produces, so layout and edge routing
    work as hard as on a real graph of the same size.

    Args:
        n_nodes: total nodes (at least n_pos + 10 + 1).
        n_links: distinct links (must fit the causally allowed pairs).
        n_layers: transcoder layers; logits sit at layer n_layers + 1.
        n_pos: prompt positions.
        seed: random seed; the same arguments give the same document.

    Returns:
        The document as a dict, ready for orjson.dumps.
    """
    rng = np.random.default_rng(seed)
    n_logits = 10
    n_errors = max(1, (n_nodes - n_pos - n_logits) // 10)
    n_features = n_nodes - n_pos - n_logits - n_errors
    if n_features < 1:
        raise ValueError("n_nodes is too small for the fixed embeddings and logits")
    nodes: list[dict[str, Any]] = []
    rows: list[int] = []  # 0 = embedding, layer + 1, n_layers + 1 = logit
    positions: list[int] = []

    def add(node_id: str, feature: int, layer: str, pos: int, kind: str, row: int, **extra: Any):
        nodes.append(
            {
                "node_id": node_id,
                "feature": feature,
                "layer": layer,
                "ctx_idx": pos,
                "feature_type": kind,
                "token_prob": extra.get("token_prob", 0.0),
                "is_target_logit": extra.get("is_target_logit", False),
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "jsNodeId": node_id,
                "clerp": extra.get("clerp", ""),
                "influence": extra.get("influence"),
                "activation": extra.get("activation"),
            }
        )
        rows.append(row)
        positions.append(pos)

    for pos in range(n_pos):
        add(f"E_{1000 + pos}_{pos}", pos, "E", pos, "embedding", 0, influence=rng.uniform(0, 0.8))
    seen: set[tuple[int, int, int]] = set()
    while len(seen) < n_features:
        layer, pos, feat = (
            int(rng.integers(n_layers)),
            int(rng.integers(n_pos)),
            int(rng.integers(16384)),
        )
        if (layer, pos, feat) in seen:
            continue
        seen.add((layer, pos, feat))
        add(
            f"{layer}_{feat}_{pos}",
            (layer + feat) * (layer + feat + 1) // 2 + feat,
            str(layer),
            pos,
            "cross layer transcoder",
            layer + 1,
            influence=float(rng.uniform(0, 0.8)),
            activation=float(rng.gamma(2.0, 2.0)),
            clerp=f"synthetic feature {feat}",
        )
    cells = rng.choice(n_layers * n_pos, size=n_errors, replace=False)
    for cell in cells.tolist():
        layer, pos = divmod(cell, n_pos)
        add(
            f"0_{layer}_{pos}",
            -1,
            str(layer),
            pos,
            "mlp reconstruction error",
            layer + 1,
            influence=float(rng.uniform(0, 0.8)),
        )
    probs = np.sort(rng.dirichlet(np.ones(n_logits)))[::-1]
    for rank, prob in enumerate(probs.tolist()):
        vocab = 5000 + rank
        add(
            f"{n_layers + 1}_{vocab}_{n_pos - 1}",
            vocab,
            str(n_layers + 1),
            n_pos - 1,
            "logit",
            n_layers + 1,
            token_prob=prob,
            is_target_logit=rank == 0,
            clerp=f'Output " tok{vocab}" (p={prob:.3f})',
        )

    row = np.array(rows)
    pos = np.array(positions)
    ids = [n["node_id"] for n in nodes]
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < n_links:
        src = rng.integers(len(nodes), size=2 * n_links)
        dst = rng.integers(len(nodes), size=2 * n_links)
        ok = (row[src] < row[dst]) & (pos[src] <= pos[dst])
        for s, t in zip(src[ok].tolist(), dst[ok].tolist(), strict=True):
            pairs.add((s, t))
            if len(pairs) == n_links:
                break
    weights = rng.lognormal(0.0, 1.5, size=n_links) * np.where(rng.random(n_links) < 0.7, 1, -1)
    links = [
        {"source": ids[s], "target": ids[t], "weight": float(w)}
        for (s, t), w in zip(sorted(pairs), weights.tolist(), strict=True)
    ]
    return {
        "metadata": {
            "slug": f"synthetic-{n_nodes}-{n_links}",
            "scan": "synthetic",
            "transcoder_list": [],
            "prompt_tokens": ["<bos>"] + [f" tok{i}" for i in range(1, n_pos)],
            "prompt": "".join(f" tok{i}" for i in range(1, n_pos)),
            "node_threshold": 0.8,
            "schema_version": 1,
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }
