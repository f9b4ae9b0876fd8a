"""An MQTT client the edge uses as a door: subscribe, handle, acknowledge when safe.

QoS 1 messages are acknowledged to the broker only after the handler says the photo is
durable (paho's manual ack); with a persistent session the broker keeps and redelivers
anything unacknowledged, so a crash of the edge loses nothing the broker accepted (captures).
A door that needs no persistence (recognition requests: an answer nobody waits for any more is
worthless after a restart) subscribes at QoS 0 on a clean session: no PUBACK per request, no
broker-side session state.

Every client made here sets TCP_NODELAY: MQTT packets are small (acks, answers), and Nagle's
algorithm holding one back until the previous one is acknowledged, with the peer's delayed ACK,
costs up to 40 ms a reply.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import paho.mqtt.client as mqtt

from edge2core.common.fsutil import write_atomic
from edge2core.common.logging import get_logger
from edge2core.common.metrics import MQTT_POISON, MQTT_REDELIVERY_SKIPPED, MQTT_RETAINED_SKIPPED
from edge2core.common.waiting import wait_until
from edge2core.edge.fair_workers import FairWorkers

log = get_logger(__name__)


@dataclass(frozen=True)
class MqttEndpoint:
    host: str
    port: int
    transport: Literal["tcp", "websockets"] = "tcp"
    username: str | None = None
    password: str | None = None
    # TLS (mqtts, wss): trust this CA file; present certfile/keyfile when the broker asks.
    ca_file: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


def make_client(
    endpoint: MqttEndpoint, client_id: str, *, persistent: bool = False, manual_ack: bool = False
) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        transport=endpoint.transport,
        clean_session=not persistent,
        manual_ack=manual_ack,
    )
    if endpoint.transport == "websockets":
        client.ws_set_options(path="/mqtt")
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.ca_file:
        # paho re-reads these files on every (re)connect: a renewed certificate is used at once.
        client.tls_set(ca_certs=endpoint.ca_file, certfile=endpoint.certfile, keyfile=endpoint.keyfile)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    client.on_socket_open = _no_delay
    return client


def private_client_id(state_dir: Path, name: str) -> str:
    """`name` plus a random suffix kept in `state_dir`: the same id on every start (the
    persistent session lives under it) but one no device can guess.

    MQTT brokers key sessions by client id alone, so a device that connected with a
    predictable edge id took over the edge's session and the broker dropped 8 of 10
    acknowledged captures (field case 14).
    """
    path = state_dir / "mqtt-client-ids.json"
    ids: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if name not in ids:
        ids[name] = f"{name}-{secrets.token_hex(12)}"
        write_atomic(path, [json.dumps(ids, indent=2).encode()])
    return ids[name]


def _no_delay(_client: mqtt.Client, _userdata: object, sock: object) -> None:
    """Called by paho on every (re)connect with the new socket (a websocket wrapper's too)."""
    raw = getattr(sock, "_socket", sock)  # paho's _WebsocketWrapper keeps the TCP socket there
    with contextlib.suppress(AttributeError, OSError):
        if raw.family in (socket.AF_INET, socket.AF_INET6):  # type: ignore[attr-defined]
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]


Publish = Callable[[str, bytes], None]
# Gets the message and a way to reply on the same connection; True means "acknowledge it",
# False "leave it with the broker for now" (e.g. the spool is full).
Handler = Callable[[mqtt.MQTTMessage, Publish], bool]
# Called with a message the handler failed on repeatedly, for reasons nobody foresaw; must
# keep it (a dead letter) before it is acknowledged. Raising leaves the message unacknowledged.
PoisonHandler = Callable[[mqtt.MQTTMessage, BaseException, Publish], None]


def _device_key(topic: str) -> str:
    """Captures are queued per device (the topic names it): fair between devices."""
    return topic


