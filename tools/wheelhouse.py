"""Offline wheelhouse for a GPU host that already has PyTorch and CUDA, and no network.

    python -m tools.wheelhouse build --python-version 3.12 --platform manylinux_2_28_x86_64
    python -m tools.wheelhouse closure wheelhouse      # every requirement met? (no install)
    python -m tools.wheelhouse smoke                   # on the host, inside the new venv

(from the repository root; `demo` imports `testkit` from there).

`build` walks the dependency tree of the project (or, with `--profile runpod`, of the project
with its `runpod` extra: the Runpod worker) from the wheels' own metadata, for the target Python
and platform, at the versions of the profile's lock (`requirements.lock`, or
`requirements-runpod.lock`), and downloads each wheel with the lock's hash checked. It stops
at the packages the host provides (`HOST`) and drops the declared dependencies that the server
and the benchmark never import (`NOT_IMPORTED`): both tables say why. It writes
`requirements.txt` (hashes of the files in the folder, `--find-links .`, no index), a
`manifest.json` the other commands read, and `SIZES.txt`.

`smoke` imports what the server and the benchmark import, checks that every carried package is
the one loaded (the venv's, not the host's) and that the host's packages meet the requirements
of the carried ones, and prints the versions in use. It needs only the standard library and
`packaging` (carried), so it also runs as a file from any folder (`python
path/to/tools/wheelhouse.py smoke`), where the package imported is the installed one rather
than the checkout's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"  # the server's; a profile may name another

# Never carried: the host image brings them. The walk does not enter their own requirements
# (torch's CUDA libraries, triton, sympy... are the host's business). A version is given where
# the host's is known; `closure` checks it against what the carried packages require.
HOST: dict[str, tuple[str | None, str]] = {
    "torch": (None, "the host's CUDA build; never carried"),
    "numpy": ("2.5.2", "host version known and accepted by every requirement"),
    "safetensors": ("0.8.0", "host version known and accepted"),
    "jaxtyping": ("0.3.11", "host version known and accepted (TransformerLens)"),
    "accelerate": ("1.15.0", "host version known; the lock has the same"),
    "pyarrow": (
        None,
        "only `import datasets` (TransformerLens) loads it, nothing uses it; ~40 MiB, too big "
        "for the size limit; `smoke` checks the host's meets datasets' >=21",
    ),
    "pandas": (None, "only imported through datasets, like pyarrow; ~12 MiB"),
}

# Declared by a dependency, never imported by the server or bench/gpu.py (checked by
# `make check-wheelhouse`, which runs both from a venv without them).
NOT_IMPORTED: dict[str, str] = {
    "wandb": "TransformerLens imports it for training only",
    "transformers-stream-generator": "declared by TransformerLens, never imported",
    "sentencepiece": "slow tokenizers only; the fast (tokenizers) ones are used",
    "hf-xet": "downloads only; the host is offline",
    "fancy-einsum": "TransformerLens imports it in modules the backend does not load",
    "beartype": "TransformerLens declares it; not imported on the paths used",
    "jedi": "IPython imports it for tab completion only",
    "prompt-toolkit": "IPython's terminal shell only",
    "pexpect": "IPython's shell only",
    "matplotlib-inline": "IPython's inline plots only",
    "stack-data": "IPython's tracebacks; imported lazily",
}

PROFILES: dict[str, dict] = {
    "server": {
        "lock": LOCK,
        "extras": [],
        "extra_roots": ["setuptools"],
        "host": set(HOST),
        "drop": set(),
        "imports": [],
    },
    # The Runpod worker's image: the project with its `runpod` extra (the SDK: FastAPI, boto3,
    # cryptography, ...), over a PyTorch base image that brings torch and little else.
    "runpod": {
        "lock": REPO / "requirements-runpod.lock",
        "extras": ["runpod"],
        "extra_roots": ["setuptools"],
        "host": {"torch"},
        "drop": {"hf-xet"},  # a Runpod worker downloads models: hf-xet speeds that
        "imports": ["runpod", "runpod.serverless", "neuronpedia_graph.runpod_worker"],
    },
}

# Imported by `smoke`: what the server, the worker and bench/gpu.py load on both backends.
SMOKE_IMPORTS = [
    "torch",
    "flask",
    "gunicorn.app.base",
    "neuronpedia_graph.api",
    "neuronpedia_graph.serving.worker",
    "neuronpedia_graph.models.loading",
    "neuronpedia_graph.graph_json",
    "circuit_tracer",
    "circuit_tracer.graph",
    "circuit_tracer.utils.hf_utils",
    "nnsight",
    "transformer_lens",
    "circuit_tracer.replacement_model.replacement_model_nnsight",
    "circuit_tracer.replacement_model.replacement_model_transformerlens",
    "requests",
]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_env(python_version: str) -> dict[str, str]:
    """PEP 508 marker values for CPython `python_version` on x86-64 Linux."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "platform_python_implementation": "CPython",
        "platform_machine": "x86_64",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_release": "",
        "platform_version": "",
    }


