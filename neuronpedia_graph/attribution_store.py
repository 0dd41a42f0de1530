"""Unpruned attributions on disk, so a graph can be re-pruned or reused without attributing.

Each finished graph keeps `GRAPH_STORE_DIR/jobs/<id>.attr.safetensors`, next to its job
record. circuit-tracer's own `Graph.to_pt` is a pickle (`from_pt` loads it with
`weights_only=False`, unsafe on a shared disk), so this is safetensors: tensors plus string
metadata, nothing executable.

Only what cannot be recomputed is kept. `attribute()` returns a dense float32 N×N adjacency
whose error and token rows are all zero, so the file holds the feature rows and the logit
rows (`(F + L) × N` float32) and the node metadata the document needs; the zero rows are
rebuilt on load. The model's config and scan come from the loaded model, so a file is only
ever read back by a server with the same model and transcoders (the reuse key says which).

Every tensor's bytes are covered by a CRC-32 in the metadata: safetensors itself notices a
truncated file but not a flipped byte, and a corrupt attribution must be refused, never pruned.

The file also holds its reuse key: the model, transcoders, prompt tokens and every attribution
parameter, which is all that decides the adjacency. Beside it, `<id>.attr-request.json` holds
the request of that id (never its `signed_url`): a reused graph is a hard link to the file it
reuses, with a request of its own (its slug, user and thresholds). The store is capped at
GRAPH_STORE_BYTES; the least recently used files (by modification time, refreshed on every
read) go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from circuit_tracer.attribution.targets import LogitTarget
from circuit_tracer.graph import Graph
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from neuronpedia_graph.errors import ServiceError
from neuronpedia_graph.jobs.models import ID_PATTERN
from neuronpedia_graph.json_types import JSONObject

if TYPE_CHECKING:
    from neuronpedia_graph.models.protocols import ModelConfig

logger = logging.getLogger(__name__)

SUFFIX = ".attr.safetensors"
REQUEST_SUFFIX = ".attr-request.json"
FORMAT = "npg-attribution-1"
# Request fields that do not change the attribution: thresholds (pruning) and delivery.
NOT_IN_KEY = frozenset(
    {"node_threshold", "edge_threshold", "signed_url", "compress", "slug_identifier", "user_id"}
)


class StoredGraphNotFound(ServiceError):
    status = 404

    def __init__(self) -> None:
        super().__init__("No stored attribution for this graph id (never stored, or evicted)")


class StoredGraphUnreadable(ServiceError):
    """The file is corrupt or truncated: refused (and removed), never pruned."""

    status = 410

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"The stored attribution of this graph is unreadable ({reason}); it was removed. "
            "Generate the graph again."
        )


def reuse_key(model_id: str, transcoders: str, ids: list[int], request: JSONObject) -> str:
    """A digest of everything that decides the unpruned attribution."""
    params = {k: v for k, v in sorted(request.items()) if k not in NOT_IN_KEY}
    for field in ("prompt", "messages", "model_id"):
        params.pop(field, None)  # the tokens and the loaded model's id below are what count
    canonical = json.dumps(
        {"model": model_id, "transcoders": transcoders, "ids": ids, "params": params},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Packed:
    """An attribution's stored tensors and metadata, in host memory."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def adjacency_bytes(self) -> int:
        return sum(self.tensors[k].nbytes for k in ("feature_rows", "logit_rows"))


def _crc(tensors: dict[str, torch.Tensor]) -> str:
    crc = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous().reshape(-1)
        crc = zlib.crc32(t.view(torch.uint8).numpy().data, crc)
    return f"{crc:08x}"


