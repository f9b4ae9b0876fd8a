"""Deletes retained device messages from the broker: a photo is never kept there raw.

A kiosk that publishes its capture with the MQTT retain flag asks the broker to keep the raw,
unstripped photo for good and to hand it to every new subscriber (field case R3). No broker
setting forbids retain on a topic where publishing is allowed (nats-server stores retained
messages with its own JetStream client after the permission check), so the edge sweeps: every
`every_s` it subscribes afresh on a clean session, which makes the broker send what it retains
(flagged retain=1), and deletes each with an empty retained publish (MQTT's own way). The
capture itself is ingested once, by the capture door, from its live copy.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from edge2core.common.logging import get_logger
from edge2core.common.metrics import MQTT_RETAINED_CLEARED
from edge2core.edge.mqtt_door import MqttEndpoint, make_client

log = get_logger(__name__)


class RetainedSweeper:
    def __init__(
        self, endpoint: MqttEndpoint, client_id: str, filters: list[str], every_s: float = 5.0
    ) -> None:
        self._endpoint = endpoint
        self._filters = filters
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2c-retained-sweeper", daemon=True)
        self.client = make_client(endpoint, client_id)
        self.client.on_message = self._on_message
        self.cleared = 0

    def start(self) -> None:
        self.client.connect(self._endpoint.host, self._endpoint.port, keepalive=30)
        self.client.loop_start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def sweep(self, listen_s: float = 1.0) -> None:
        """Subscribe for a moment: the broker answers a new subscription with what it retains.
        Unsubscribed in between, so live photos do not flow to this client too."""
        if not self.client.is_connected():
            return
        self.client.subscribe([(f, 0) for f in self._filters])
        self._stop.wait(listen_s)
        self.client.unsubscribe(self._filters)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.sweep()
            except Exception:
                log.exception("retained sweep failed")

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain or not msg.payload:
            return  # a live message, or a deletion: nothing kept
        client.publish(msg.topic, b"", qos=1, retain=True)
        self.cleared += 1
        MQTT_RETAINED_CLEARED.inc()
        log.warning("deleted a retained device message from the broker: devices must not "
                    "publish with the retain flag", topic=msg.topic, size=len(msg.payload))
