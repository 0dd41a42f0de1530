"""neuronpedia-graph: an HTTP service and Runpod worker for circuit-tracer attribution graphs."""

__version__ = "0.1.0"
