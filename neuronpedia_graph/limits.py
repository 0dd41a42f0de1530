"""Fixed protocol limits shared by the application and the server layer, declared once.

The server layer (the buffering worker) enforces them before the application sees a request,
and the application states them in its own errors and documents; both read them here.
"""

from __future__ import annotations

# The largest request body any operation accepts: 413 above it, before the body is read.
MAX_BODY_BYTES = 1 << 20
# What a busy reply (503) tells the client to wait, in seconds.
RETRY_AFTER_SECONDS = 5
