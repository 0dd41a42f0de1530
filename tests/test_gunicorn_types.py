"""The typed gunicorn boundary (`serving/gunicorn_types.py`) matches the gunicorn we run.

gunicorn ships no types, so mypy cannot check our Protocols against it: these tests do, on
gunicorn's real classes and instances. Every member a Protocol names must exist on the real
object, and every method must accept the arguments the Protocol says we pass. Our subclasses'
overrides must still name methods of gunicorn's classes (a renamed method would leave our
override silently unused). An upgrade that renames or drops something fails here.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import Response
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import TConn, ThreadWorker
from typing_extensions import get_protocol_members

from neuronpedia_graph.serving import gunicorn_types as gt
from neuronpedia_graph.serving.access_log import RedactingLogger
from neuronpedia_graph.serving.reload_policy import LogLevelChannel, arbiter_class
from neuronpedia_graph.serving.stream_handoff import HandoffWorkerMixin
from neuronpedia_graph.serving.worker import (
    BufferedThreadWorker,
    _BufferedRequestParser,
    _Conn,
    _Outbox,
)
from neuronpedia_graph.settings import Settings
from testkit.protocols import conformance_problems

ALL_PROTOCOLS = [
    gt.ClientSocket,
    gt.GthreadConnection,
    gt.GunicornApplication,
    gt.GunicornArbiter,
    gt.GunicornConfig,
    gt.GunicornLogger,
    gt.GunicornRequest,
    gt.GunicornResponse,
    gt.GunicornWorker,
]


def mismatches(protocol: type, obj: object) -> list[str]:
    """What `obj` lacks of `protocol` (the shared checker): members, and calls it would refuse.

    Values are not checked: a gunicorn object's values follow its life cycle (an unforked
    worker's `pid` is the string "[booting]"), and ours are built outside that cycle.
    """
    return conformance_problems(protocol, obj, check_values=False)


@pytest.fixture
def cfg() -> Config:
    return Config()


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def request_(cfg: Config) -> Request:
    raw = b"GET /health?x=1 HTTP/1.1\r\nHost: example\r\n\r\n"
    return next(RequestParser(cfg, [raw], ("127.0.0.1", 40000)))


class _App(BaseApplication):  # type: ignore[misc]
    def load_config(self) -> None:
        self.cfg.set("bind", "127.0.0.1:0")

    def load(self) -> object:
        return lambda environ, start_response: []


def test_the_checker_sees_every_member() -> None:
    request_members = {"path", "body", "_expected_100_continue"}
    assert set(get_protocol_members(gt.GunicornRequest)) == request_members
    assert set(get_protocol_members(gt.GunicornArbiter)) == {"LISTENERS", "worker_age", "run"}
    assert "is_ssl" in get_protocol_members(gt.GunicornConfig)  # a property
    assert all(get_protocol_members(protocol) for protocol in ALL_PROTOCOLS)


def test_the_checker_reports_what_an_object_lacks() -> None:
    """The check can fail: a member missing, or a method that takes fewer arguments than we pass."""
    complete = SimpleNamespace(
        is_ssl=False,
        keepalive=2,
        limit_request_line=1,
        limit_request_fields=1,
        limit_request_field_size=1,
        set=lambda name, value: None,
    )
    assert mismatches(gt.GunicornConfig, complete) == []
    del complete.limit_request_line
    assert mismatches(gt.GunicornConfig, complete) == [
        "SimpleNamespace.limit_request_line is missing"
    ]
    assert not isinstance(complete, gt.GunicornConfig)

    old_logger = SimpleNamespace(
        setup=lambda cfg: None,
        reopen_files=lambda: None,
        debug=lambda msg, *args: None,
        warning=lambda msg: None,  # takes no format arguments
        exception=lambda msg, *args: None,
        access=lambda resp, req, environ: None,  # lost request_time
    )
    problems = mismatches(gt.GunicornLogger, old_logger)
    assert [p.split(" ")[0] for p in problems] == [
        "SimpleNamespace.access",
        "SimpleNamespace.warning",
    ]
    assert all(" does not accept " in p for p in problems)


def test_config(cfg: Config) -> None:
    assert mismatches(gt.GunicornConfig, cfg) == []
    assert isinstance(cfg, gt.GunicornConfig)
    assert isinstance(cfg.keepalive, int) and cfg.is_ssl is None
    cfg.set("certfile", "/etc/ssl/cert.pem")
    assert cfg.is_ssl == "/etc/ssl/cert.pem"


def test_request_and_response(
    cfg: Config, request_: Request, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    assert mismatches(gt.GunicornRequest, request_) == []
    assert request_.path == "/health"
    assert request_._expected_100_continue is False
    response = Response(request_, socket_pair[0], cfg)
    assert mismatches(gt.GunicornResponse, response) == []


def test_our_parser_yields_a_request(cfg: Config) -> None:
    raw = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    req = next(_BufferedRequestParser(cfg, raw, ("127.0.0.1", 1), b"decoded"))
    assert isinstance(req, Request)
    assert mismatches(gt.GunicornRequest, req) == []
    assert req.body.read() == b"decoded"


def test_client_sockets(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    """Both things gunicorn's thread may write to: a real socket and our outbox."""
    assert mismatches(gt.ClientSocket, socket_pair[0]) == []
    assert mismatches(gt.ClientSocket, _Outbox(socket_pair[0])) == []


