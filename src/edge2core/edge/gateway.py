"""What the doors do with a device's message: capture photos, answer recognition requests.

Door-independent: the MQTT and HTTP doors both call `Gateway`, so a photo is judged the same
way whichever way it came in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edge2core.common import envelope, topics
from edge2core.common.errors import DomainError
from edge2core.common.events import CaptureMeta, Source
from edge2core.common.identifiers import (
    IdKind,
    InvalidIdentifier,
    check,
    check_optional,
    is_valid,
)
from edge2core.common.images import ImageRejected
from edge2core.common.logging import get_logger
from edge2core.common.metrics import PHOTOS_REJECTED, RECOGNITION_SECONDS, RECOGNITIONS
from edge2core.common.rate_limit import RateLimited, RateLimiter
from edge2core.edge.dead_letters import DeadLetters
from edge2core.edge.devices import DeviceRefused
from edge2core.edge.inference import Answer, NoModel, Recognizer, guesses
from edge2core.edge.inference_pool import InferencePool, Overloaded
from edge2core.edge.intake import Intake, IntakeReceipt, WrongSite
from edge2core.edge.mqtt_door import Publish
from edge2core.edge.spool import SpoolFull

log = get_logger(__name__)


class MissingField(ValueError):
    pass


# Errors a device can fix by sending something else: answered, counted, then acknowledged.
DEVICE_ERRORS = (
    ImageRejected,
    RateLimited,  # over the device's rate: refused with `rate_limited`, not kept
    InvalidIdentifier,
    WrongSite,
    ValidationError,
    MissingField,
    DeviceRefused,
    envelope.MalformedMessage,
    topics.BadTopic,
)


def error_reason(exc: BaseException) -> str:
    if isinstance(exc, ImageRejected):
        return exc.reason.value
    if isinstance(exc, WrongSite):
        return "wrong_site"
    if isinstance(exc, SpoolFull):
        return "spool_full"
    if isinstance(exc, NoModel):
        return "no_model"
    if isinstance(exc, Overloaded):
        return "overloaded"
    if isinstance(exc, DeviceRefused | InvalidIdentifier):
        return exc.reason
    if isinstance(exc, DomainError):  # the shared vocabulary's stable code (`rate_limited`)
        return exc.code
    return "malformed"


def capture_meta(info: topics.TopicInfo, header: dict[str, Any], source: Source) -> CaptureMeta:
    """The message's metadata, its ids checked by the one rule (`InvalidIdentifier`)."""
    return CaptureMeta(
        site=check(IdKind.SITE, info.site),
        device=check(IdKind.DEVICE, info.device),
        source=source,
        sku=check_optional(IdKind.SKU, header.get("sku")),
        captured_at=header.get("captured_at"),
        request_id=check_optional(IdKind.REQUEST_ID, header.get("request_id")),
    )


# Errors of a recognition request that are answered to the device (not bugs of ours).
RECOGNITION_ERRORS = DEVICE_ERRORS + (NoModel, Overloaded)

# Errors of a capture that are answered to the device (SpoolFull is answered, not acked).
CAPTURE_ERRORS = DEVICE_ERRORS + (NoModel,)

# Called with the answer, or with the request's error, once it is known.
AnswerCallback = Callable[[Answer | None, BaseException | None], None]


