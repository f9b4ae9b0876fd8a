"""The MQTT doors as a plugin: captures (QoS 1, acknowledged once spooled) and recognition
requests (QoS 0), on the site's embedded NATS server or an external MQTT broker.

The doors themselves are `edge2core.edge.mqtt_door.MqttDoor`; this wraps them in the
`Door` interface and is what `edge up` starts through the `edge2core.doors` entry point.
"""

from __future__ import annotations

from typing import Any

from edge2core.common import topics
from edge2core.config import EdgeSettings
from edge2core.edge.broker_config import SiteAccess, mqtt_endpoint
from edge2core.edge.dead_letters import DeadLetters
from edge2core.edge.doors.plugin import Door, DoorContext
from edge2core.edge.gateway import Gateway, MqttHandlers
from edge2core.edge.mqtt_door import MqttDoor, private_client_id


def mqtt_doors_for(
    settings: EdgeSettings, gateway: Gateway, access: SiteAccess | None = None,
    dead_letters: DeadLetters | None = None,
) -> list[MqttDoor]:
    """The site's two MQTT doors, not started yet."""
    endpoint = mqtt_endpoint(settings, access)
    subs = topics.subscriptions(settings.site)
    handlers = MqttHandlers(gateway, dead_letters or DeadLetters(settings.data_dir / "dead-letters"))
    # Two connections, two network threads: a burst of captures never delays an answer.
    # Captures: QoS 1, persistent session, acked once spooled. Recognition requests: QoS 0 on a
    # clean session (worthless after a restart), handed from the network thread straight to
    # the gateway's inference pool, which HTTP requests share.
    return [
        MqttDoor(
            endpoint,
            private_client_id(settings.data_dir, f"e2c-{settings.site}-capture"),
            [subs["kiosk"]],
            handlers.on_capture,
            on_poison=handlers.on_capture_poison,
            workers=settings.capture_workers,
        ),
        MqttDoor(
            endpoint,
            private_client_id(settings.data_dir, f"e2c-{settings.site}-recognize"),
            [subs["shopper"]],
            handlers.on_recognize,
            qos=0,
            on_poison=handlers.on_recognize_poison,
            replay_retained=False,
        ),
    ]


class MqttPluginDoor:
    """An `MqttDoor` behind the `Door` interface."""

    def __init__(self, name: str, door: MqttDoor) -> None:
        self.name = name
        self.door = door
        self._state = "stopped"

    def start(self) -> None:
        self.door.start()
        self._state = "up"

    def stop(self) -> None:
        self.door.stop()
        self._state = "stopped"

    def status(self) -> dict[str, Any]:
        connected = self.door.client.is_connected()
        state = self._state if self._state == "stopped" or connected else "connecting"
        return {"name": self.name, "state": state}


def make_doors(context: DoorContext) -> list[Door]:
    """Entry point `mqtt`: the capture and recognition doors."""
    capture, recognize = mqtt_doors_for(context.settings, context.gateway, context.access,
                                        context.dead_letters)
    return [MqttPluginDoor("mqtt:capture", capture), MqttPluginDoor("mqtt:recognize", recognize)]