LOCK_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def read_lock(path: Path) -> dict[str, list[tuple[str, str | None, list[str]]]]:
    """name -> [(version, marker or None, [sha256...])] from a `uv pip compile` lock."""
    entries: dict[str, list[tuple[str, str | None, list[str]]]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines():
        head = LOCK_ENTRY.match(line)
        if head:
            current = []
            name, version, marker = head.groups()
            entries.setdefault(canonical(name), []).append((version, marker, current))
        elif current is not None and "--hash=sha256:" in line:
            current.append(line.split("--hash=sha256:")[1].split()[0].rstrip("\\"))
    return entries


def pin_for(
    lock: dict, name: str, env: dict[str, str], lock_path: Path = LOCK
) -> tuple[str, list[str]]:
    """The version and hashes of `name` in `lock` (read from `lock_path`) for `env`."""
    from packaging.markers import Marker

    options = lock.get(name)
    if not options:
        raise SystemExit(
            f"{name} is not in {lock_path.name}: add it to the project, then `make lock`"
        )
    for version, marker, hashes in options:
        if marker is None or Marker(marker).evaluate(env):
            return version, hashes
    raise SystemExit(
        f"no entry of {name} in {lock_path.name} applies to Python {env['python_version']}"
    )


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) of a wheel file."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(zf.read(meta).decode())
    return canonical(msg["Name"]), msg["Version"], msg.get_all("Requires-Dist") or []


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def project_requirements(extras: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The project's dependencies, plus those of `extras` (e.g. `runpod`)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed project's metadata says the same
        import importlib.metadata as md

        wanted = []
        for line in md.requires("neuronpedia-graph") or []:
            spec, _, marker = line.partition(";")
            if "extra ==" not in marker:
                wanted.append(line)
            elif any(f'extra == "{extra}"' in marker for extra in extras):
                wanted.append(spec.strip())
        return wanted
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(r for extra in extras for r in optional[extra])]


