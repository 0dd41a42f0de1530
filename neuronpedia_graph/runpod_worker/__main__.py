"""`python -m neuronpedia_graph.runpod_worker [SDK flags]`: start the Runpod worker."""

from neuronpedia_graph.runpod_worker.sdk import main

main()
