"""What the AMQP door does with one message: the mapping of AMQP 0-9-1 onto captures and
recognition requests (docs/protocol.md, "AMQP"), and the outcome the door acts on.

Routing keys mirror the MQTT topics with dots (as RabbitMQ's MQTT plugin maps them):
`e2c.<site>.kiosk.<device>.capture` and `e2c.<site>.shopper.<device>.recognize`. The body is
the photo, or the MQTT envelope (one JSON line, a newline, the photo); AMQP headers `sku`,
`captured_at`, `request_id` override the envelope's, and the `timestamp` property stands in for
`captured_at`, `correlation_id` for `request_id`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from edge2core.common import envelope, topics
from edge2core.common.events import CaptureMeta, Source
from edge2core.common.identifiers import IdKind, is_valid
from edge2core.common.logging import get_logger
from edge2core.common.metrics import PHOTOS_REJECTED
from edge2core.edge.gateway import (
    CAPTURE_ERRORS,
    RECOGNITION_ERRORS,
    Gateway,
    MissingField,
    capture_meta,
    error_reason,
)
from edge2core.edge.inference import Answer
from edge2core.edge.spool import SpoolFull

log = get_logger(__name__)

DOOR = "amqp"
HEADER_FIELDS = ("sku", "captured_at", "request_id")


@dataclass(frozen=True)
class AmqpMessage:
    """One delivery, free of the client library's types."""

    routing_key: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    correlation_id: str | None = None
    timestamp: int | None = None  # AMQP timestamp property: seconds since the epoch


class Verdict(Enum):
    ACK = "ack"  # durable in the spool (or a duplicate of a photo that is): basic.ack
    REFUSE = "refuse"  # the device's to fix: dead-lettered with its reason, basic.reject
    REQUEUE = "requeue"  # the spool is full: not acknowledged, back to the queue after a pause


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str | None = None
    detail: str | None = None
    # A reply for the message's `reply_to` (JSON), with its AMQP `type` ("answer" or "error").
    reply: bytes | None = None
    reply_type: str | None = None


def bindings(site: str) -> dict[str, str]:
    """Queue role -> the binding key of the site's queue on the door's exchange."""
    return {
        "capture": f"{topics.ROOT}.{site}.kiosk.*.capture",
        "recognize": f"{topics.ROOT}.{site}.shopper.*.recognize",
    }


def queue_names(site: str) -> dict[str, str]:
    return {role: f"{topics.ROOT}.{site}.{role}" for role in ("capture", "recognize", "refused")}


def parse(msg: AmqpMessage, source: Source) -> tuple[CaptureMeta, bytes]:
    """The photo's metadata and bytes; raises one of the gateway's device errors."""
    info = topics.parse_topic(msg.routing_key.replace(".", "/"))
    env = envelope.decode(msg.body)
    header = dict(env.header)
    for name in HEADER_FIELDS:
        value = msg.headers.get(name)
        if isinstance(value, bytes):  # pika hands long strings back as bytes
            value = value.decode("utf-8", "replace")
        if value is not None:
            header[name] = value
    if "captured_at" not in header and msg.timestamp is not None:
        header["captured_at"] = datetime.fromtimestamp(msg.timestamp, UTC).isoformat()
    if "request_id" not in header and msg.correlation_id and is_valid(IdKind.REQUEST_ID, msg.correlation_id):
        header["request_id"] = msg.correlation_id
    return capture_meta(info, header, source), env.image


def refusal(exc: BaseException, reason: str | None = None, detail: str | None = None,
            verdict: Verdict = Verdict.REFUSE, request_id: str | None = None) -> Outcome:
    reason = reason or error_reason(exc)
    detail = detail or str(exc)[:1000]
    PHOTOS_REJECTED.labels(door=DOOR, reason=reason).inc()
    body = {"error": reason, "detail": detail, "request_id": request_id, "at": time.time()}
    return Outcome(verdict, reason, detail, json.dumps(body).encode(), "error")


class AmqpHandlers:
    """Turns AMQP messages into gateway calls. Called on the door's worker threads."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def capture(self, msg: AmqpMessage) -> Outcome:
        """Spool a kiosk capture; returns once it is durable (ACK) or refused."""
        try:
            meta, image = parse(msg, Source.KIOSK)
            receipt = self._gateway.capture(image, meta, door=DOOR)
        except CAPTURE_ERRORS as exc:
            return refusal(exc)
        except SpoolFull as exc:
            return refusal(exc, verdict=Verdict.REQUEUE)
        body = {"sha256": receipt.sha256, "size": receipt.size, "duplicate": receipt.duplicate}
        return Outcome(Verdict.ACK, reply=json.dumps(body).encode(), reply_type="receipt")

    def recognize(self, msg: AmqpMessage, reply: Any) -> None:
        """Hand a recognition request to the inference pool; `reply(outcome)` is called once
        the answer (or the refusal) is known, on the pool's thread."""
        request_id = None
        try:
            meta, image = parse(msg, Source.SHOPPER)
            request_id = meta.request_id
            if not request_id:
                raise MissingField("a recognition request needs a 'correlation_id' or "
                                   "'request_id' header")
        except RECOGNITION_ERRORS as exc:
            reply(refusal(exc, request_id=request_id))
            return

        def answered(answer: Answer | None, exc: BaseException | None) -> None:
            if answer is not None:
                reply(Outcome(Verdict.ACK, reply=answer.model_dump_json().encode(),
                              reply_type="answer"))
            elif isinstance(exc, RECOGNITION_ERRORS):
                reply(refusal(exc, request_id=request_id))
            else:
                log.error("recognition failed", routing_key=msg.routing_key, exc_info=exc)
                reply(refusal(exc or RuntimeError("no answer"), reason="internal_error",
                              detail="the edge could not process this request",
                              request_id=request_id))

        try:
            self._gateway.recognize_then(image, meta, DOOR, answered)
        except RECOGNITION_ERRORS as exc:  # Overloaded: the pool's queue is full
            reply(refusal(exc, request_id=request_id))