class AttributionStore:
    """The attribution files of one server. Directories are made on first write."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.dir = Path(root) / "jobs"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {}  # file name -> reuse key (see `find`)

    @property
    def enabled(self) -> bool:
        """GRAPH_STORE_BYTES=0 keeps nothing, so nothing is re-pruned or reused."""
        return self.max_bytes > 0

    def path(self, graph_id: str) -> Path:
        if not ID_PATTERN.match(graph_id):
            raise StoredGraphNotFound()
        return self.dir / f"{graph_id}{SUFFIX}"

    # ------------------------------------------------------------------ write
    @staticmethod
    def pack(graph: Graph) -> Packed:
        """The part of `graph` worth keeping, copied to host memory (while the model is held,
        so the accelerator's copy can be freed before the file is written)."""
        n_features = len(graph.selected_features)
        n_logits = len(graph.logit_targets)
        adjacency = graph.adjacency_matrix
        tensors = {
            "feature_rows": adjacency[:n_features].float().cpu().contiguous(),
            "logit_rows": adjacency[adjacency.shape[0] - n_logits :].float().cpu().contiguous(),
            "active_features": graph.active_features.cpu().contiguous(),
            "selected_features": graph.selected_features.cpu().contiguous(),
            "activation_values": graph.activation_values.cpu().contiguous(),
            "logit_probabilities": graph.logit_probabilities.cpu().contiguous(),
            "input_tokens": graph.input_tokens.cpu().contiguous(),
        }
        metadata = {
            "format": FORMAT,
            "input_string": graph.input_string,
            "vocab_size": str(graph.vocab_size),
            "n_nodes": str(adjacency.shape[0]),
            "logit_targets": json.dumps(
                [[t.token_str, int(t.vocab_idx)] for t in graph.logit_targets]
            ),
        }
        return Packed(tensors, metadata)

    def save(self, graph_id: str, key: str, request: JSONObject, packed: Packed) -> int:
        """Keep a packed attribution under `graph_id`; returns the file's size in bytes."""
        tensors = packed.tensors
        metadata = {
            **packed.metadata,
            "key": key,
            "crc32": _crc(tensors),
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.path(graph_id)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-attr-")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._write_request(graph_id, request)
        size = target.stat().st_size
        self.evict(keep=target)
        return size

    def _write_request(self, graph_id: str, request: JSONObject) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-attr-")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(request, out)
            os.replace(tmp, self.request_path(graph_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def request_path(self, graph_id: str) -> Path:
        return self.path(graph_id).with_name(f"{graph_id}{REQUEST_SUFFIX}")

    def link(self, source_id: str, graph_id: str, request: JSONObject) -> None:
        """Make `graph_id` name the same stored attribution as `source_id` (a reused graph),
        with its own request."""
        source, target = self.path(source_id), self.path(graph_id)
        self._write_request(graph_id, request)
        with contextlib.suppress(FileExistsError):
            os.link(source, target)

    def evict(self, keep: Path | None = None) -> list[str]:
        """Remove least recently used files until the store fits GRAPH_STORE_BYTES."""
        removed: list[str] = []
        with self._lock:
            entries = []
            for path in self.dir.glob(f"*{SUFFIX}"):
                with contextlib.suppress(OSError):
                    st = path.stat()
                    entries.append((st.st_mtime_ns, path, st.st_ino, st.st_size))
            # Hard links (reused graphs) share their bytes: count each file once.
            sizes = {ino: size for _, _, ino, size in entries}
            total = sum(sizes.values())
            links: dict[int, int] = {}
            for _, _, ino, _ in entries:
                links[ino] = links.get(ino, 0) + 1
            for _, path, ino, size in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                if path == keep:
                    continue
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path.name.removesuffix(SUFFIX))
                    path.with_name(removed[-1] + REQUEST_SUFFIX).unlink(missing_ok=True)
                    links[ino] -= 1
                    if links[ino] == 0:
                        total -= size
        for name in removed:
            logger.info("evicted stored attribution %s (GRAPH_STORE_BYTES)", name)
        return removed

    # ------------------------------------------------------------------ read
    def find(self, key: str) -> str | None:
        """The id of a stored attribution with this reuse key, if any (most recent first).

        A file's key never changes (ids are never rewritten), so each header is read once and
        remembered; an unreadable one is removed (a truncated file can never be read again).
        """
        if not self.dir.is_dir():
            return None
        candidates = []
        for path in self.dir.glob(f"*{SUFFIX}"):
            with contextlib.suppress(OSError):
                candidates.append((path.stat().st_mtime_ns, path))
        present = {path.name for _, path in candidates}
        with self._lock:
            for name in set(self._keys) - present:
                del self._keys[name]
        for _, path in sorted(candidates, reverse=True):
            known = self._keys.get(path.name)
            if known is None:
                try:
                    with safe_open(path, framework="pt") as f:
                        known = (f.metadata() or {}).get("key", "")
                except (OSError, SafetensorError, ValueError) as exc:
                    self._drop(path, exc)
                    continue
                with self._lock:
                    self._keys[path.name] = known
            if known == key:
                return path.name.removesuffix(SUFFIX)
        return None

    def request(self, graph_id: str) -> JSONObject:
        """The stored request (without signed_url) of a graph."""
        if not self.path(graph_id).exists():
            raise StoredGraphNotFound()
        try:
            request = json.loads(self.request_path(graph_id).read_bytes())
            if not isinstance(request, dict):
                raise ValueError("not an object")
            return request
        except (OSError, ValueError) as exc:
            self._drop(self.path(graph_id), exc)
            raise StoredGraphUnreadable("its request is missing or unreadable") from None

    def load(
        self, graph_id: str, cfg: ModelConfig, scan: str | list[str] | None, device: torch.device
    ) -> Graph:
        """The unpruned graph, rebuilt exactly; refuses a file that fails its checks."""
        path = self.path(graph_id)
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(path)
        except FileNotFoundError:
            raise StoredGraphNotFound() from None
        except (OSError, SafetensorError, ValueError) as exc:
            self._drop(path, exc)
            raise StoredGraphUnreadable("truncated or not a safetensors file") from None
        if metadata.get("format") != FORMAT or metadata.get("crc32") != _crc(tensors):
            self._drop(path, "checksum mismatch")
            raise StoredGraphUnreadable("checksum mismatch")
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        try:
            n_nodes = int(metadata["n_nodes"])
            feature_rows, logit_rows = tensors["feature_rows"], tensors["logit_rows"]
            adjacency = torch.zeros((n_nodes, n_nodes), dtype=torch.float32, device=device)
            adjacency[: feature_rows.shape[0]] = feature_rows.to(device)
            adjacency[n_nodes - logit_rows.shape[0] :] = logit_rows.to(device)
            targets = [LogitTarget(s, int(i)) for s, i in json.loads(metadata["logit_targets"])]
            return Graph(
                input_string=metadata["input_string"],
                input_tokens=tensors["input_tokens"],
                active_features=tensors["active_features"],
                adjacency_matrix=adjacency,
                cfg=cfg,
                selected_features=tensors["selected_features"],
                activation_values=tensors["activation_values"],
                logit_targets=targets,
                logit_probabilities=tensors["logit_probabilities"],
                scan=scan,
                vocab_size=int(metadata["vocab_size"]),
            )
        except (KeyError, ValueError, RuntimeError) as exc:
            self._drop(path, exc)
            raise StoredGraphUnreadable("inconsistent contents") from None

    def _drop(self, path: Path, why: object) -> None:
        logger.warning("removing unreadable stored attribution %s: %s", path.name, why)
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.with_name(path.name.removesuffix(SUFFIX) + REQUEST_SUFFIX).unlink()
