"""tools/wheelhouse.py: its tables against the lock, and the smoke test's failure reports.

Building and installing a wheelhouse needs the registry and minutes: `make check-wheelhouse`
does that (docs/air-gapped.md). These tests cover what can rot silently in between.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import wheelhouse


def test_every_table_entry_names_a_locked_package_and_pins_follow_the_python() -> None:
    lock = wheelhouse.read_lock(wheelhouse.LOCK)
    for name in [*wheelhouse.HOST, *wheelhouse.NOT_IMPORTED, "setuptools"]:
        assert name in lock, f"{name} is in a table of tools/wheelhouse.py but not in the lock"
    # The server's lock has no runpod SDK: only the Runpod profile's lock (its extra) has it.
    assert "runpod" not in lock
    # The lock is universal: numpy differs between 3.11 and 3.12, and the pin follows.
    numpy_311, hashes = wheelhouse.pin_for(lock, "numpy", wheelhouse.target_env("3.11"))
    numpy_312, _ = wheelhouse.pin_for(lock, "numpy", wheelhouse.target_env("3.12"))
    assert numpy_311 != numpy_312 and hashes
    assert wheelhouse.pin_for(lock, "transformers", wheelhouse.target_env("3.12"))[0] == "4.57.3"
    with pytest.raises(SystemExit, match=r"not in requirements\.lock"):
        wheelhouse.pin_for(lock, "no-such-package", wheelhouse.target_env("3.12"))


def test_the_runpod_profile_walks_the_extra_at_its_own_locks_versions() -> None:
    profile = wheelhouse.PROFILES["runpod"]
    assert profile["lock"].name == "requirements-runpod.lock"
    roots = wheelhouse.project_requirements(profile["extras"])
    assert "runpod>=1.7" in roots
    assert set(wheelhouse.project_requirements()) < set(roots)
    lock = wheelhouse.read_lock(profile["lock"])
    env = wheelhouse.target_env("3.12")
    version, hashes = wheelhouse.pin_for(lock, "runpod", env, profile["lock"])
    assert version and hashes
    # The image's lock pins the server's packages as the server's lock does.
    server = wheelhouse.read_lock(wheelhouse.LOCK)
    for name in ("circuit-tracer", "transformers", "flask", "torch"):
        assert wheelhouse.pin_for(lock, name, env)[0] == wheelhouse.pin_for(server, name, env)[0]
    with pytest.raises(SystemExit, match=r"not in requirements-runpod\.lock"):
        wheelhouse.pin_for(lock, "no-such-package", env, profile["lock"])


def manifest(tmp_path: Path, carried: dict, host: dict) -> Path:
    (tmp_path / "manifest.json").write_text(
        json.dumps({"profile": "server", "carried": carried, "host": host, "not_imported": {}})
    )
    return tmp_path


def test_smoke_passes_on_this_environment(tmp_path: Path, capsys) -> None:
    import importlib.metadata as md

    have = md.version("packaging")
    folder = manifest(tmp_path, {"packaging": {"version": have}}, {})
    assert wheelhouse.main(["smoke", "--wheelhouse", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "transformers 4.57.3" in out and "smoke: " in out


def test_smoke_reports_a_wrong_copy_and_an_unmet_host_requirement(tmp_path: Path, capsys) -> None:
    carried = {"packaging": {"version": "0.0.1"}, "no-such-package": {"version": "1.0"}}
    host = {"numpy": {"version": None, "required_by": ["circuit-tracer: numpy>=999"]}}
    folder = manifest(tmp_path, carried, host)
    assert wheelhouse.main(["smoke", "--wheelhouse", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "the wheelhouse has 0.0.1" in err
    assert "no-such-package is not installed" in err
    assert "does not meet circuit-tracer: numpy>=999" in err
