"""`Any` in the package is rare and explained: each use says why its type is unknowable.

A bare `Any` switches the type checker off for everything that flows through it, so the package
keeps it to values that truly have no static type (decoded JSON, raw validator input, proxies of
untyped libraries) and says so next to it, in a comment containing `Any:` on the same line or
the line above. Decoded JSON goes through `neuronpedia_graph.json_types`, which states its
reason once.
"""

from __future__ import annotations

import ast
from pathlib import Path

import neuronpedia_graph

PACKAGE = Path(neuronpedia_graph.__file__).parent


def unexplained_any(source: str) -> list[int]:
    """Line numbers where `Any` is used (not imported) without an `Any:` reason nearby."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        is_any = (isinstance(node, ast.Name) and node.id == "Any") or (
            isinstance(node, ast.Attribute)
            and node.attr == "Any"
            and isinstance(node.value, ast.Name)
            and node.value.id == "typing"
        )
        if not is_any:
            continue
        here = lines[node.lineno - 1]
        above = lines[node.lineno - 2] if node.lineno > 1 else ""
        if "Any:" not in here and "Any:" not in above:
            found.append(node.lineno)
    return sorted(set(found))


def test_every_any_in_the_package_says_why():
    offenders = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := unexplained_any(path.read_text()))
    }
    assert not offenders, f"Any without an `Any:` reason: {offenders}"


def test_the_checker_catches_an_unexplained_any():
    bare = "from typing import Any\n\ndef f(x: Any) -> None: ...\n"
    explained = "from typing import Any\n\ndef f(x: Any) -> None: ...  # Any: raw input\n"
    above = "import typing\n\n# Any: raw input\nX: typing.Any = 1\n"
    assert unexplained_any(bare) == [3]
    assert unexplained_any(explained) == []
    assert unexplained_any(above) == []
    assert unexplained_any("import typing\nX: typing.Any = 1\n") == [2]
