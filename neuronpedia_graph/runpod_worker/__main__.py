"""`python -m neuronpedia_graph.runpod_worker [SDK flags]`: start the Runpod worker."""

from neuronpedia_graph.runpod_worker.sdk import main

if __name__ == "__main__":  # importing this module (a package walk) starts nothing
    main()
