"""Seed-compatible entry point: ``python neuronpedia_graph/server.py google/gemma-2-2b``.

The original Neuronpedia server starts as ``python server.py``, and this file keeps that form
working (from the repository root, or from anywhere once the package is installed). Run as a
file, Python puts this file's folder first on the import path, where the package's own module
names (``settings``, ``models``, ``api``, ``jobs``, ...) would shadow installed modules of the
same names for the whole process. So this file imports nothing of the package: it replaces its
process (same pid, same interpreter options and arguments) with ``python -m neuronpedia_graph``,
whose import path starts at the working directory as usual.
"""

from __future__ import annotations

import os
import sys


def module_argv(orig_argv: list[str], argv: list[str]) -> list[str]:
    """The command line of ``python -m neuronpedia_graph`` with this run's options and arguments.

    Args:
        orig_argv: the interpreter's own command line (`sys.orig_argv`): the interpreter, its
            options (``-X``, ``-W``, ...), this file, then the arguments.
        argv: the script's command line (`sys.argv`): this file, then the arguments.
    """
    options = orig_argv[1 : len(orig_argv) - len(argv)]
    return [sys.executable, *options, "-m", "neuronpedia_graph", *argv[1:]]


if __name__ == "__main__":
    if __package__:  # `python -m neuronpedia_graph.server`: the import path is already right
        from neuronpedia_graph.__main__ import main

        sys.exit(main())
    os.execv(sys.executable, module_argv(sys.orig_argv, sys.argv))