class MqttDoor:
    """Subscribes to `topics` and runs `handler` for each message.

    qos=1 (captures): a persistent session, acknowledged by hand once the handler is done.
    Handlers run on `workers` threads, fair between devices (`FairWorkers`), never on paho's
    network thread. Any exception is retried `attempts` times in the process, then the
    message goes to `on_poison` (kept as a dead letter) and is acknowledged: one bad message
    never blocks the session's in-flight window.
    qos=0 (recognition requests): a clean session, nothing to acknowledge; the handler must
    not block (it hands the work to the inference pool and replies from there).
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        client_id: str,
        topics: list[str],
        handler: Handler,
        qos: int = 1,
        *,
        on_poison: PoisonHandler | None = None,
        replay_retained: bool = True,
        workers: int = 4,
        attempts: int = 3,
        retry_pause_s: float = 0.2,
    ) -> None:
        if qos not in (0, 1):
            raise ValueError("a door subscribes at QoS 0 or 1")
        self._endpoint = endpoint
        self._topics = topics
        self._handler = handler
        self._on_poison = on_poison or _log_poison
        self._qos = qos
        # QoS 0 handlers run on the network thread: no pauses there, so no second attempt.
        self._attempts = max(1, attempts) if qos else 1
        self._retry_pause_s = retry_pause_s
        self._replay_retained = replay_retained
        self._session_present = False
        self._subscribed = threading.Event()
        # (topic, packet id) of messages a worker holds: the broker resends an unacknowledged
        # message (same packet id, DUP set) when its ack wait runs out, and a copy of one still
        # being worked on must not be handled (or dead-lettered) a second time.
        self._in_flight: set[tuple[str, int]] = set()
        self._in_flight_lock = threading.Lock()
        self._closing = False  # stopping: new messages are left to the broker to redeliver
        self.granted_qos: list[int] = []
        persistent = qos > 0
        self._workers = FairWorkers(workers, f"e2c-door-{client_id}") if persistent else None
        self.client = make_client(endpoint, client_id, persistent=persistent, manual_ack=persistent)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> None:
        self.client.connect(self._endpoint.host, self._endpoint.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(
                f"MQTT broker {self._endpoint.host}:{self._endpoint.port} did not confirm "
                f"subscriptions within {timeout}s"
            )

    def stop(self, drain_s: float = 5.0) -> None:
        """Take no new message, let the workers finish and acknowledge what they hold (up to
        `drain_s`), then disconnect. Anything not acknowledged by then is redelivered by the
        broker to the next session: at least once, never lost."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not self.in_flight(), drain_s, "in-flight MQTT messages")
        self.client.disconnect()
        self.client.loop_stop()
        if self._workers is not None:
            self._workers.close()

    def in_flight(self) -> int:
        """Messages a worker holds, not yet acknowledged."""
        with self._in_flight_lock:
            return len(self._in_flight)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def _on_connect(self, client: mqtt.Client, _u: object, flags: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("MQTT connect refused", reason=str(reason))
            return
        self._session_present = bool(getattr(flags, "session_present", False))
        # Resubscribe on every (re)connect; the broker may have lost our session.
        client.subscribe([(topic, self._qos) for topic in self._topics])

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, _mid: int, reason_codes: list, _p: object
    ) -> None:
        # What the broker granted, one per topic (0, 1, or >= 0x80 for a refusal).
        self.granted_qos = [getattr(rc, "value", rc) for rc in reason_codes]
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if self._ignored(msg):
            if self._qos:
                client.ack(msg.mid, msg.qos)
            return
        if self._workers is None:  # QoS 0: the handler only hands the work on
            self._run(msg)
            return
        key = (msg.topic, msg.mid)
        with self._in_flight_lock:
            if self._closing:
                return  # not acknowledged: the broker gives it to the next session
            if key in self._in_flight:
                MQTT_REDELIVERY_SKIPPED.inc()
                log.info("redelivery of a message still being handled skipped", topic=msg.topic, mid=msg.mid)
                return
            self._in_flight.add(key)
        self._workers.submit(_device_key(msg.topic), lambda: self._finish(client, msg, key))

    def _ignored(self, msg: mqtt.MQTTMessage) -> bool:
        """Messages that carry nothing to do.

        - An empty payload: MQTT's way of deleting a retained message (the edge's own
          `RetainedSweeper` sends them), never a photo.
        - A retained copy replayed because we subscribed again: the session that is still
          present got the live copy already. Without a session (first start, or a door with
          `replay_retained=False`'s clean session) a capture's retained copy may be the only
          one and is processed; recognition requests are never answered from a replay.
        """
        if not msg.payload:
            return True
        if msg.retain and (self._session_present or not self._replay_retained):
            MQTT_RETAINED_SKIPPED.inc()
            log.info("retained replay skipped", topic=msg.topic,
                     session_present=self._session_present)
            return True
        return False

    def _finish(self, client: mqtt.Client, msg: mqtt.MQTTMessage, key: tuple[str, int]) -> None:
        try:
            if self._run(msg):
                client.ack(msg.mid, msg.qos)
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(key)

    def _run(self, msg: mqtt.MQTTMessage) -> bool:
        """True when the message is finished with: handled, refused, or kept as a dead letter."""
        for attempt in range(1, self._attempts + 1):
            try:
                return self._handler(msg, self.publish)
            except Exception as exc:
                if attempt < self._attempts:
                    log.warning("MQTT handler failed; trying again", topic=msg.topic,
                                attempt=attempt, error=repr(exc)[:300])
                    time.sleep(self._retry_pause_s * attempt)
                    continue
                return self._poisoned(msg, exc)
        return False

    def _poisoned(self, msg: mqtt.MQTTMessage, exc: BaseException) -> bool:
        MQTT_POISON.labels(topic_kind=msg.topic.rsplit("/", 1)[-1]).inc()
        log.error("MQTT message failed every attempt; setting it aside", topic=msg.topic,
                  attempts=self._attempts, exc_info=exc)
        try:
            self._on_poison(msg, exc, self.publish)
        except Exception:
            log.exception("could not keep a failed MQTT message; the broker keeps it",
                          topic=msg.topic)
            return False
        return True


def _log_poison(msg: mqtt.MQTTMessage, exc: BaseException, _publish: Publish) -> None:
    """For doors whose messages need no keeping (recognition requests)."""
    log.error("MQTT message dropped after failures", topic=msg.topic, error=repr(exc)[:300])
