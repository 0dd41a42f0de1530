"""One typed settings object, resolved as CLI > environment > .env > defaults.

Why a hand-rolled merge instead of argparse defaults: argparse defaults would silently shadow
values from the environment and `.env`, which is exactly the bug users hit when `PORT=5010` in
`.env` was ignored. Every CLI option therefore defaults to ``None`` ("not given").
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

Backend = Literal["nnsight", "transformerlens"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]


class SettingsError(ValueError):
    """A configuration problem the user must fix; the message is shown as one line."""


class Settings(BaseModel):
    """Everything the server, the CLI and the Runpod worker can be configured with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str = "demo"
    transcoder_set: str | None = None
    neuronpedia_id: str | None = None
    secret: SecretStr | None = None
    hf_token: SecretStr | None = None
    host: str = "0.0.0.0"
    port: int = Field(5004, ge=1, le=65535)
    device: str = "auto"
    dtype: DtypeName = "auto"
    backend: Backend | None = None
    lazy_encoder: bool = False
    lazy_decoder: bool = True
    token_limit: int = Field(64, ge=1, le=100_000)
    max_feature_nodes: int = Field(10_000, ge=1)
    threads: int = Field(4, ge=2, le=64)
    torch_threads: int | None = Field(None, ge=1)
    spool_dir: Path = Path("spool")
    gzip_level: int = Field(3, ge=1, le=9)
    upload_connect_timeout: float = Field(5.0, gt=0)
    upload_read_timeout: float = Field(120.0, gt=0)
    upload_retries: int = Field(3, ge=0, le=10)
    upload_backoff: float = Field(0.5, ge=0)
    log_level: str = "INFO"
    dev: bool = False

    @field_validator("secret", "hf_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value != "auto" and not (value in ("cpu", "mps") or value.startswith("cuda")):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    def require_secret(self) -> str:
        """The server must never start open to the world, so a missing SECRET is fatal."""
        if self.secret is None or not self.secret.get_secret_value():
            raise SettingsError(
                "SECRET is not set: put SECRET=<random string> in .env or the environment "
                "(`make run` creates .env with a fresh one)"
            )
        return self.secret.get_secret_value()


# field name -> environment variable name; CLI flag is --field-name.
ENV_VARS: dict[str, str] = {
    "model_id": "MODEL_ID",
    "transcoder_set": "TRANSCODER_SET",
    "neuronpedia_id": "NEURONPEDIA_MODEL_ID",
    "secret": "SECRET",
    "hf_token": "HF_TOKEN",
    "host": "HOST",
    "port": "PORT",
    "device": "DEVICE",
    "dtype": "DTYPE",
    "backend": "BACKEND",
    "lazy_encoder": "LAZY_ENCODER",
    "lazy_decoder": "LAZY_DECODER",
    "token_limit": "TOKEN_LIMIT",
    "max_feature_nodes": "MAX_FEATURE_NODES",
    "threads": "THREADS",
    "torch_threads": "TORCH_THREADS",
    "spool_dir": "SPOOL_DIR",
    "gzip_level": "GZIP_LEVEL",
    "upload_connect_timeout": "UPLOAD_CONNECT_TIMEOUT",
    "upload_read_timeout": "UPLOAD_READ_TIMEOUT",
    "upload_retries": "UPLOAD_RETRIES",
    "upload_backoff": "UPLOAD_BACKOFF",
    "log_level": "LOG_LEVEL",
}

_BOOL_FIELDS = {"lazy_encoder", "lazy_decoder", "dev"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuronpedia-graph",
        description="Serve circuit-tracer attribution graphs over HTTP for one loaded model.",
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="demo | google/gemma-2-2b | meta-llama/Llama-3.2-1B | any HF id | local model dir "
        "(env MODEL_ID; default demo)",
    )
    parser.add_argument(
        "--transcoder-set",
        help="circuit-tracer transcoder reference: HF repo, "
        "hf:// URI, or a local directory with config.yaml (env TRANSCODER_SET)",
    )
    parser.add_argument(
        "--neuronpedia-id",
        help="the model's Neuronpedia id, written as metadata.scan (env NEURONPEDIA_MODEL_ID; "
        "default: from the model table)",
    )
    parser.add_argument("--host", help="bind address (env HOST; default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (env PORT; default 5004)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (env DEVICE; default auto)")
    parser.add_argument(
        "--dtype",
        help="auto | float32 | bfloat16 | float16 (env DTYPE; auto = "
        "bfloat16 on CUDA, float32 on CPU)",
    )
    parser.add_argument("--backend", help="nnsight | transformerlens (env BACKEND)")
    parser.add_argument(
        "--lazy-encoder",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="load transcoder encoders lazily (env LAZY_ENCODER; default off)",
    )
    parser.add_argument(
        "--lazy-decoder",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="load transcoder decoders lazily (env LAZY_DECODER; default on)",
    )
    parser.add_argument(
        "--token-limit", type=int, help="max prompt tokens incl. BOS (env TOKEN_LIMIT; default 64)"
    )
    parser.add_argument(
        "--max-feature-nodes",
        type=int,
        help="server cap for max_feature_nodes (env MAX_FEATURE_NODES; default 10000)",
    )
    parser.add_argument("--threads", type=int, help="gunicorn threads (env THREADS; default 4)")
    parser.add_argument(
        "--torch-threads", type=int, help="torch intra-op threads (env TORCH_THREADS)"
    )
    parser.add_argument(
        "--spool-dir",
        help="where graphs that failed to upload are kept (env SPOOL_DIR; default ./spool)",
    )
    parser.add_argument("--gzip-level", type=int, help="gzip level 1-9 (env GZIP_LEVEL; default 3)")
    parser.add_argument("--log-level", help="DEBUG | INFO | WARNING (env LOG_LEVEL; default INFO)")
    parser.add_argument("--env-file", default=None, help="path of the .env file (default ./.env)")
    parser.add_argument(
        "--dev",
        action="store_true",
        default=None,
        help="use Flask's development server instead of gunicorn",
    )
    return parser


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{ENV_VARS.get(name, name)}={raw!r} is not a boolean (use true/false)")


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    env_file: Path | str | None = None,
) -> Settings:
    """Resolve settings. ``env_file`` overrides ``--env-file``; both default to ``./.env``."""
    args = build_parser().parse_args(list(argv) if argv is not None else [])
    environ = os.environ if environ is None else environ
    path = Path(env_file or args.env_file or ".env")
    file_values = (
        {k: v for k, v in dotenv_values(path).items() if v is not None} if path.is_file() else {}
    )

    values: dict[str, Any] = {}
    for field, var in ENV_VARS.items():
        if var in file_values:
            values[field] = file_values[var]
        if var in environ:
            values[field] = environ[var]
    cli = vars(args)
    cli["model_id"] = cli.pop("model")
    for field in Settings.model_fields:
        if cli.get(field) is not None:
            values[field] = cli[field]
    for field in _BOOL_FIELDS:
        if isinstance(values.get(field), str):
            values[field] = _parse_bool(field, values[field])
    for field in ("transcoder_set", "neuronpedia_id", "backend", "torch_threads"):
        if values.get(field) == "":
            values[field] = None
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_VARS.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from None
