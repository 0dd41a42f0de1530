"""Maintenance commands, run from the repository root as modules (`python -m tools.wheelhouse`)."""
