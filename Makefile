# One-command entry points. `make run` serves the offline demo model; `make test` runs CI.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
# uv lives outside the venv's site-packages so that `uv pip sync` never uninstalls it.
UV := $(VENV)/uv/bin/uv
# No bytecode compiling at install: Python writes it on the first import, which makes the first
# `make run` faster overall (docs/development.md has the measurement).
UV_ENV := UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=$(abspath $(VENV))
MODEL ?= $(or $(MODEL_ID),demo)
# Target of `make wheelhouse` (docs/air-gapped.md): the GPU host's Python and platform tag.
WHEEL_PYTHON ?= 3.12
WHEEL_PLATFORM ?= manylinux_2_28_x86_64

.PHONY: install install-dev browser nginx run test lint format bench bench-prune bench-scores bench-reprune bench-viewer bench-load bench-half-open bench-steer bench-jobs bench-attack lock demo-model clean check-full-size wheelhouse wheelhouse-runpod check-wheelhouse

$(PY):
	$(PYTHON) -m venv $(VENV)

$(UV): | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check --target $(VENV)/uv "uv==$(UV_VERSION)"

# Runtime install. Skipped when the dev lock (a superset) is already synced and current.
$(VENV)/.installed: requirements.lock pyproject.toml | $(UV)
	@if [ -f $(VENV)/.installed-dev ] && [ $(VENV)/.installed-dev -nt requirements.lock ] \
	    && [ $(VENV)/.installed-dev -nt requirements-dev.lock ]; then \
	  echo "dev environment already installed"; \
	else \
	  $(UV_ENV) PYTHONPATH=$(VENV)/uv $(UV) pip sync --require-hashes requirements.lock && \
	  $(UV_ENV) PYTHONPATH=$(VENV)/uv $(UV) pip install --no-deps -e . ; \
	fi
	@touch $@

# Development install: the dev lock holds both extras, `dev` and `runpod` (the worker's SDK).
$(VENV)/.installed-dev: requirements-dev.lock pyproject.toml | $(UV)
	$(UV_ENV) PYTHONPATH=$(VENV)/uv $(UV) pip sync --require-hashes requirements-dev.lock
	$(UV_ENV) PYTHONPATH=$(VENV)/uv $(UV) pip install --no-deps -e .
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# Serve the demo model (or MODEL=google/gemma-2-2b make run). Creates .env with a fresh SECRET.
run: install
	$(PY) -m neuronpedia_graph.envfile .env .env.example
	$(PY) -m neuronpedia_graph $(MODEL)

# Debian's chromium drives the viewer's browser tests (Playwright's own download needs the internet).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	fi

# Debian's nginx for the tested reverse-proxy recipe (docs/deployment-nginx.md). Its package
# scripts may start the default site; the test runs its own nginx on a loopback port.
nginx:
	@if [ ! -x /usr/sbin/nginx ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx; \
	fi

test: install-dev browser nginx
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install-dev
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: install-dev
	$(PY) -m bench.serialize

bench-viewer: install-dev browser
	$(PY) -m bench.viewer_render

# 16 clients for 60 s against a `make run`-equivalent server, with half-open connections and slow
# upload targets (loopback only). Last line: errors=... health_p99_ms=... rss_growth_mb=...
bench-load: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m bench.load $(ARGS)

# Synchronous graphs with a full job queue against two synchronous clients (docs/jobs.md).
# Last line: sync_503_today=... sync_503_with_jobs=... sync_p50_ms_alone=... ...
bench-jobs: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m bench.jobs_sharing $(ARGS)

# The five server-layer attacks at full size, together, while honest clients make graphs
# (loopback only; about 2 minutes). Last line: errors= health_p99_ms= honest_graph_p99_s= ...
bench-attack: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m bench.attack $(ARGS)

# Half-open connections against stock gthread and our buffering worker (the worker's evidence).
bench-half-open: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m bench.half_open $(ARGS)

# The presets at full architecture size on CPU (random weights; ~15 min, needs ~14 GB free RAM).
check-full-size: install-dev
	$(PY) -m bench.full_size

# neuronpedia_graph.prune against circuit-tracer's prune_graph: time, peak memory, and the
# largest graph each prunes within 20 GiB (needs 21 GiB free; under 10 minutes).
bench-prune: install-dev
	$(PY) -m bench.prune

# Graph scores derived from the prune against circuit-tracer's compute_graph_scores at 11.7k
# nodes: time, peak memory, equality (about 2 minutes, children of a few GiB).
bench-scores: install-dev
	$(PY) -m bench.scores

# Re-pruning a stored attribution against recomputing the graph (demo model, fabricated small
# gemma), and a synthetic 11.7k-node stored graph's size, load, prune and JSON (about 1 minute).
# Last line: reprune_speedup=... store_bytes_per_node2=...
bench-reprune: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m bench.reprune $(ARGS)

# /steer generation: full recompute per token against the key/value cache, on a fabricated small
# Llama (prompts 32 and 1024 tokens x 8/64/256 new). Last line: speedup_1024x64=... max_logit_diff=...
bench-steer: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m bench.steer $(ARGS)

# Offline wheels for a GPU host that has torch and no network (docs/air-gapped.md): writes
# wheelhouse/ and wheelhouse/requirements.txt (hashed, no index), prints the size report.
wheelhouse: install
	$(PY) -m tools.wheelhouse build --python-version $(WHEEL_PYTHON) --platform $(WHEEL_PLATFORM) \
	  --out wheelhouse

# The Runpod image's wheels (the server's plus the `runpod` extra, at requirements-runpod.lock's
# versions); runpod/Dockerfile installs them.
wheelhouse-runpod: install
	$(PY) -m tools.wheelhouse build --profile runpod --python-version $(WHEEL_PYTHON) \
	  --platform $(WHEEL_PLATFORM) --out wheelhouse-runpod

# The air-gapped install tried here: cp312 download + closure check, then the cp311 wheelhouse
# installed offline over a stand-in host, smoke test, demo graph, `bench.gpu --tiny`; the same
# for the Runpod wheelhouse with one handler job (minutes; not part of `make test`).
check-wheelhouse: install-dev
	PY=$(PY) UV=$(UV) PYTHON=$(PYTHON) tools/check_wheelhouse.sh

# Rebuild the committed demo model and transcoders (byte-identical; about 2.5 min on 2 cores).
demo-model: install
	HF_HUB_OFFLINE=1 $(PY) -m neuronpedia_graph.demo.build

# Regenerate the hashed lock files (they carry no index URL): the server's, the Runpod image's
# (the server plus the `runpod` extra, read by `make wheelhouse-runpod`) and the development one
# (both extras, so that the worker's tests run wherever `make test` does).
lock: | $(UV)
	$(UV_ENV) PYTHONPATH=$(VENV)/uv $(UV) pip compile pyproject.toml --universal --generate-hashes \
	  --python-version 3.11 -o requirements.lock
	$(UV_ENV) PYTHONPATH=$(VENV)/uv $(UV) pip compile pyproject.toml --extra runpod --universal \
	  --generate-hashes --python-version 3.11 -o requirements-runpod.lock
	$(UV_ENV) PYTHONPATH=$(VENV)/uv $(UV) pip compile pyproject.toml --extra dev --extra runpod \
	  --universal --generate-hashes --python-version 3.11 -o requirements-dev.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
