#!/usr/bin/env bash
# `make check-wheelhouse`: the air-gapped install of docs/air-gapped.md, tried on this machine.
#
# 1. The real target: the wheelhouse for CPython 3.12 on manylinux x86-64, downloaded binary-only
#    (`pip download --python-version 3.12 --only-binary=:all:`) and its requirements closed over
#    the carried wheels and the host's packages. Nothing is installed.
# 2. The same specification for this machine's Python (3.11), installed with no index into a
#    fresh venv over a stand-in for the host: a separate environment holding torch, the packages
#    the wheelhouse takes from the host, and a newer transformers / huggingface_hub and an older
#    Werkzeug than ours. It sits where --system-site-packages puts the host's site-packages
#    (after the venv's own, through a .pth file); this machine's own system site-packages is not
#    used, since its unrelated packages could hide a missing wheel.
# 3. From that venv: the import smoke test, a demo graph over HTTP, and `bench.gpu --tiny`.
# 4. The Runpod wheelhouse (the project with its `runpod` extra, at requirements-runpod.lock's
#    versions) the same way (cp312 closure; cp311 installed over the same stand-in, its smoke
#    test, and one local job through the image's entry file runpod/handler.py on the demo model).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
UV=${UV:-.venv/uv/bin/uv}
PYTHON=${PYTHON:-python3}
OUT=$(realpath -m "${OUT:-build/wheelhouse-check}")
REPO=$(pwd)

rm -rf "$OUT"
mkdir -p "$OUT"
echo "== cp312 wheelhouse (download only)"
"$PY" -m tools.wheelhouse build --python-version 3.12 --out "$OUT/wheelhouse-cp312"
echo "== cp311 wheelhouse (the same specification)"
"$PY" -m tools.wheelhouse build --python-version 3.11 --out "$OUT/wheelhouse-cp311" >/dev/null

echo "== stand-in host: torch and the host's packages"
VERSION=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
"$PY" -m tools.wheelhouse host-emulation --python-version "$VERSION" >"$OUT/host.txt"
UV_PYTHON_DOWNLOADS=never "$UV" venv --quiet --python "$PYTHON" "$OUT/host"
UV_PYTHON_DOWNLOADS=never "$UV" pip install --quiet --python "$OUT/host/bin/python" -r "$OUT/host.txt"
HOST_SITE=$("$OUT/host/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

echo "== fresh venv, offline install"
"$PYTHON" -m venv "$OUT/venv"
VENV_SITE=$("$OUT/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$HOST_SITE" >"$VENV_SITE/_host_site_packages.pth"
"$OUT/venv/bin/pip" install --quiet --no-index --no-deps -r "$OUT/wheelhouse-cp311/requirements.txt"
"$OUT/venv/bin/pip" install --quiet --no-index --no-deps --no-build-isolation "$REPO"

echo "== smoke test, demo graph and bench.gpu --tiny from the venv"
# The smoke test runs as a file from /, so that it imports the installed package rather than the
# checkout; the demo and the benchmark run from the checkout, whose `testkit` and `bench` they use.
cd /
"$OUT/venv/bin/python" "$REPO/tools/wheelhouse.py" smoke --wheelhouse "$OUT/wheelhouse-cp311"
cd "$REPO"
"$OUT/venv/bin/python" -m tools.wheelhouse demo
"$OUT/venv/bin/python" -m bench.gpu --tiny --workdir "$OUT/bench" \
  --out "$OUT/bench/results" | tail -n 1

echo "== Runpod wheelhouse: cp312 closure, cp311 install, smoke test, one handler job"
cd "$REPO"
"$PY" -m tools.wheelhouse build --profile runpod --python-version 3.12 \
  --out "$OUT/wheelhouse-runpod-cp312" | grep -E '^(wheelhouse|closure)'
"$PY" -m tools.wheelhouse build --profile runpod --python-version 3.11 \
  --out "$OUT/wheelhouse-runpod-cp311" >/dev/null
"$PYTHON" -m venv "$OUT/venv-runpod"
RUNPOD_SITE=$("$OUT/venv-runpod/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$HOST_SITE" >"$RUNPOD_SITE/_host_site_packages.pth"
"$OUT/venv-runpod/bin/pip" install --quiet --no-index --no-deps \
  -r "$OUT/wheelhouse-runpod-cp311/requirements.txt"
"$OUT/venv-runpod/bin/pip" install --quiet --no-index --no-deps --no-build-isolation "$REPO"
cd /
"$OUT/venv-runpod/bin/python" "$REPO/tools/wheelhouse.py" smoke \
  --wheelhouse "$OUT/wheelhouse-runpod-cp311" | tail -n 1
HF_HUB_OFFLINE=1 MODEL_ID=demo SPOOL_DIR="$OUT/spool" "$OUT/venv-runpod/bin/python" \
  "$REPO/runpod/handler.py" --test_input "$(cat "$REPO/runpod/test_input.json")" >"$OUT/runpod.log" 2>&1
grep -q "Job local_test completed successfully" "$OUT/runpod.log" || {
  tail -n 20 "$OUT/runpod.log"
  exit 1
}
echo "runpod handler: demo graph job completed"
echo "check-wheelhouse: ok"
