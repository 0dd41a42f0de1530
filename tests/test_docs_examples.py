"""Every curl example in the README and docs/ works as written, against the real demo server.

The examples are read from the Markdown files, never copied here. A ```bash block is run when it
calls curl and every URL it names is the demo server's (`http://localhost:5004`, rewritten to the
test server's address); blocks for other hosts (a proxy, a GPU box) are deployment recipes tested
elsewhere. Each block runs as one bash script (`set -euo pipefail`) in a directory whose `.env`
holds the server's SECRET, as after `make run`, with `$SECRET` set as the README's first block
sets it for the blocks after it. It must exit 0 (curl failing, or `python3 -c` failing on an
error reply, fails it). Comment lines that end a block (`# ...` after its last command) are its
expected output: the script's last output lines must equal them.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LIVE_SETTINGS, REPO, SECRET, LiveServer, start_server

DEMO = "http://localhost:5004"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
URL = re.compile(r"https?://[^\s'\"]+")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def examples() -> list[tuple[str, str]]:
    found = []
    for path in markdown_files():
        for number, match in enumerate(BLOCK.finditer(path.read_text()), 1):
            block = match.group(1)
            urls = URL.findall(block)
            if "curl " in block and urls and all(u.startswith(DEMO) for u in urls):
                found.append((f"{path.relative_to(REPO)}#{number}", block))
    return found


def expected_output(block: str) -> list[str]:
    lines = block.rstrip("\n").splitlines()
    tail: list[str] = []
    while lines and lines[-1].startswith("# "):
        tail.insert(0, lines.pop()[2:])
    return tail


def test_the_readme_has_curl_examples_for_the_demo_server():
    names = [name for name, _ in examples()]
    assert sum(name.startswith("README.md") for name in names) >= 2, names


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The demo server as `make run` starts it: the store on (GRAPH_STORE_BYTES's default),
    unlike the shared `live_server`, whose graphs must never be reused between tests."""
    workdir = tmp_path_factory.mktemp("docs")
    settings = {k: v for k, v in LIVE_SETTINGS.items() if k != "GRAPH_STORE_BYTES"}
    with start_server(workdir, settings, secret=SECRET) as server:
        yield server


@pytest.mark.parametrize(("name", "block"), examples(), ids=[n for n, _ in examples()])
def test_curl_example_works_as_written(name, block, docs_server, tmp_path):
    live_server = docs_server
    (tmp_path / ".env").write_text(f"SECRET={SECRET}\n")
    script = "set -euo pipefail\n" + block.replace(DEMO, live_server.base)
    env = {**os.environ, "SECRET": SECRET}
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    if expected := expected_output(block):
        got = result.stdout.rstrip("\n").splitlines()[-len(expected) :]
        assert got == expected, f"{name}: expected {expected}, got {got}"
