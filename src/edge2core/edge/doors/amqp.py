"""The AMQP 0-9-1 door: the site consumes captures and recognition requests from a broker it
is pointed at (RabbitMQ), with the MQTT door's guarantees.

- A capture is acknowledged (basic.ack) only after the gateway returned, i.e. after the spool's
  fsync; a crash before that leaves it unacknowledged and the broker redelivers it.
- A permanent refusal is dead-lettered with its reason: a copy goes to the `<exchange>.refused`
  exchange (queue `e2c.<site>.refused`) with headers `x-e2c-reason` / `x-e2c-detail`, published
  with confirms, and only then is the original rejected without requeue. The reason also goes
  to the message's `reply_to`, if any.
- A full spool leaves the message unacknowledged: after a pause it is returned (basic.nack,
  requeue) and tried again later, while prefetch stops the broker sending more.
- Captures run on fair per-device workers, each retried a few times in the process; one that
  fails every attempt is kept as a dead letter, then rejected: it never blocks the prefetch window.
- Recognition requests follow the RPC pattern: the answer goes to `reply_to` with the request's
  `correlation_id`. They are consumed without acks (an answer nobody waits for after a restart
  is worthless), bounded by the inference pool's queue.
- The connection is re-made with exponential backoff; status shows it.

pika's BlockingConnection is not thread-safe: only its own thread touches it; workers hand it
acks and publishes with `add_callback_threadsafe`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pika.spec import Basic, BasicProperties

from edge2core.common.logging import get_logger
from edge2core.common.metrics import MQTT_POISON
from edge2core.edge.dead_letters import DeadLetters
from edge2core.edge.doors.amqp_messages import (
    AmqpHandlers,
    AmqpMessage,
    Outcome,
    Verdict,
    bindings,
    queue_names,
    refusal,
)
from edge2core.edge.doors.plugin import Door, DoorContext
from edge2core.edge.fair_workers import FairWorkers

log = get_logger(__name__)
# pika narrates every connection step at INFO; the door logs what matters itself.
logging.getLogger("pika").setLevel(logging.WARNING)

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 15.0


def _message(method: Basic.Deliver, props: BasicProperties, body: bytes) -> AmqpMessage:
    return AmqpMessage(
        routing_key=method.routing_key or "",
        body=body,
        headers=dict(props.headers or {}),
        reply_to=props.reply_to,
        correlation_id=props.correlation_id,
        timestamp=props.timestamp,
    )


class _Link:
    """One connection and its channels; dropped whole when anything on it fails."""

    def __init__(self, params: pika.URLParameters) -> None:
        self.connection = pika.BlockingConnection(params)
        self.consume = self.connection.channel()
        self.recognize = self.connection.channel()
        self.confirmed = self.connection.channel()  # dead-letter copies: publisher confirms
        self.confirmed.confirm_delivery()
        self.replies = self.connection.channel()

    def later(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the connection's thread; a closed connection drops it (the broker
        redelivers whatever it was about to acknowledge)."""
        try:
            self.connection.add_callback_threadsafe(fn)
        except Exception as exc:
            log.info("AMQP connection gone; its deliveries will be redelivered", error=repr(exc))

    def close(self) -> None:
        if self.connection.is_open:
            try:
                self.connection.close()
            except Exception as exc:
                log.info("AMQP close failed", error=repr(exc))