def test_logger(cfg: Config) -> None:
    assert mismatches(gt.GunicornLogger, Logger(cfg)) == []
    assert mismatches(gt.GunicornLogger, RedactingLogger(cfg)) == []


def test_connections(cfg: Config, socket_pair: tuple[socket.socket, socket.socket]) -> None:
    address = ("127.0.0.1", 8000)
    assert mismatches(gt.GthreadConnection, TConn(cfg, socket_pair[0], address, address)) == []
    assert mismatches(gt.GthreadConnection, _Conn(cfg, socket_pair[0], address, address)) == []


def test_workers(cfg: Config) -> None:
    log = Logger(cfg)
    for worker_class in (Worker, ThreadWorker, BufferedThreadWorker):
        worker = worker_class(1, os.getpid(), [], None, 30, cfg, log)
        try:
            assert mismatches(gt.GunicornWorker, worker) == [], worker_class
            # what BufferedThreadWorker declares (without a value) it uses of gunicorn's worker
            if worker_class is not Worker:
                inherited = set(BufferedThreadWorker.__annotations__) - set(
                    vars(BufferedThreadWorker)
                )
                assert {"cfg", "log", "poller", "nr_conns"} <= inherited
                for name in inherited:
                    assert hasattr(worker, name), f"{worker_class.__name__} has no {name}"
        finally:
            worker.tmp.close()


def test_application_and_arbiter() -> None:
    app = _App()
    assert mismatches(gt.GunicornApplication, app) == []
    assert isinstance(app.cfg, Config)
    arbiter = Arbiter(app)
    assert mismatches(gt.GunicornArbiter, arbiter) == []
    settings = Settings(model_id="demo", secret="s" * 16, device="cpu")
    ours = arbiter_class(settings, lambda: settings, LogLevelChannel())(app)
    assert mismatches(gt.GunicornArbiter, ours) == []


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (BufferedThreadWorker, ThreadWorker),
        (HandoffWorkerMixin, ThreadWorker),
        (_BufferedRequestParser, RequestParser),
        (RedactingLogger, Logger),
        (
            arbiter_class(Settings(model_id="demo", secret="s" * 16), Settings, LogLevelChannel()),
            Arbiter,
        ),
    ],
)
def test_our_overrides_still_override(ours: type, theirs: type) -> None:
    """Each method our subclass redefines exists on gunicorn's class with the same parameters."""
    overridden = {
        name: value
        for name, value in vars(ours).items()
        if inspect.isfunction(value) or isinstance(value, classmethod)
    }
    # our private helpers and constructors (which take their own arguments) are not overrides
    overridden = {
        name: value
        for name, value in overridden.items()
        if not name.startswith("_") or name == "__next__"
    }
    assert overridden, "nothing to compare"
    for name, value in overridden.items():
        base = getattr(theirs, name, None)
        assert base is not None, f"{theirs.__name__}.{name} is gone: our override is dead code"
        func = value.__func__ if isinstance(value, classmethod) else value
        base_func = getattr(base, "__func__", base)
        ours_params = list(inspect.signature(func).parameters)
        their_params = list(inspect.signature(base_func).parameters)
        assert len(ours_params) == len(their_params), (name, ours_params, their_params)