def pip_download(specs: dict[str, tuple[str, list[str]]], dest: Path, args) -> None:
    """Download exact versions (binary only, for the target) with the lock's hashes checked."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        for name, (version, hashes) in sorted(specs.items()):
            fh.write(f"{name}=={version} " + " ".join(f"--hash=sha256:{h}" for h in hashes) + "\n")
        reqs = fh.name
    cmd = [
        sys.executable, "-m", "pip", "download", "-qq", "--no-deps", "--only-binary=:all:",
        "--python-version", args.python_version, "--implementation", "cp",
        "--platform", args.platform, "-d", str(dest), "-r", reqs,
    ]  # fmt: skip
    if args.platform.startswith("manylinux"):  # older tags are compatible too
        cmd += ["--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64"]
    try:
        subprocess.run(cmd, check=True)
    finally:
        os.unlink(reqs)


def build(args) -> int:
    from packaging.requirements import Requirement

    env = target_env(args.python_version)
    profile = PROFILES[args.profile]
    lock_path: Path = profile["lock"]
    lock = read_lock(lock_path)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    carried: dict[str, dict] = {}
    host: dict[str, list[str]] = {}
    skipped: dict[str, list[str]] = {}
    extras_done: dict[str, set[str]] = {}
    queue: list[tuple[Requirement, str]] = [
        (Requirement(r), "neuronpedia-graph") for r in project_requirements(profile["extras"])
    ] + [(Requirement(r), "(profile)") for r in profile["extra_roots"]]
    not_imported = {k: v for k, v in NOT_IMPORTED.items() if k not in profile["drop"]}
    host_names = profile["host"]

    while queue:
        wanted: dict[str, tuple[str, list[str]]] = {}
        pending: list[tuple[str, set[str]]] = []
        for req, parent in queue:
            if req.marker is not None and not req.marker.evaluate(env | {"extra": ""}):
                continue
            name = canonical(req.name)
            if name in host_names:
                host.setdefault(name, []).append(f"{parent}: {req}")
                continue
            if name in not_imported:
                skipped.setdefault(name, []).append(parent)
                continue
            carried.setdefault(name, {"required_by": []})["required_by"].append(f"{parent}: {req}")
            new_extras = set(req.extras) - extras_done.get(name, set())
            if name not in extras_done or new_extras:
                pending.append((name, set(req.extras)))
                if "file" not in carried[name] and name not in wanted:
                    wanted[name] = pin_for(lock, name, env, lock_path)
        if wanted:
            pip_download(wanted, out, args)
            by_name = {}
            for wheel in out.glob("*.whl"):
                name, version, _ = wheel_metadata(wheel)
                by_name[name] = (wheel, version)
            for name in wanted:
                wheel, version = by_name[name]
                carried[name].update(file=wheel.name, version=version)
        queue = []
        for name, extras in pending:
            seen = extras_done.setdefault(name, set())
            first = not seen and "visited" not in carried[name]
            carried[name]["visited"] = True
            todo = extras - seen
            seen |= extras
            _, _, requires = wheel_metadata(out / carried[name]["file"])
            for line in requires:
                dep = Requirement(line)
                marker = dep.marker
                if marker is None:
                    if first:
                        queue.append((dep, name))
                    continue
                base_ok = first and marker.evaluate(env | {"extra": ""})
                extra_ok = any(marker.evaluate(env | {"extra": e}) for e in todo)
                if base_ok or extra_ok:
                    queue.append((dep, name))

    manifest = {
        "profile": args.profile,
        "python_version": args.python_version,
        "platform": args.platform,
        "carried": {
            n: {"version": c["version"], "file": c["file"], "required_by": c["required_by"]}
            for n, c in sorted(carried.items())
        },
        "host": {
            n: {"version": HOST[n][0], "why": HOST[n][1], "required_by": r}
            for n, r in sorted(host.items())
        },
        "not_imported": {
            n: {"why": not_imported[n], "required_by": r} for n, r in sorted(skipped.items())
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    lines = [
        f"# Offline wheelhouse ({args.profile}) for CPython {args.python_version} on "
        f"{args.platform}, written by tools/wheelhouse.py from {lock_path.name}.",
        "# Install into a venv made with --system-site-packages (the host's torch stays):",
        "#   pip install --no-index --no-deps -r wheelhouse/requirements.txt",
        "--find-links .",
    ]
    for name, c in sorted(carried.items()):
        lines.append(f"{name}=={c['version']} --hash=sha256:{sha256(out / c['file'])}")
    (out / "requirements.txt").write_text("\n".join(lines) + "\n")
    report = size_report(out, manifest)
    (out / "SIZES.txt").write_text(report)
    print(report)
    return closure(argparse.Namespace(wheelhouse=str(out)))


def size_report(out: Path, manifest: dict) -> str:
    rows = []
    total = 0
    for name, c in manifest["carried"].items():
        size = (out / c["file"]).stat().st_size
        total += size
        rows.append((size, f"{name}=={c['version']}"))
    lines = [
        f"wheelhouse ({manifest['profile']}, cp{manifest['python_version'].replace('.', '')}, "
        f"{manifest['platform']}): {len(rows)} wheels, {total / 2**20:.1f} MiB",
        *(f"  {size / 2**20:7.2f} MiB  {what}" for size, what in sorted(rows, reverse=True)),
        "from the host: "
        + ", ".join(
            f"{n} {h['version'] or '(version unknown)'}" for n, h in manifest["host"].items()
        ),
        "left out (never imported): " + ", ".join(manifest["not_imported"]),
    ]
    return "\n".join(lines) + "\n"


def closure(args) -> int:
    """Every requirement of every carried wheel, for the target, met without an install."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    out = Path(args.wheelhouse)
    manifest = json.loads((out / "manifest.json").read_text())
    env = target_env(manifest["python_version"])
    carried = manifest["carried"]
    problems = []
    listed = {
        canonical(line.split("==")[0])
        for line in (out / "requirements.txt").read_text().splitlines()
        if line and not line.startswith(("#", "--"))
    }
    if listed != set(carried):
        problems.append(f"requirements.txt and manifest.json differ: {listed ^ set(carried)}")
    for name, c in carried.items():
        _, _, requires = wheel_metadata(out / c["file"])
        for line in requires:
            dep = Requirement(line)
            if dep.marker is not None and not dep.marker.evaluate(env | {"extra": ""}):
                continue
            dname = canonical(dep.name)
            if dname in carried:
                if not dep.specifier.contains(Version(carried[dname]["version"]), prereleases=True):
                    problems.append(f"{name} needs {dep}, carries {carried[dname]['version']}")
            elif dname in manifest["host"]:
                known = manifest["host"][dname]["version"]
                if known and not dep.specifier.contains(Version(known), prereleases=True):
                    problems.append(f"{name} needs {dep}, the host has {known}")
            elif dname not in manifest["not_imported"]:
                problems.append(f"{name} needs {dep}: neither carried nor from the host")
    for p in problems:
        print(f"closure: {p}", file=sys.stderr)
    if problems:
        return 1
    print(
        f"closure: {len(carried)} wheels for cp{manifest['python_version'].replace('.', '')} "
        "meet every requirement (host and left-out packages as listed)"
    )
    return 0