class AmqpDoor:
    """Consumes `e2c.<site>.capture` and `e2c.<site>.recognize` from `url` (see module doc)."""

    name = "amqp"

    def __init__(
        self,
        url: str,
        site: str,
        handlers: AmqpHandlers,
        dead_letters: DeadLetters,
        *,
        exchange: str = "e2c",
        prefetch: int = 32,
        workers: int = 4,
        attempts: int = 3,
        retry_pause_s: float = 0.2,
        spool_full_pause_s: float = 1.0,
    ) -> None:
        self._params = pika.URLParameters(url)
        self._params.connection_attempts = 1
        self._site = site
        self._handlers = handlers
        self._dead_letters = dead_letters
        self._exchange = exchange
        self._prefetch = prefetch
        self._attempts = max(1, attempts)
        self._retry_pause_s = retry_pause_s
        self._spool_full_pause_s = spool_full_pause_s
        self._workers = FairWorkers(workers, "e2c-amqp")
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._tried = threading.Event()  # the first connection attempt is over
        self._thread: threading.Thread | None = None
        self._state = "stopped"
        self._last_error: str | None = None
        self._reconnects = 0
        self.queues = queue_names(site)

    # --- the Door interface -----------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Starts the connection thread; returns once the first connection attempt succeeded or
        failed (then the door keeps trying in the background and shows as "down"), at most
        after `timeout`."""
        self._thread = threading.Thread(target=self._run, name="e2c-amqp-door", daemon=True)
        self._state = "connecting"
        self._thread.start()
        self._tried.wait(timeout)
        if not self._ready.is_set():
            log.warning("AMQP broker not reachable yet; the door keeps trying",
                        error=self._last_error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        self._workers.close()
        self._state = "stopped"

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "state": self._state, "reconnects": self._reconnects,
                "last_error": self._last_error, "pending": self._workers.pending()}

    # --- the connection thread --------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            link: _Link | None = None
            try:
                link = _Link(self._params)
                self._declare(link)
                self._consume(link)
                self._state, self._last_error = "up", None
                self._ready.set()
                self._tried.set()
                backoff = BACKOFF_MIN_S
                while not self._stop.is_set():
                    link.connection.process_data_events(time_limit=0.2)
            except Exception as exc:  # AMQP errors, socket errors: reconnect
                self._state, self._last_error = "down", repr(exc)[:300]
                self._tried.set()
                self._reconnects += 1
                log.warning("AMQP door disconnected; reconnecting", error=self._last_error,
                            backoff_s=backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            finally:
                if link is not None:
                    link.close()

    def _declare(self, link: _Link) -> None:
        ch = link.consume
        if not self._exchange.startswith("amq."):  # amq.* exist already and may not be declared
            ch.exchange_declare(self._exchange, exchange_type="topic", durable=True)
        refused = f"{self._exchange}.refused"
        ch.exchange_declare(refused, exchange_type="topic", durable=True)
        ch.queue_declare(self.queues["capture"], durable=True)
        ch.queue_declare(self.queues["recognize"], durable=False)
        ch.queue_declare(self.queues["refused"], durable=True)
        keys = bindings(self._site)
        ch.queue_bind(self.queues["capture"], self._exchange, keys["capture"])
        ch.queue_bind(self.queues["recognize"], self._exchange, keys["recognize"])
        ch.queue_bind(self.queues["refused"], refused, f"e2c.{self._site}.#")

    def _consume(self, link: _Link) -> None:
        link.consume.basic_qos(prefetch_count=self._prefetch)
        link.consume.basic_consume(
            self.queues["capture"],
            lambda ch, method, props, body: self._on_capture(link, method, props, body))
        link.recognize.basic_consume(
            self.queues["recognize"],
            lambda ch, method, props, body: self._on_recognize(link, props, _message(method, props, body)),
            auto_ack=True)

    # --- captures ---------------------------------------------------------------------------

    def _on_capture(self, link: _Link, method: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        msg = _message(method, props, body)
        tag = method.delivery_tag
        # Fair between devices: the routing key names the device.
        self._workers.submit(msg.routing_key, lambda: self._finish(link, tag, msg))

    def _finish(self, link: _Link, tag: int, msg: AmqpMessage) -> None:
        outcome = self._handle(msg)
        if outcome.verdict is Verdict.REQUEUE:
            # Not acknowledged: wait for room, then give it back to the queue for later.
            self._stop.wait(self._spool_full_pause_s)
            link.later(lambda: link.consume.basic_nack(tag, requeue=True))
            return
        link.later(lambda: self._settle(link, tag, msg, outcome))

    def _handle(self, msg: AmqpMessage) -> Outcome:
        for attempt in range(1, self._attempts + 1):
            try:
                return self._handlers.capture(msg)
            except Exception as exc:
                if attempt < self._attempts:
                    log.warning("AMQP handler failed; trying again", routing_key=msg.routing_key,
                                attempt=attempt, error=repr(exc)[:300])
                    time.sleep(self._retry_pause_s * attempt)
                    continue
                return self._poisoned(msg, exc)
        raise AssertionError("unreachable")

    def _poisoned(self, msg: AmqpMessage, exc: BaseException) -> Outcome:
        MQTT_POISON.labels(topic_kind="amqp-capture").inc()
        log.error("AMQP message failed every attempt; setting it aside",
                  routing_key=msg.routing_key, exc_info=exc)
        try:
            letter = self._dead_letters.keep(msg.routing_key, msg.body, exc, "internal_error")
        except Exception:
            log.exception("could not keep a failed AMQP message; back to the queue")
            return Outcome(Verdict.REQUEUE)
        return refusal(exc, reason="internal_error",
                       detail=f"the edge could not process this capture; it is kept as dead "
                              f"letter {letter.id[:12]} for an operator")

    def _settle(self, link: _Link, tag: int, msg: AmqpMessage, outcome: Outcome) -> None:
        """On the connection thread: reply, dead-letter a refusal (confirmed), then ack/reject."""
        self._reply(link, msg, outcome)
        if outcome.verdict is Verdict.ACK:
            link.consume.basic_ack(tag)
            return
        headers = {**msg.headers, "x-e2c-reason": outcome.reason, "x-e2c-detail": outcome.detail,
                   "x-e2c-routing-key": msg.routing_key}
        try:
            link.confirmed.basic_publish(
                f"{self._exchange}.refused", msg.routing_key, msg.body,
                pika.BasicProperties(headers=headers, delivery_mode=2,
                                     correlation_id=msg.correlation_id),
                mandatory=True)
        except Exception as exc:  # not kept elsewhere: leave it with the broker
            log.warning("could not dead-letter a refused AMQP message; requeued", error=repr(exc))
            link.consume.basic_nack(tag, requeue=True)
            return
        link.consume.basic_reject(tag, requeue=False)
        log.info("AMQP message refused", routing_key=msg.routing_key, reason=outcome.reason)

    def _reply(self, link: _Link, msg: AmqpMessage, outcome: Outcome) -> None:
        if not msg.reply_to or outcome.reply is None:
            return
        link.replies.basic_publish(
            "", msg.reply_to, outcome.reply,
            pika.BasicProperties(correlation_id=msg.correlation_id, type=outcome.reply_type,
                                 content_type="application/json"))

    # --- recognition requests ---------------------------------------------------------------

    def _on_recognize(self, link: _Link, props: BasicProperties, msg: AmqpMessage) -> None:
        def answer(outcome: Outcome) -> None:
            link.later(lambda: self._reply(link, msg, outcome))

        try:
            self._handlers.recognize(msg, answer)
        except Exception as exc:  # ours, not the device's: answered, never raised into pika
            log.exception("AMQP recognition request failed", routing_key=msg.routing_key)
            answer(refusal(exc, reason="internal_error",
                           detail="the edge could not process this request"))


def make_doors(context: DoorContext) -> list[Door]:
    """Entry point `amqp`: one door when `amqp_url` is set, else none."""
    settings = context.settings
    if not settings.amqp_url:
        return []
    return [AmqpDoor(settings.amqp_url, settings.site, AmqpHandlers(context.gateway),
                     context.dead_letters, exchange=settings.amqp_exchange,
                     prefetch=settings.amqp_prefetch, workers=settings.capture_workers)]
