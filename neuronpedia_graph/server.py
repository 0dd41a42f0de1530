"""Seed-compatible entry point: ``python neuronpedia_graph/server.py google/gemma-2-2b``."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this file's folder is sys.path[0]: our module names (app, settings, ...)
    # would shadow real packages. Import the package from the repository root instead.
    here = Path(__file__).resolve().parent
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))
    from neuronpedia_graph.__main__ import main

    sys.exit(main())
