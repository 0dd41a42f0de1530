"""The runpod SDK is the optional extra `runpod`: the worker imports it where it runs, the
server never does.

Each check runs in a fresh interpreter where `import runpod` fails (`sys.modules["runpod"] =
None` makes every import of it raise ImportError), as on a server installed without the extra.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

from tests.conftest import REPO

BLOCK_SDK = 'import sys\nsys.modules["runpod"] = None  # as if the extra were not installed\n'
SDK_MODULES = "sorted(m for m, mod in sys.modules.items() if m.split('.')[0] == 'runpod' and mod)"


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_worker_imports_without_the_sdk_and_without_ml_code():
    code = BLOCK_SDK + (
        "from neuronpedia_graph import runpod_worker\n"
        "import neuronpedia_graph.runpod_worker.jobs, neuronpedia_graph.runpod_worker.sdk\n"
        "assert callable(runpod_worker.make_handler) and callable(runpod_worker.main)\n"
        "heavy = [m for m in ('torch', 'circuit_tracer', 'transformers', 'nnsight') "
        "if m in sys.modules]\n"
        f"print(heavy, {SDK_MODULES})\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[] []"


def test_starting_the_worker_without_the_sdk_says_which_extra_to_install():
    done = run_python(BLOCK_SDK + "from neuronpedia_graph.runpod_worker import main\nmain()\n")
    assert done.returncode == 1
    assert "The Runpod worker needs the runpod SDK" in done.stderr
    assert "neuronpedia-graph[runpod]" in done.stderr
    assert "Traceback" not in done.stderr


SERVER = BLOCK_SDK + (
    "import json\n"
    "import neuronpedia_graph.__main__, neuronpedia_graph.server\n"
    "import neuronpedia_graph.serving.worker\n"
    "from neuronpedia_graph.serving.gunicorn import build_app\n"
    "from neuronpedia_graph.settings import Settings\n"
    "settings = Settings(model_id='demo', secret='s', device='cpu', spool_dir=sys.argv[1],\n"
    "                    graph_store_dir=sys.argv[1] + '/store')\n"
    "client = build_app(settings).test_client()\n"
    "auth = {'x-secret-key': 's'}\n"
    "ok = client.post('/forward-pass', json={'prompt': 'The city of Paris is in'}, headers=auth)\n"
    "bad = client.post('/forward-pass', json={'prompt': 1}, headers=auth)\n"
    "print('RESULT', json.dumps({'ok': ok.status_code, 'tokens': ok.get_json()['input_tokens'],\n"
    "                            'bad': bad.status_code, 'error': bad.get_json()['error'],\n"
    f"                            'sdk': {SDK_MODULES}}}))\n"
)


def test_the_server_serves_without_the_sdk(tmp_path):
    """Build the app as gunicorn's worker does, then answer a request and a bad request."""
    done = run_python(SERVER, str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["ok"] == 200 and result["tokens"]
    assert result["bad"] == 422 and result["error"].startswith("Invalid request: prompt")
    assert result["sdk"] == []


def test_python_dash_m_runs_one_job_with_the_sdk(tmp_path):
    """`python -m neuronpedia_graph.runpod_worker --test_input ...`: the SDK's one-job mode."""
    job = {"input": {"request_type": "forward-pass", "prompt": "The city of Paris is in"}}
    env = {
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
        "MODEL_ID": "demo",
        "DEVICE": "cpu",
        "SPOOL_DIR": str(tmp_path / "spool"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "neuronpedia_graph.runpod_worker", "--test_input", json.dumps(job)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "Job local_test completed successfully" in log, log[-3000:]
    assert "job forward-pass -> ok" in log


def test_the_sdk_is_pinned_for_the_image_and_the_tests_but_not_the_server():
    declared = [r for r in metadata.requires("neuronpedia-graph") or [] if r.startswith("runpod")]
    assert declared == ['runpod>=1.7; extra == "runpod"']
    pinned = {
        lock: any(line.startswith("runpod==") for line in (REPO / lock).read_text().splitlines())
        for lock in ("requirements.lock", "requirements-runpod.lock", "requirements-dev.lock")
    }
    assert pinned == {
        "requirements.lock": False,
        "requirements-runpod.lock": True,
        "requirements-dev.lock": True,
    }
