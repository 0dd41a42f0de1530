"""The worker's service, built on first use and configured like the server (env vars, .env)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from neuronpedia_graph.errors import ServiceError
from neuronpedia_graph.settings import Settings, load_settings

if TYPE_CHECKING:  # the service module imports torch; it is imported when the model loads
    from neuronpedia_graph.service import GraphService

logger = logging.getLogger("neuronpedia_graph.runpod")


class ModelUnavailable(ServiceError):
    status = 503


class ServiceLoader:
    """Builds the service on first use; `get` is the handler's service getter.

    A failed load is remembered: retrying it for every queued job would make each one wait for
    the same failure. The worker is replaced instead (``refresh_worker``), which also retries
    transient causes such as a Hub outage on a fresh machine.
    """

    def __init__(
        self, environ: Mapping[str, str] | None = None, env_file: Path | str | None = None
    ) -> None:
        self._environ = environ
        self._env_file = env_file
        self._lock = threading.Lock()
        self._service: GraphService | None = None
        self._error: str | None = None

    def settings(self) -> Settings:
        """The worker's settings (no command line: the SDK owns the worker's arguments)."""
        return load_settings([], self._environ, self._env_file)

    def get(self) -> GraphService:
        with self._lock:
            if self._service is not None:
                return self._service
            if self._error is None:
                self._service, self._error = self._load()
            if self._service is None:
                raise ModelUnavailable(self._error or "model not loaded", refresh_worker=True)
            return self._service

    def _load(self) -> tuple[GraphService | None, str | None]:
        from neuronpedia_graph.models.loading import load_model
        from neuronpedia_graph.models.spec import ModelLoadError
        from neuronpedia_graph.service import GraphService
        from neuronpedia_graph.settings import SettingsError

        try:
            settings = self.settings()
            loaded = load_model(settings)
        except (ModelLoadError, SettingsError) as exc:
            logger.error("model could not be loaded: %s", exc)
            return None, f"Model could not be loaded on this worker: {exc}"
        logger.info(
            "model %s loaded on %s/%s in %.1f s",
            loaded.spec.model_id,
            loaded.device,
            str(loaded.dtype).removeprefix("torch."),
            loaded.load_seconds,
        )
        # A worker has no /graphs routes to re-prune from, and its disk goes with it: it keeps
        # no stored attributions (so none is reused either).
        return GraphService(loaded, settings.model_copy(update={"graph_store_bytes": 0})), None
