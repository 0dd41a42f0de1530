"""Small helpers several test files share (fixtures stay in conftest.py).

One of each: the "still serving" check that follows every failure, the finder of the feature a
graph says drives its top logit, the CLI runner, and the creation-time stripper that makes two
runs of one graph request comparable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests

from tests.conftest import AUTH, REPO, LiveServer

__all__ = [
    "AUTH",
    "assert_still_serving",
    "run_cli",
    "run_python",
    "strongest_feature_into_target",
    "without_create_time",
]

# "1 2 3 4" -> " 5": the demo model counts (p > 0.9), so a wrong answer is a broken model too.
_PROBE_PROMPT = "1 2 3 4"
_PROBE_ANSWER = " 5"


def assert_still_serving(target: Any, headers: Mapping[str, str] = AUTH) -> None:
    """The server answers a forward pass correctly after whatever just happened.

    `target` is a Flask test client (in process) or a `LiveServer` (real gunicorn over HTTP).
    """
    body = {"prompt": _PROBE_PROMPT}
    if isinstance(target, LiveServer):
        url = target.url("/forward-pass")
        res = requests.post(url, json=body, headers=dict(headers), timeout=120)
        status, reply = res.status_code, res.json()
    else:
        res = target.post("/forward-pass", json=body, headers=dict(headers))
        status, reply = res.status_code, res.get_json()
    assert status == 200, reply
    assert reply["salient_logits"][0]["token"] == _PROBE_ANSWER, reply


def strongest_feature_into_target(doc: Mapping[str, Any]) -> tuple[int, int, int]:
    """(layer, index, position) of the feature node with the strongest direct edge into the
    graph's target logit: on the demo's Paris graph, the feature that says " France"."""
    target = next(n["node_id"] for n in doc["nodes"] if n["is_target_logit"])
    features = {n["node_id"] for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"}
    best = max(
        (lk for lk in doc["links"] if lk["target"] == target and lk["source"] in features),
        key=lambda lk: lk["weight"],
    )
    layer, index, position = map(int, best["source"].split("_"))
    return layer, index, position


def run_python(
    *args: str,
    env: Mapping[str, str] | None = None,
    unset: Iterable[str] = ("SECRET", "HF_TOKEN", "MODEL_ID"),
    inherit: bool = True,
    cwd: Path = REPO,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in a fresh process: this environment without `unset`, plus `env` (with
    `inherit=False`, `env` alone)."""
    dropped = set(unset)
    full = {k: v for k, v in os.environ.items() if inherit and k not in dropped}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def run_cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """The real command line, `python -m neuronpedia_graph ARGS` (keywords as `run_python`)."""
    return run_python("-m", "neuronpedia_graph", *args, **kwargs)


Doc = TypeVar("Doc", bytes, dict)
_CREATE_TIME = re.compile(rb'"create_time_ms":\d+')


def without_create_time(doc: Doc) -> Doc:
    """Two runs of one graph request differ only in their creation time: drop it.

    A parsed document loses `metadata.info.create_time_ms` (in place, and returned); raw JSON
    bytes lose the field's value, so the rest can still be compared byte for byte.
    """
    if isinstance(doc, bytes):
        stripped, count = _CREATE_TIME.subn(b"", doc)
        assert count == 1, "a graph document has exactly one create_time_ms"
        return stripped
    doc["metadata"]["info"].pop("create_time_ms")
    return doc
