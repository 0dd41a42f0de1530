"""Runpod's entry file: the worker is `neuronpedia_graph.runpod_worker` (see runpod/README.md).

`python runpod/handler.py [--rp_serve_api | --test_input '{"input": {...}}']` is the same as
`python -m neuronpedia_graph.runpod_worker`; the image's CMD runs this file.
"""

from neuronpedia_graph.runpod_worker import main

if __name__ == "__main__":
    main()