class Gateway:
    def __init__(
        self, intake: Intake, recognizer: Recognizer, pool: InferencePool | None = None
    ) -> None:
        self.intake = intake
        self.recognizer = recognizer
        # Every recognition, HTTP or MQTT, runs on this one bounded pool.
        self.pool = pool if pool is not None else InferencePool(recognizer)
        # Spooling an unsure shopper photo must not delay the shopper's answer.
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2c-keep")
        # Whether a device may ask once more now (guests have a rate: `guests.GuestPasses`).
        self.admit: Callable[[str], bool] = lambda _device: True
        # Per-device messages and bytes per second (`common/rate_limit`), at every door.
        self.limiter: RateLimiter | None = None

    def capture(self, data: bytes, meta: CaptureMeta, door: str) -> IntakeReceipt:
        if meta.source == Source.KIOSK and not meta.sku:
            raise MissingField("a kiosk capture needs the scanned product's 'sku'")
        self._limit(meta, data, door)
        return self.intake.accept(data, meta, door=door)

    def _limit(self, meta: CaptureMeta, data: bytes, door: str) -> None:
        """RateLimited (`rate_limited`) when the device is over its rate."""
        if self.limiter is not None:
            self.limiter.check(meta.device, len(data), door)

    async def recognize_async(self, data: bytes, meta: CaptureMeta, door: str) -> Answer:
        """For the event loop: no thread waits for the answer."""
        if not self.admit(meta.device):
            raise DeviceRefused("rate_limited", "too many requests from this device: wait a minute")
        self._limit(meta, data, door)
        return self._answered(await self.pool.recognize(data, meta.request_id), data, meta, door)

    def recognize_then(
        self, data: bytes, meta: CaptureMeta, door: str, then: AnswerCallback
    ) -> None:
        """Non-blocking (paho's network thread): `then` runs on the pool's worker thread.
        Raises Overloaded at once when the queue is full, DeviceRefused (`rate_limited`)
        when the device asked too often."""
        if not self.admit(meta.device):
            raise DeviceRefused("rate_limited", "too many requests from this device: wait a minute")
        self._limit(meta, data, door)

        def done(future: Future[Answer]) -> None:
            try:
                answer = self._answered(future.result(), data, meta, door)
            except BaseException as exc:
                then(None, exc)
                return
            then(answer, None)

        self.pool.submit(data, meta.request_id).add_done_callback(done)

    def _answered(self, answer: Answer, data: bytes, meta: CaptureMeta, door: str) -> Answer:
        RECOGNITION_SECONDS.observe(answer.latency_ms / 1000)
        RECOGNITIONS.labels(door=door, outcome="recognised" if answer.recognised else "unsure").inc()
        if not answer.recognised:
            self._background.submit(self._keep, data, meta, answer)
        return answer

    def _keep(self, data: bytes, meta: CaptureMeta, answer: Answer) -> None:
        try:
            self.intake.keep_unrecognised(
                self.intake.prepare(data),
                meta,
                model_version=answer.model_version,
                confidence=answer.confidence,
                guesses=guesses(answer),
            )
        except Exception as exc:
            log.warning("could not keep an unrecognised photo", error=repr(exc))

    def close(self) -> None:
        self.pool.close(wait=True)
        self._background.shutdown(wait=True)


# What `MqttHandlers._handle` runs on a parsed message: (msg, topic, header, meta, image, publish).
_Action = Callable[
    [mqtt.MQTTMessage, topics.TopicInfo, dict[str, Any], CaptureMeta, bytes, Publish], None
]


