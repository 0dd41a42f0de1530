"""`python -m bench.gpu --tiny`: the CPU smoke test of the GPU benchmark and of its time budget.

Both run the real script (fabricated tiny cache, bare library in a child, real server) as CI
would; the budget figures in the asserts are generous guards, not timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HUGE = 10**9  # max_feature_nodes that no budget can fit on the tiny model's timings


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    command = [sys.executable, "-m", "bench.gpu", "--tiny"]
    command += ["--workdir", str(tmp_path), "--out", str(tmp_path / "out"), *args]
    proc = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    last = proc.stdout.strip().splitlines()[-1]
    return proc, dict(pair.split("=", 1) for pair in last.split())


def test_tiny_benchmark_measures_both_paths_and_skips_what_cannot_fit(tmp_path: Path) -> None:
    proc, pairs = run_bench(tmp_path, "--sizes", f"20,{HUGE}", "--budget-s", "600")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(pairs["nnsight_bare_s_20"]) > 0
    assert float(pairs["nnsight_server_s_20"]) > 0
    assert float(pairs["nnsight_ratio_20"]) > 0
    assert f"nnsight_bare_s_{HUGE}" not in pairs
    assert pairs["skipped"] == "1"
    assert float(pairs["elapsed_s"]) < 600

    out = tmp_path / "out"
    report = json.loads((out / "gpu.json").read_text())
    assert report["summary"] == proc.stdout.strip().splitlines()[-1]
    [skip] = report["skipped"]
    assert (skip["backend"], skip["path"], skip["size"]) == ("nnsight", "both", HUGE)
    assert skip["reason"].startswith("predicted")
    bare = report["backends"]["nnsight"]["bare"]["graphs"]["20"]
    server = report["backends"]["nnsight"]["server"]["graphs"]["20"]
    assert len(bare["times"]) == len(server["times"]) == 1
    assert bare["json_bytes"] > 1000 and server["json_bytes"] > 1000
    assert "transformers 4.57.3" in report["versions"]
    table = (out / "table.md").read_text()
    assert "| nnsight | bare |" in table and "| nnsight | server |" in table
    assert f'"size": {HUGE}' in table
    assert not (tmp_path / "hf_home_tiny").exists()  # the fabricated cache is removed


def test_a_budget_too_short_still_ends_with_the_summary_line_in_time(tmp_path: Path) -> None:
    # 20 s less the 15 s kept back leaves 5 s: not enough for a server load on any machine,
    # so no ratio can be measured; whatever runs is cut off at the deadline.
    proc, pairs = run_bench(tmp_path, "--sizes", "20", "--budget-s", "20")
    assert float(pairs["elapsed_s"]) < 20
    assert "nnsight_ratio_20" not in pairs
    assert "budget_s" in pairs and (tmp_path / "out" / "gpu.json").exists()
    report = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert report["skipped"] or "error" in report
    assert proc.returncode == (1 if "error" in report else 0)
