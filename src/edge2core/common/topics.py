"""The MQTT topic scheme (documented in docs/protocol.md)."""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "e2c"


class BadTopic(ValueError):
    pass


def capture_topic(site: str, device: str) -> str:
    return f"{ROOT}/{site}/kiosk/{device}/capture"


def recognize_topic(site: str, device: str) -> str:
    return f"{ROOT}/{site}/shopper/{device}/recognize"


def answer_topic(site: str, device: str, request_id: str) -> str:
    return f"{ROOT}/{site}/shopper/{device}/answer/{request_id}"


def error_topic(site: str, role: str, device: str) -> str:
    return f"{ROOT}/{site}/{role}/{device}/error"


def subscriptions(site: str) -> dict[str, str]:
    return {
        "kiosk": f"{ROOT}/{site}/kiosk/+/capture",
        "shopper": f"{ROOT}/{site}/shopper/+/recognize",
    }


@dataclass(frozen=True)
class TopicInfo:
    site: str
    role: str
    device: str
    action: str


def parse_topic(topic: str) -> TopicInfo:
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT:
        raise BadTopic(f"{topic!r} is not e2c/<site>/<role>/<device>/<action>")
    return TopicInfo(site=parts[1], role=parts[2], device=parts[3], action=parts[4])
