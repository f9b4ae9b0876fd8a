"""A device on the real RabbitMQ of these machines (127.0.0.1:5672, guest/guest; CI starts it):
pika clients that publish with confirms and read queues, and per-test queue clean-up."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

AMQP_URL = os.environ.get("E2C_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def broker_up(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


needs_rabbitmq = pytest.mark.skipif(
    not broker_up() and not os.environ.get("CI"),
    reason="no AMQP broker at 127.0.0.1:5672 (.ci/run starts RabbitMQ)")


@contextmanager
def channel() -> Iterator[BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        yield ch
    finally:
        if conn.is_open:
            conn.close()


def publish(ch: BlockingChannel, routing_key: str, body: bytes, exchange: str = "e2c",
            **props: Any) -> None:
    """Publish persistent and confirmed (raises if the broker did not take it or no queue
    is bound: mandatory)."""
    ch.basic_publish(exchange, routing_key, body,
                     pika.BasicProperties(delivery_mode=2, **props), mandatory=True)


def queue_depth(queue: str) -> int:
    """Messages ready in the queue (not those a live consumer holds unacknowledged)."""
    with channel() as ch:
        return int(ch.queue_declare(queue, passive=True).method.message_count)


def drain(queue: str, limit: int = 1000) -> list[tuple[Any, bytes]]:
    """Take (properties, body) of every ready message (acknowledged: removed)."""
    out = []
    with channel() as ch:
        for _ in range(limit):
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            out.append((props, body))
    return out


def delete_site_queues(site: str) -> None:
    with channel() as ch:
        for role in ("capture", "recognize", "refused"):
            ch.queue_delete(f"e2c.{site}.{role}")


def unique_site(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
