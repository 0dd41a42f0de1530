"""docs/jobs.md's curl session runs as written against a real server (only the port differs)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import LIVE_SETTINGS, REPO, SECRET, start_server

DOC = REPO / "docs" / "jobs.md"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


@pytest.mark.skipif(not __import__("shutil").which("curl"), reason="curl is not installed")
def test_the_curl_session_in_docs_jobs_works_as_written(tmp_path):
    blocks = bash_blocks(DOC.read_text())
    assert len(blocks) == 1
    workdir = tmp_path / "client"
    workdir.mkdir()
    (workdir / ".env").write_text(f"SECRET={SECRET}\n")
    settings = {**LIVE_SETTINGS, "GRAPH_STORE_DIR": str(tmp_path / "store")}
    with start_server(tmp_path / "server", settings, secret=SECRET) as server:
        script = blocks[0].replace("http://localhost:5004", server.base)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"^job [A-Za-z0-9_-]{24}$", out, flags=re.M), out
    assert "event: state" in out and '"status":"done"' in out
    assert '{"metadata"' in out  # the document's first bytes
    assert '"jobs":[' in out and '"error":"Job already finished (done)"' in out
    assert (workdir / "paris-job.json").stat().st_size > 1000
