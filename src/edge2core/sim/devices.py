"""Simulated devices: kiosks that send labelled captures, shoppers that ask what a photo is."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from edge2core.common import envelope, topics
from edge2core.common.events import utcnow
from edge2core.edge.mqtt_door import MqttEndpoint, make_client
from edge2core.sim.photos import LabelledPhoto


def _connect(client: mqtt.Client, endpoint: MqttEndpoint, timeout: float = 10.0) -> None:
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(endpoint.host, endpoint.port, keepalive=30)
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise TimeoutError(f"MQTT broker {endpoint.host}:{endpoint.port} did not answer")


class Kiosk:
    """A checkout kiosk: the cashier scanned the product, so each photo carries its SKU."""

    def __init__(self, endpoint: MqttEndpoint, site: str, device: str) -> None:
        self.site = site
        self.device = device
        self._client = make_client(endpoint, f"{device}-sim")  # a device uses ids of its own
        _connect(self._client, endpoint)

    def send(
        self,
        photos: Iterable[LabelledPhoto],
        on_acked: Callable[[LabelledPhoto], None] = lambda _p: None,
        timeout: float = 30.0,
    ) -> int:
        """Publish at QoS 1 and wait for each PUBACK: the broker has it durably then."""
        topic = topics.capture_topic(self.site, self.device)
        acked = 0
        for photo in photos:
            header = {"sku": photo.product.sku, "captured_at": utcnow().isoformat()}
            info = self._client.publish(topic, envelope.encode(photo.data, header), qos=1)
            try:
                info.wait_for_publish(timeout=timeout)
            except RuntimeError:  # paho: the connection is down and the queue is full
                continue
            if info.is_published():
                acked += 1
                on_acked(photo)
        return acked

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass(frozen=True)
class Reply:
    body: dict[str, Any]
    seconds: float
    error: bool


class Shopper:
    """A shopper's phone: sends a photo, waits for the answer on its own reply topic."""

    def __init__(self, endpoint: MqttEndpoint, site: str, device: str) -> None:
        self.site = site
        self.device = device
        self._pending: dict[str, tuple[threading.Event, list[Reply], float]] = {}
        self._lock = threading.Lock()
        self._client = make_client(endpoint, f"{device}-sim")
        self._client.on_message = self._on_message
        _connect(self._client, endpoint)
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.subscribe(
            [
                (topics.answer_topic(site, device, "+"), 1),
                (topics.error_topic(site, "shopper", device), 1),
            ]
        )
        if not subscribed.wait(10):
            raise TimeoutError("the broker did not confirm the shopper's subscriptions")

    def ask(self, image: bytes, timeout: float = 30.0) -> Reply:
        request_id = uuid.uuid4().hex[:16]
        done = threading.Event()
        box: list[Reply] = []
        start = time.perf_counter()
        with self._lock:
            self._pending[request_id] = (done, box, start)
        payload = envelope.encode(image, {"request_id": request_id})
        self._client.publish(topics.recognize_topic(self.site, self.device), payload, qos=1)
        if not done.wait(timeout):
            with self._lock:
                self._pending.pop(request_id, None)
            raise TimeoutError(f"no answer to request {request_id} within {timeout}s")
        return box[0]

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        arrived = time.perf_counter()
        body = json.loads(msg.payload)
        is_error = msg.topic.endswith("/error")
        request_id = body.get("request_id")
        with self._lock:
            waiting = self._pending.pop(request_id or "", None)
        if waiting is None:
            return
        done, box, start = waiting
        box.append(Reply(body=body, seconds=arrived - start, error=is_error))
        done.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
