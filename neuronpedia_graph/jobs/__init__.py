"""Graph jobs: a bounded FIFO queue of graph requests run one at a time on the model.

- `progress`: the phases of a graph, a monotonic progress tracker, and the instrumentation of
  the calls circuit-tracer's `attribute()` makes through our model (progress and cancellation);
- `models`: the wire models of the job endpoints;
- `store`: job records and finished documents on disk under `GRAPH_STORE_DIR`;
- `runner`: the queue and the thread that runs it;
- `events`: Server-Sent Events of a job's states, served without holding a request thread.

The HTTP routes are in `neuronpedia_graph.api.jobs`; docs/jobs.md describes the API.
"""
