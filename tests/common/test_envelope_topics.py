"""The MQTT payload envelope and topic scheme."""

from __future__ import annotations

import json

import pytest

from edge2core.common import envelope, topics
from edge2core.common.envelope import MAX_HEADER_BYTES, Envelope, MalformedMessage
from edge2core.common.topics import BadTopic, TopicInfo
from tests.support.jpegs import jpeg_bytes

# --- envelope ------------------------------------------------------------------------------


def test_round_trip_keeps_header_and_image_bytes() -> None:
    image = jpeg_bytes()
    header = {"sku": "SKU-0007", "captured_at": "2026-11-24T10:00:00+00:00"}
    payload = envelope.encode(image, header)
    assert payload.startswith(b"{") and payload.endswith(image)
    assert envelope.decode(payload) == Envelope(header=header, image=image)


def test_round_trip_when_header_strings_and_image_contain_newlines() -> None:
    image = b"\xff\xd8\xff\n\n\x00binary\nwith newlines\n"
    header = {"sku": "multi\nline", "note": "caf\u00e9 \u2615", "n": 3, "nested": {"a": [1, 2]}}
    decoded = envelope.decode(envelope.encode(image, header))
    assert decoded.header == header
    assert decoded.image == image


@pytest.mark.parametrize("header", [None, {}])
def test_no_header_encodes_as_the_bare_image(header: dict | None) -> None:
    image = jpeg_bytes()
    assert envelope.encode(image, header) == image


def test_bare_image_decodes_with_an_empty_header() -> None:
    image = jpeg_bytes()
    assert envelope.decode(image) == Envelope(header={}, image=image)
    assert envelope.decode(b"") == Envelope(header={}, image=b"")


def test_header_close_to_the_limit_is_accepted() -> None:
    header = {"pad": "x" * (MAX_HEADER_BYTES - 100)}
    payload = envelope.encode(b"IMG", header)
    assert payload.index(b"\n") < MAX_HEADER_BYTES
    assert envelope.decode(payload).header == header


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sku": "SKU-1"}',  # no newline at all
        b'{"sku": "SKU-1"}' + b"\xff\xd8\xff",  # header runs straight into the image
        json.dumps({"pad": "x" * MAX_HEADER_BYTES}).encode() + b"\n\xff\xd8\xff",  # too long
    ],
    ids=["no-newline", "no-separator", "header-over-limit"],
)
def test_header_without_a_newline_in_time_is_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedMessage, match="newline"):
        envelope.decode(payload)


@pytest.mark.parametrize(
    "line",
    [
        b"{sku: SKU-1}",
        b'{"sku": "SKU-1",}',
        b'{"sku": "SKU-1"} [1, 2]',  # an object followed by something else
        b'{"sku": "\xff\xfe"}',  # not UTF-8
    ],
    ids=["unquoted", "trailing-comma", "extra-data", "not-utf8"],
)
def test_invalid_json_header_is_malformed(line: bytes) -> None:
    with pytest.raises(MalformedMessage, match="JSON header is invalid"):
        envelope.decode(line + b"\n" + jpeg_bytes())


def test_malformed_message_is_a_value_error() -> None:
    # The doors catch ValueError-derived refusals together.
    assert issubclass(MalformedMessage, ValueError)


# --- topics --------------------------------------------------------------------------------


def test_topic_builders() -> None:
    assert topics.capture_topic("store-1", "kiosk-a") == "e2c/store-1/kiosk/kiosk-a/capture"
    assert topics.recognize_topic("store-1", "cart-7") == "e2c/store-1/shopper/cart-7/recognize"
    assert topics.answer_topic("store-1", "cart-7", "req_42") == (
        "e2c/store-1/shopper/cart-7/answer/req_42"
    )
    assert topics.error_topic("store-1", "kiosk", "kiosk-a") == "e2c/store-1/kiosk/kiosk-a/error"
    assert topics.subscriptions("store-1") == {
        "kiosk": "e2c/store-1/kiosk/+/capture",
        "shopper": "e2c/store-1/shopper/+/recognize",
    }


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (topics.capture_topic("s1", "k1"), TopicInfo("s1", "kiosk", "k1", "capture")),
        (topics.recognize_topic("s1", "c9"), TopicInfo("s1", "shopper", "c9", "recognize")),
        (topics.error_topic("s2", "kiosk", "k3"), TopicInfo("s2", "kiosk", "k3", "error")),
    ],
)
def test_parse_topic_inverts_the_builders(topic: str, expected: TopicInfo) -> None:
    assert topics.parse_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "e2c",
        "e2c/s1/kiosk/k1",  # too short
        "e2c/s1/kiosk/k1/capture/extra",  # too long
        "x2c/s1/kiosk/k1/capture",  # wrong root
        "E2C/s1/kiosk/k1/capture",  # topics are case-sensitive
        "/e2c/s1/kiosk/k1/capture",  # leading slash adds an empty level
        "e2c/s1/kiosk/k1/capture/",  # trailing slash adds an empty level
    ],
)
def test_bad_topics_raise_bad_topic(topic: str) -> None:
    with pytest.raises(BadTopic, match="e2c/<site>/<role>/<device>/<action>"):
        topics.parse_topic(topic)
