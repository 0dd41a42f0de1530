"""One typed settings object, declared once, resolved as CLI > environment > .env > defaults.

Each setting is one field below: its environment variable is the field name in capitals, its
command-line flag is ``--field-name``, and its help text is the field's description. The
command-line parser is generated from the fields, so nothing is listed twice. pydantic-settings
does the environment and ``.env`` reading; command-line values are passed as init arguments,
which it ranks above both. Every CLI option defaults to "not given", so a flag's default can
never shadow a value from the environment or ``.env`` (the bug users hit when ``PORT=5010`` in
``.env`` was ignored).
"""

from __future__ import annotations

import argparse
import contextvars
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, Field, JsonValue, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from neuronpedia_graph.upload.guard import DEFAULT_ALLOWED_HOSTS, validate_allowed_hosts

Backend = Literal["nnsight", "transformerlens"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
PruneName = Literal["lean", "circuit-tracer"]

# Set only while `load_settings` runs: (environment or None for the process's, .env path).
# Settings built directly (tests, code) take their arguments and defaults only, so they never
# depend on whatever the surrounding shell happens to export.
_SOURCES: contextvars.ContextVar[tuple[Mapping[str, str] | None, Path] | None] = (
    contextvars.ContextVar("npg_settings_sources", default=None)
)


T = TypeVar("T")


class SettingsError(ValueError):
    """A configuration problem the user must fix; the message is shown as one line."""


def _setting(
    default: T,
    help: str,
    *,
    cli: bool = True,
    flag: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> T:
    """A settings field; ``cli=False`` keeps secrets off the command line (and shell history),
    ``flag`` names a command-line option that is not ``--field-name``; ``ge`` ... ``lt`` are
    numeric bounds (None: no bound, as pydantic reads it).

    Typed as returning its default, as pydantic's `Field` is typed as returning `Any`: the
    annotation `port: int = _setting(5004, ...)` is then checked against the default.
    """
    extra: dict[str, JsonValue] = {"cli": cli, "flag": flag}
    field: T = Field(default, description=help, json_schema_extra=extra, ge=ge, gt=gt, le=le, lt=lt)
    return field


class Settings(BaseSettings):
    """Everything the server, the CLI and the Runpod worker can be configured with."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", env_ignore_empty=True, case_sensitive=False
    )

    model_id: str = _setting(
        "demo",
        "demo | google/gemma-2-2b | meta-llama/Llama-3.2-1B | any HF id | local model dir",
    )
    transcoder_set: str | None = _setting(
        None,
        "transcoder set: a known name (gemma, llama, ...), HF repo, hf:// URI, or a local "
        "directory with config.yaml",
    )
    neuronpedia_model_id: str | None = _setting(
        None,
        "Neuronpedia model id written as the graph's scan (overrides the model table)",
        flag="--neuronpedia-id",
    )
    secret: SecretStr | None = _setting(None, "clients send it as x-secret-key", cli=False)
    hf_token: SecretStr | None = _setting(None, "Hugging Face token", cli=False)
    host: str = _setting("0.0.0.0", "bind address")
    port: int = _setting(5004, "port", ge=1, le=65535)
    device: str = _setting("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: DtypeName = _setting("auto", "auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA)")
    backend: Backend | None = _setting(None, "nnsight | transformerlens (default: the preset's)")
    lazy_encoder: bool = _setting(False, "load transcoder encoders lazily")
    lazy_decoder: bool = _setting(True, "load transcoder decoders lazily")
    token_limit: int = _setting(
        64, "max prompt tokens for graphs (BOS not counted)", ge=1, le=100_000
    )
    forward_pass_token_limit: int = _setting(
        2048, "max prompt tokens for /forward-pass and /steer (BOS not counted)", ge=1, le=1_000_000
    )
    max_feature_nodes: int = _setting(10_000, "server cap for max_feature_nodes", ge=1)
    max_graph_links: int = _setting(2_000_000, "largest graph (links) served or uploaded", ge=1)
    max_graph_bytes: int = _setting(
        256 * 1024 * 1024, "largest graph JSON (bytes) sent directly in a reply", ge=1
    )
    prune: PruneName = _setting(
        "lean", "graph pruning: lean (exact, ~6x less memory) | circuit-tracer (the library's)"
    )
    threads: int = _setting(4, "gunicorn request threads", ge=2, le=64)
    torch_threads: int | None = _setting(None, "torch intra-op threads", ge=1)
    spool_dir: Path = _setting(Path("spool"), "where graphs that failed to upload are kept")
    spool_max_bytes: int = _setting(
        2 * 1024**3,
        "the most the spool may hold (bytes); the oldest files go first, never one still "
        "being uploaded",
        ge=1,
    )
    spool_max_age: float = _setting(
        7 * 24 * 3600.0, "seconds a spooled graph is kept (default 7 days)", gt=0
    )
    gzip_level: int = _setting(3, "gzip level 1-9", ge=1, le=9)
    upload_connect_timeout: float = _setting(5.0, "upload connect timeout (s)", gt=0)
    upload_read_timeout: float = _setting(120.0, "upload read timeout (s)", gt=0)
    upload_retries: int = _setting(3, "upload retries after the first attempt", ge=0, le=10)
    upload_backoff: float = _setting(0.5, "upload retry backoff factor (s)", ge=0)
    upload_deadline: float = _setting(
        300.0,
        "the longest one upload may take in all (s): every attempt, retry wait and 1xx reply",
        gt=0,
    )
    upload_allowed_hosts: Annotated[str, AfterValidator(validate_allowed_hosts)] = _setting(
        DEFAULT_ALLOWED_HOSTS,
        "comma-separated hosts signed_url may upload to: names, patterns (*.domain, "
        "s3.*.amazonaws.com), IPs or CIDRs (only exact names and IPs may resolve to internal "
        "addresses); default: the S3, R2 and GCS presigned endpoints",
    )
    upload_workers: int = _setting(
        4, "upload slots: graphs uploading at once, each on its own thread", ge=1, le=64
    )
    request_read_timeout: float = _setting(
        30.0, "seconds a client has to send a whole request before it is dropped", gt=0
    )
    job_queue_size: int = _setting(
        16, "graph jobs that may wait in the queue (POST /graphs); full: 503", ge=1, le=10_000
    )
    graph_store_dir: Path = _setting(
        Path("graph-store"), "where job records and finished job documents are kept"
    )
    graph_store_bytes: int = _setting(
        20 * 1024**3,
        "bytes of stored attributions (re-prune, reuse) kept; least recently used go first",
        ge=0,
    )
    job_event_streams: int = _setting(
        256, "event streams (GET /graphs/<id>/events) open at once; more: 503", ge=1, le=10_000
    )
    job_events_heartbeat: float = _setting(
        15.0, "seconds between heartbeat events on a job's event stream", gt=0
    )
    idle_timeout: float = _setting(
        10.0, "seconds a new connection may stay silent before it is closed", gt=0
    )
    max_connections: int = _setting(
        1000,
        "connections the server holds at once; at the limit the oldest idle one is closed",
        ge=16,
    )
    request_buffer_budget: int = _setting(
        64 * 1024 * 1024,
        "bytes of partial requests buffered, all clients together; over it the largest gets 503",
        ge=1024 * 1024,
    )
    write_timeout: float = _setting(
        30.0, "seconds a response may wait for its client to read any of it before closing", gt=0
    )
    log_level: str = _setting("INFO", "DEBUG | INFO | WARNING")
    viewer: bool = _setting(True, "serve the graph viewer page at /")
    dev: bool = _setting(False, "use Flask's development server instead of gunicorn")

    @field_validator(
        "secret", "hf_token", "transcoder_set", "backend", "neuronpedia_model_id", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value != "auto" and not (value in ("cpu", "mps") or value.startswith("cuda")):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = _SOURCES.get()
        if sources is None:
            return (init_settings,)
        environ, env_file = sources
        return (
            init_settings,
            _EnvironSource(settings_cls, environ),
            DotEnvSettingsSource(settings_cls, env_file=env_file if env_file.is_file() else None),
        )

    def require_secret(self) -> str:
        """The server must never start open to the world, so a missing SECRET is fatal."""
        if self.secret is None or not self.secret.get_secret_value():
            raise SettingsError(
                "SECRET is not set: put SECRET=<random string> in .env or the environment "
                "(`make run` creates .env with a fresh one)"
            )
        return self.secret.get_secret_value()


class _EnvironSource(EnvSettingsSource):
    """The environment source, reading the mapping given to `load_settings` when there is one."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None) -> None:
        self._given = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self._given is None:
            return super()._load_env_vars()
        return {k.lower(): v for k, v in self._given.items() if v != ""}


def env_var(field: str) -> str:
    """The environment variable that sets `field` (pydantic-settings' case-insensitive name)."""
    return field.upper()


def _cli_fields() -> dict[str, FieldInfo]:
    return {
        name: info
        for name, info in Settings.model_fields.items()
        if name != "model_id" and _extra(info).get("cli", True)
    }


def _flag(name: str) -> str:
    """The command-line flag of settings field `name`."""
    flag = _extra(Settings.model_fields[name]).get("flag")
    return flag if isinstance(flag, str) else "--" + name.replace("_", "-")


def _extra(info: FieldInfo) -> dict[str, JsonValue]:
    """The `cli` and `flag` marks `_setting` stores on a field."""
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def build_parser(
    prog: str = "neuronpedia-graph",
    *,
    only: Collection[str] | None = None,
    usage: str | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """The command line, generated from the settings fields.

    Args:
        prog: the program name shown in help.
        only: the fields to offer as flags (default: every command-line field).
        usage: the usage line (default: the server's, which also names `describe`).
        description: the help text above the flags (default: the server's).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=usage
        or f"{prog} [MODEL] [options]\n       {prog} describe MODEL [--transcoder-set SET] "
        "[--neuronpedia-id ID] [--backend B]",
        description=description
        or "Serve circuit-tracer attribution graphs over HTTP for one loaded model. "
        "`describe MODEL` prints, as one JSON object, what a start would load (no weights, no "
        "network, no SECRET needed).",
    )
    model_help = Settings.model_fields["model_id"].description
    parser.add_argument("model", nargs="?", default=None, help=f"{model_help} (env MODEL_ID)")
    for name, info in _cli_fields().items():
        if only is not None and name not in only:
            continue
        help_text = f"{info.description} (env {env_var(name)}; default {info.default})"
        if info.annotation is bool:
            parser.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(_flag(name), dest=name, help=help_text)
    parser.add_argument("--env-file", default=None, help="path of the .env file (default ./.env)")
    return parser


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    env_file: Path | str | None = None,
) -> Settings:
    """Resolve settings from the command line, the environment and a .env file.

    Args:
        argv: command-line arguments (without the program name); None means none.
        environ: the environment to read; None means the process environment.
        env_file: the .env path; overrides ``--env-file``; both default to ``./.env``.

    Returns:
        The frozen settings.

    Raises:
        SettingsError: a value is invalid; the message names its environment variable.
    """
    args = vars(build_parser().parse_args(list(argv) if argv is not None else []))
    path = Path(env_file or args.pop("env_file") or ".env")
    cli = {k: v for k, v in args.items() if k in Settings.model_fields and v is not None}
    if args.get("model") is not None:
        cli["model_id"] = args["model"]
    token = _SOURCES.set((environ, path))
    try:
        return Settings(**cli)
    except ValidationError as exc:
        problems = "; ".join(_problem(err, from_cli=cli.keys()) for err in exc.errors())
        raise SettingsError(f"invalid configuration: {problems}") from None
    finally:
        _SOURCES.reset(token)


def _problem(err: ErrorDetails, from_cli: Iterable[str]) -> str:
    """One invalid value: named as the user gave it (flag or env var), with the value given.

    Secret values are never repeated.
    """
    name = str(err["loc"][0]) if err["loc"] else ""
    if name not in Settings.model_fields:
        return f"settings: {err['msg']}"
    where = (_flag(name) if name != "model_id" else "MODEL") if name in from_cli else env_var(name)
    given = err.get("input")
    secret = "SecretStr" in str(Settings.model_fields[name].annotation)
    shown = "" if secret or isinstance(given, dict) else f" (given {given!r})"
    return f"{where}{shown}: {err['msg']}"
