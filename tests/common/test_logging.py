"""JSON logs: every logged error carries its exception (type, message, traceback) as fields,
from either role's loggers, stdlib loggers and uvicorn's own `uvicorn.error` alike."""

from __future__ import annotations

import json
import logging
import logging.config
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
import uvicorn

from edge2core.common.logging import configure_logging, get_logger
from tests.support.backends import CoreServer

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


class Captured:
    """What went to stderr (pytest's capture, which configure_logging finds there)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._text = ""

    def getvalue(self) -> str:
        self._text += self._capsys.readouterr().err
        return self._text


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[Captured]:
    """Logging and structlog restored afterwards."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {name: (lg.handlers[:], lg.propagate, lg.level)
             for name in UVICORN_LOGGERS for lg in [logging.getLogger(name)]}
    saved_structlog = structlog.get_config()
    yield Captured(capsys)
    root.handlers[:], level = saved_root
    root.setLevel(level)
    for name, (handlers, propagate, lvl) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:], lg.propagate = handlers, propagate
        lg.setLevel(lvl)
    structlog.configure(**saved_structlog)


def lines(buffer: Captured) -> list[dict[str, Any]]:
    out = []
    for line in buffer.getvalue().splitlines():
        out.append(json.loads(line))  # every line is JSON: nothing bypasses the formatter
    return out


def assert_exception(entry: dict[str, Any], type_name: str, message: str) -> None:
    exception = entry["exception"]
    assert exception["type"] == type_name, entry
    assert exception["message"] == message
    assert exception["traceback"].startswith("Traceback (most recent call last):")
    assert f"{type_name.rsplit('.', 1)[-1]}: {message}" in exception["traceback"]
    assert "exc_info" not in entry


class SensorJammed(Exception):
    pass


@pytest.mark.parametrize("role", ["edge2core.edge.forwarder", "edge2core.core.ingest.receiver"])
def test_structlog_errors_carry_the_exception(captured: Captured, role: str) -> None:
    configure_logging(json=True)
    log = get_logger(role)
    try:
        raise SensorJammed("lens covered")
    except SensorJammed:
        log.exception("capture failed", device="kiosk-1")
        log.error("also failed, said without exc_info")
    log.error("failed earlier", exc_info=ValueError("bad value"))
    log.info("all well")

    first, second, third, fourth = lines(captured)
    qualified = f"{__name__}.SensorJammed"
    assert first["event"] == "capture failed" and first["device"] == "kiosk-1"
    assert first["level"] == "error" and first["logger"] == role
    assert_exception(first, qualified, "lens covered")
    assert "raise SensorJammed" in first["exception"]["traceback"]
    assert_exception(second, qualified, "lens covered")
    assert third["exception"]["type"] == "ValueError"
    assert third["exception"]["message"] == "bad value"
    assert "exception" not in fourth and "exc_info" not in fourth


def test_stdlib_errors_carry_the_exception_and_its_cause(captured: Captured) -> None:
    configure_logging(json=True)
    try:
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("lookup failed") from exc
    except RuntimeError:
        logging.getLogger("some.library").exception("library error")
    (entry,) = lines(captured)
    assert entry["logger"] == "some.library" and entry["level"] == "error"
    assert_exception(entry, "RuntimeError", "lookup failed")
    assert "KeyError: 'missing'" in entry["exception"]["traceback"]  # the cause travels too


async def broken_app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        raise SensorJammed("the ASGI app itself failed")


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("uvicorn_config_first", [False, True],
                         ids=["log_config_none", "uvicorn_dictconfig_first"])
def test_uvicorn_exception_in_asgi_application_is_a_json_line(
    captured: Captured, uvicorn_config_first: bool
) -> None:
    if uvicorn_config_first:  # uvicorn's own config (its handlers, propagate off) came first
        logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    configure_logging(json=True)
    with CoreServer(broken_app) as server:
        response = httpx.get(f"{server.url}/", timeout=5)
        assert response.status_code == 500
        wait_for(lambda: "Exception in ASGI application" in captured.getvalue())
    entries = lines(captured)
    (entry,) = [e for e in entries if e["event"].startswith("Exception in ASGI application")]
    assert entry["logger"] == "uvicorn.error" and entry["level"] == "error"
    assert_exception(entry, f"{__name__}.SensorJammed", "the ASGI app itself failed")
    assert any(e["logger"] == "uvicorn.error" and "Uvicorn running" in e["event"]
               for e in entries) or not uvicorn_config_first


def test_edge_http_bug_is_logged_with_its_traceback(captured: Captured, tmp_path: Any) -> None:
    """The edge's own 500 path, through the same JSON lines (see test_edge_http_hardening)."""
    from fastapi.testclient import TestClient

    from edge2core.edge.api import create_edge_app
    from tests.edge.test_edge_http import MAX_BYTES, SITE, build_edge

    configure_logging(json=True)
    parts, _settings = build_edge(tmp_path, None)

    def status() -> dict:
        raise SensorJammed("status broke")

    app = create_edge_app(parts.gateway, SITE, status, MAX_BYTES)
    try:
        with TestClient(app) as client:
            assert client.get("/v1/status").status_code == 500
            assert client.get("/healthz").status_code == 200
    finally:
        parts.gateway.close()
        parts.spool.close()
    (entry,) = [e for e in lines(captured) if e["event"] == "request failed"]
    assert_exception(entry, f"{__name__}.SensorJammed", "status broke")
    assert entry["logger"] == "edge2core.common.asgi_guard"


def test_console_rendering_still_shows_the_traceback(captured: Captured) -> None:
    configure_logging(json=False)
    try:
        raise SensorJammed("on a terminal")
    except SensorJammed:
        get_logger("edge2core.edge.x").exception("seen by a person")
    text = captured.getvalue()
    assert "seen by a person" in text and "SensorJammed" in text and "on a terminal" in text


def test_threads_log_their_own_exception(captured: Captured) -> None:
    configure_logging(json=True)
    log = get_logger("edge2core.edge.worker")

    def worker() -> None:
        try:
            raise SensorJammed("in a thread")
        except SensorJammed:
            log.exception("worker failed")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    (entry,) = lines(captured)
    assert_exception(entry, f"{__name__}.SensorJammed", "in a thread")
