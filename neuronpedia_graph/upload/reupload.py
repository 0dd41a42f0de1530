"""`python -m neuronpedia_graph reupload FILE URL`: send a spooled graph to a presigned URL.

A graph whose upload failed stays in the spool directory (the 502 names the file). This
command uploads it to a fresh presigned URL with the server's own upload path
(`UploadQueue.reupload`: the same URL checks, deadline, retries and logging) and removes the
file once it is stored. It reads the same settings as the server (flags after FILE and URL,
the environment, `.env`), loads no model and needs no SECRET. Give URL as `-` to read it from
standard input, which keeps the signed URL out of the shell history.

Exit status: 0 uploaded (one JSON line on stdout), 1 the upload failed (the file is kept),
2 the file or the URL was refused (an `error:` line).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

USAGE = "usage: python -m neuronpedia_graph reupload FILE URL|- [settings flags]"


def main(argv: Sequence[str]) -> int:
    """Run the command.

    Args:
        argv: FILE, URL (or `-`), then any settings flags (e.g. `--upload-allowed-hosts`).

    Returns:
        The exit status (see the module docstring).
    """
    from neuronpedia_graph.errors import InvalidField, ServiceError, UploadFailed
    from neuronpedia_graph.logging_setup import configure_logging
    from neuronpedia_graph.settings import SettingsError, load_settings
    from neuronpedia_graph.upload.guard import UploadGuard
    from neuronpedia_graph.upload.queue import UploadQueue
    from neuronpedia_graph.upload.transfer import UploadPolicy

    args = list(argv)
    if len(args) < 2 or args[0].startswith("-") or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    path, url = Path(args[0]), args[1]
    if url == "-":
        url = sys.stdin.readline().strip()
    try:
        settings = load_settings(args[2:])
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    # Not `from_settings`: that also tidies the spool (files past SPOOL_MAX_AGE), which must not
    # remove the very file being re-uploaded.
    queue = UploadQueue(
        UploadGuard(settings.upload_allowed_hosts),
        UploadPolicy.from_settings(settings),
        path.parent,
        1,
        spool_max_bytes=settings.spool_max_bytes,
        spool_max_age=settings.spool_max_age,
    )
    try:
        result = queue.reupload(path, url, timeout=0)
    except UploadFailed as exc:
        print(f"error: {exc.message} (the file is kept: {path})", file=sys.stderr)
        return 1
    except (InvalidField, ServiceError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        queue.shutdown()
    print(
        json.dumps(
            {
                "success": "Graph uploaded",
                "url": result.url,
                "bytes": result.bytes,
                "compressed": result.compressed,
                "removed": str(path),
            }
        )
    )
    return 0