def smoke(args) -> int:
    """Import what the server and the benchmark import, then check versions (on the host)."""
    import importlib
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.version import Version

    manifest = json.loads((Path(args.wheelhouse) / "manifest.json").read_text())
    problems = []
    imports = SMOKE_IMPORTS + PROFILES[manifest["profile"]]["imports"]
    for module in imports:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure to import is what this reports
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
    for name, c in manifest["carried"].items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
        if Version(have) != Version(c["version"]):
            problems.append(f"{name} {have} is loaded, the wheelhouse has {c['version']}")
    env_extra = {"extra": ""}
    for name, h in manifest["host"].items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"{name} (from the host) is not installed")
            continue
        for line in h["required_by"]:
            dep = Requirement(line.split(": ", 1)[1])
            if dep.marker is not None and not dep.marker.evaluate(env_extra):
                continue
            if not dep.specifier.contains(Version(have), prereleases=True):
                problems.append(f"the host's {name} {have} does not meet {line}")
    from neuronpedia_graph.versions import describe_versions

    print(describe_versions())
    for p in problems:
        print(f"smoke: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"smoke: {len(imports)} imports and {len(manifest['carried'])} versions ok")
    return 0


# Stand-ins for the host's packages in `make check-wheelhouse`: the lock's versions of those we
# take from the host, and newer or older releases of packages we carry, so that the check shows
# the venv's copies win (the host has transformers 5 and huggingface_hub 1.33).
HOST_STAND_INS = ["huggingface-hub==1.33.0", "transformers>=5,<6", "werkzeug<3"]


def host_emulation(args) -> int:
    """Print the requirements of a stand-in for the host's system site-packages."""
    env = target_env(args.python_version)
    lock = read_lock(LOCK)
    for name in HOST:
        print(f"{name}=={pin_for(lock, name, env)[0]}")
    print("\n".join(HOST_STAND_INS))
    return 0


def demo(args) -> int:
    """Serve the demo model with this interpreter and make one graph over HTTP."""
    import secrets
    import tempfile

    # Imported here: the other commands also run as a file, where `testkit` is not importable.
    import requests

    from testkit.live import free_port, server_command, server_settings, start_process

    secret = secrets.token_hex(16)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = server_settings(workdir, port, secret, {"HF_HUB_OFFLINE": "1"})
        with start_process(server_command(workdir), workdir, env, port=port) as server:
            body = {"prompt": "The city of Paris is in", "model_id": "demo", "slug_identifier": "x"}
            res = requests.post(
                f"{server.base}/generate-graph",
                json=body,
                headers={"x-secret-key": secret},
                timeout=300,
            )
            log = (workdir / "server.log").read_text(errors="replace")
    if res.status_code != 200:
        print(f"demo: {res.status_code} {res.text[:300]}", file=sys.stderr)
        return 1
    graph = res.json()
    banner = [line.strip() for line in log.splitlines() if line.strip().startswith("versions")]
    print(f"demo: graph with {len(graph['nodes'])} nodes, {len(graph['links'])} links")
    print(f"demo: server {banner[0] if banner else '(no versions line)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download the wheels and write requirements.txt")
    b.add_argument("--python-version", default="3.12")
    b.add_argument("--platform", default="manylinux_2_28_x86_64")
    b.add_argument("--profile", choices=sorted(PROFILES), default="server")
    b.add_argument("--out", default=str(REPO / "wheelhouse"))
    c = sub.add_parser("closure", help="check a built wheelhouse's requirements (no install)")
    c.add_argument("wheelhouse", nargs="?", default=str(REPO / "wheelhouse"))
    s = sub.add_parser("smoke", help="import test in the installed venv")
    s.add_argument("--wheelhouse", default=str(REPO / "wheelhouse"))
    h = sub.add_parser("host-emulation", help="requirements of a stand-in host (for tests)")
    h.add_argument("--python-version", default="3.11")
    sub.add_parser("demo", help="serve the demo model and make one graph")
    args = parser.parse_args(argv)
    commands = {"build": build, "closure": closure, "smoke": smoke}
    commands |= {"host-emulation": host_emulation, "demo": demo}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
