"""Structured logging: JSON lines for machines, readable lines on a terminal.

Both roles and every library (uvicorn's own `uvicorn.error` included) log through one handler.
An error's exception travels as structured fields, in JSON:

    "exception": {"type": "builtins.ValueError", "message": "...", "traceback": "Traceback ..."}

taken from `exc_info` (`log.exception(...)`, `log.error(..., exc_info=True)` or an exception
object, stdlib records alike), or, for an error logged without it while an exception is being
handled, from that exception.
"""

from __future__ import annotations

import logging
import sys
import traceback
from types import TracebackType
from typing import Any

import structlog
from structlog.types import EventDict

_ERROR_LEVELS = frozenset({"error", "critical", "exception", "fatal"})
# Loggers that libraries configure with handlers of their own; ours replace them.
_LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _exc_info(value: Any) -> ExcInfo | None:
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value
    if value:
        current = sys.exc_info()
        return current if current[1] is not None else None
    return None


def _type_name(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"


def exception_fields(exc_info: ExcInfo) -> dict[str, str]:
    """Type, message and formatted traceback (with causes) of one exception."""
    exc_type, exc, tb = exc_info
    return {
        "type": _type_name(exc_type),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc_type, exc, tb)),
    }


def capture_exception(_logger: Any, method: str, event_dict: EventDict) -> EventDict:
    """Resolve `exc_info` now (at the call, while the exception is current) into tuple form;
    an error logged without one inside an `except` block gets the exception being handled."""
    if "exc_info" in event_dict:
        info = _exc_info(event_dict.pop("exc_info"))
    elif method in _ERROR_LEVELS or event_dict.get("level") in _ERROR_LEVELS:
        info = _exc_info(True)
    else:
        info = None
    if info is not None:
        event_dict["exc_info"] = info
    return event_dict


def structured_exception(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """`exc_info` -> `exception: {type, message, traceback}` (JSON output)."""
    info = _exc_info(event_dict.pop("exc_info", None))
    if info is not None:
        event_dict["exception"] = exception_fields(info)
    return event_dict


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Route both structlog and stdlib logging through one renderer on stderr."""
    out = sys.stderr
    use_json = (not out.isatty()) if json is None else json
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        capture_exception,
    ]
    final: list[structlog.types.Processor]
    if use_json:
        final = [structured_exception, structlog.processors.JSONRenderer()]
    else:
        final = [structlog.dev.ConsoleRenderer()]  # renders exc_info as a readable traceback
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn (with its default log config) gives its loggers handlers of their own that do not
    # propagate: theirs go, so 'Exception in ASGI application' is a JSON line like any other.
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers[:] = []
        library.propagate = True
    # Access logs of every health probe drown the events that matter.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
