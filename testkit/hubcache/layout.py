"""The Hub cache layout: blobs, snapshots at a fixed revision per repository, refs/main.

See the package docstring for what each repository holds and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

SHARD_BYTES = 2 * 1024**3


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