class MqttHandlers:
    """Turns MQTT messages into gateway calls; replies and errors go back over MQTT."""

    def __init__(self, gateway: Gateway, dead_letters: DeadLetters) -> None:
        self._gateway = gateway
        self._dead_letters = dead_letters

    def on_capture_poison(self, msg: mqtt.MQTTMessage, exc: BaseException, publish: Publish) -> None:
        """A capture our code failed on every time: kept as a dead letter, then refused."""
        # paho types a payload bytes | bytearray; a received one is bytes (bytes() returns it).
        letter = self._dead_letters.keep(msg.topic, bytes(msg.payload), exc, "internal_error")
        _refuse(msg, _topic_or_none(msg.topic), {}, exc, publish, reason="internal_error",
                detail=f"the edge could not process this capture; it is kept as dead letter "
                       f"{letter.id[:12]} for an operator")

    def on_recognize_poison(
        self, msg: mqtt.MQTTMessage, exc: BaseException, publish: Publish
    ) -> None:
        _refuse(msg, _topic_or_none(msg.topic), {}, exc, publish, reason="internal_error",
                detail="the edge could not process this request")

    def on_capture(self, msg: mqtt.MQTTMessage, publish: Publish) -> bool:
        return self._handle(msg, publish, Source.KIOSK, self._capture, CAPTURE_ERRORS)

    def on_recognize(self, msg: mqtt.MQTTMessage, publish: Publish) -> bool:
        """Non-blocking: run it on the network thread of a QoS 0 door."""
        return self._handle(msg, publish, Source.SHOPPER, self._recognize, RECOGNITION_ERRORS)

    def _capture(
        self,
        _msg: mqtt.MQTTMessage,
        _info: topics.TopicInfo,
        _header: dict[str, Any],
        meta: CaptureMeta,
        image: bytes,
        _publish: Publish,
    ) -> None:
        self._gateway.capture(image, meta, door="mqtt")

    def _recognize(
        self,
        msg: mqtt.MQTTMessage,
        info: topics.TopicInfo,
        header: dict[str, Any],
        meta: CaptureMeta,
        image: bytes,
        publish: Publish,
    ) -> None:
        """Hands the photo to the inference pool and returns at once; the pool's worker
        publishes the answer (or the error) when it is known."""
        request_id = meta.request_id
        if not request_id:
            raise MissingField("a recognition request needs a 'request_id'")

        def reply(answer: Answer | None, exc: BaseException | None) -> None:
            if answer is not None:
                publish(topics.answer_topic(info.site, info.device, request_id),
                        answer.model_dump_json().encode())
            elif isinstance(exc, RECOGNITION_ERRORS):
                _refuse(msg, info, header, exc, publish)
            else:
                assert exc is not None  # the pool calls back with an answer or an error
                log.error("recognition failed", topic=msg.topic, exc_info=exc)
                _refuse(msg, info, header, exc, publish, reason="internal_error",
                        detail="the edge could not process this request")

        self._gateway.recognize_then(image, meta, "mqtt", reply)

    def _handle(
        self,
        msg: mqtt.MQTTMessage,
        publish: Publish,
        source: Source,
        action: _Action,
        errors: tuple[type[Exception], ...],
    ) -> bool:
        """True when the message is finished with (handled or refused for good). `errors` are
        the device's to fix: refused and finished with."""
        info: topics.TopicInfo | None = None
        header: dict[str, Any] = {}
        try:
            info = topics.parse_topic(msg.topic)
            env = envelope.decode(bytes(msg.payload))  # bytes: see on_capture_poison
            header = env.header
            action(msg, info, header, capture_meta(info, header, source), env.image, publish)
            return True
        except errors as exc:
            _refuse(msg, info, header, exc, publish)
            return True
        except SpoolFull as exc:
            # Not acknowledged: the broker keeps it and redelivers once there is room.
            _refuse(msg, info, header, exc, publish)
            return False


def _topic_or_none(topic: str) -> topics.TopicInfo | None:
    try:
        return topics.parse_topic(topic)
    except topics.BadTopic:
        return None


def _refuse(
    msg: mqtt.MQTTMessage,
    info: topics.TopicInfo | None,
    header: dict[str, Any],
    exc: BaseException,
    publish: Publish,
    reason: str | None = None,
    detail: str | None = None,
) -> None:
    """Count, log and answer a refusal on the device's error topic. `detail` replaces the
    exception's text when that text is ours, not the device's (no internals leak)."""
    reason = reason or error_reason(exc)
    detail = detail or str(exc)[:1000]
    PHOTOS_REJECTED.labels(door="mqtt", reason=reason).inc()
    log.info("MQTT message refused", topic=msg.topic, reason=reason, detail=detail[:300])
    if info is None or not _valid_topic_ids(info):
        return  # no error topic we could safely publish to
    request_id = header.get("request_id")
    body = {
        "reason": reason,
        "detail": detail,
        "topic": msg.topic,
        "request_id": request_id if isinstance(request_id, str) else None,
        "at": time.time(),
    }
    publish(topics.error_topic(info.site, info.role, info.device), json.dumps(body).encode())


def _valid_topic_ids(info: topics.TopicInfo) -> bool:
    return is_valid(IdKind.SITE, info.site) and is_valid(IdKind.DEVICE, info.device) and (
        info.role in ("kiosk", "shopper")
    )
