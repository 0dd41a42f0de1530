"""gunicorn access log without secrets: paths only, no query strings, no credential headers.

A client may put a secret in a query string by mistake (`POST /generate-graph?secret=...`), and
a presigned URL carries its signature there. gunicorn's default access line logs the raw request
target, so such a secret would end up in the log. This logger logs the path and
replaces any query string by `?[redacted]`, for every method: none of our endpoints takes query
parameters, so nothing useful is lost. The same applies to every format atom that could carry
the query or a credential (`%(q)s`, `%(f)s` referer, `{raw_uri}e`, `{x-secret-key}i`, ...), so
a custom `access_log_format` cannot bring it back. That includes `%(u)s`, which gunicorn's
default line fills with the user name of an `Authorization: Basic` header: a client or proxy
may put a token there.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from gunicorn.glogging import Logger

from neuronpedia_graph.logging_setup import SafeLogFilter
from neuronpedia_graph.serving.gunicorn_types import (
    GunicornConfig,
    GunicornRequest,
    GunicornResponse,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

REDACTED = "[redacted]"
# Request headers (lower case, as gunicorn's `{name}i` atoms) whose values are never logged.
SECRET_HEADERS = frozenset({"x-secret-key", "authorization", "proxy-authorization", "cookie"})


def _strip_query(target: str) -> str:
    path, sep, _query = target.partition("?")
    return f"{path}?{REDACTED}" if sep else path


class RedactingLogger(Logger):  # type: ignore[misc]  # misc: gunicorn's Logger is untyped
    """gunicorn's Logger with query strings and credential headers removed from access atoms,
    and every line (access and error log) passed through `SafeLogFilter`."""

    def setup(self, cfg: GunicornConfig) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not any(isinstance(f, SafeLogFilter) for f in handler.filters):
                    handler.addFilter(SafeLogFilter())

    def atoms(
        self,
        resp: GunicornResponse,
        req: GunicornRequest,
        environ: WSGIEnvironment,
        request_time: timedelta,
    ) -> dict[str, object]:
        """gunicorn's format atoms (strings and numbers by atom name), secrets redacted."""
        atoms: dict[str, object] = super().atoms(resp, req, environ, request_time)
        target = _strip_query(str(environ.get("RAW_URI") or environ.get("PATH_INFO") or ""))
        atoms["r"] = f"{environ.get('REQUEST_METHOD')} {target} {environ.get('SERVER_PROTOCOL')}"
        if environ.get("QUERY_STRING"):
            atoms["q"] = REDACTED
        if atoms.get("u") not in (None, "-"):
            atoms["u"] = REDACTED
        if atoms.get("f") not in (None, "-"):
            atoms["f"] = _strip_query(str(atoms["f"]))
        for key in [k for k in atoms if k.startswith("{") and k[-2:] in ("}i", "}e")]:
            name, kind = key[1:-2], key[-1]
            header = name if kind == "i" else name.removeprefix("http_").replace("_", "-")
            secret = header in SECRET_HEADERS and (kind == "i" or name.startswith("http_"))
            if secret or (name == "query_string" and atoms[key]):
                atoms[key] = REDACTED
            elif header == "referer" or name in ("raw_uri", "request_uri"):
                atoms[key] = _strip_query(str(atoms[key]))
        return atoms
