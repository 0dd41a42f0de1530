"""Points where the program that embeds the service may watch or interrupt its work.

The server and the Runpod worker pass the default `Hooks`, which does nothing. The test kit
passes its own subclass (through `main(..., hooks=...)`, `GraphService(..., hooks=...)`) to
hold an operation at a named point until the test releases it, or to fail it there: that makes
"the model is busy" and "a graph is half done" deterministic without sleeps, and keeps every
fault-injection switch out of the environment that production reads.

Points reached today:
- `load`: in the serving process, just before the model loads;
- an operation's name (`generate-graph`, `forward-pass`, `steer`): once the model is held for it
  by a synchronous request; `graph-job` once it is held for a queued graph job;
- `wait-for-model`: a synchronous caller starts waiting for the model (a `/generate-graph` behind
  a running job, or the Runpod worker's timeout); it is counted as waiting when this is reached;
- `job-start`: the job runner took a job from the queue (before its upload slot and the model);
- in every graph, before each call attribution makes through the model: `graph-activations`,
  `graph-forward-pass`, `graph-logit-batch` (each logit batch), `graph-feature-batch` (each
  feature batch); and in jobs and the Runpod worker, at each later phase: `graph-prune`,
  `graph-build-json`, `graph-compress`, `graph-upload`. A job's cancel takes effect at these.
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
