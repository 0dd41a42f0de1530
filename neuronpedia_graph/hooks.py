"""Points where the program that embeds the service may watch or interrupt its work.

The server and the Runpod worker pass the default `Hooks`, which does nothing. The test kit
passes its own subclass (through `main(..., hooks=...)`, `GraphService(..., hooks=...)`) to
hold an operation at a named point until the test releases it, or to fail it there: that makes
"the model is busy" and "a graph is half done" deterministic without sleeps, and keeps every
fault-injection switch out of the environment that production reads.

Points reached today:
- `load`: in the serving process, just before the model loads;
- an operation's name (`generate-graph`, `forward-pass`, `steer`): once the model is held for it.
"""

from __future__ import annotations


class Hooks:
    """The default: every point passes at once. Subclasses may block or raise in `reached`."""

    def reached(self, point: str) -> None:
        """Called when the work reaches `point`; returning lets it go on.

        Args:
            point: the point's name (see the module docstring).
        """
        return None


NO_HOOKS = Hooks()
