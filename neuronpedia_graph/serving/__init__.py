"""The HTTP server process: the buffering gunicorn worker, its framing, logs and boot guard."""
