"""The AMQP door on the real RabbitMQ, with pika as the device: captures acknowledged once
spooled, refusals dead-lettered with their reason, RPC answers, a full spool, and a site killed
mid-burst losing nothing the broker accepted."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from edge2core.config import EdgeSettings
from edge2core.edge.spool import Spool
from edge2core.sim.synthetic import render_photo
from tests.support import rabbit, waiting
from tests.support.door_site import DoorSite, open_site, site_process
from tests.support.helpers_model import TrainedModel, sku, trained_model  # noqa: F401 (fixture)
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, rabbit.needs_rabbitmq]

WAIT = 30.0


def settings_for(root: Path, site: str, **extra: object) -> EdgeSettings:
    return EdgeSettings(site=site, data_dir=root / site, doors=["amqp"], amqp_url=rabbit.AMQP_URL,
                        amqp_prefetch=8, **extra)


@pytest.fixture
def site_name() -> Iterator[str]:
    name = rabbit.unique_site("amqp")
    yield name
    rabbit.delete_site_queues(name)


@pytest.fixture
def site(tmp_path: Path, site_name: str) -> Iterator[DoorSite]:
    s = open_site(settings_for(tmp_path, site_name))
    yield s
    s.close()


def capture_key(site: str, device: str = "kiosk-1") -> str:
    return f"e2c.{site}.kiosk.{device}.capture"


def spooled(spool: Spool) -> list:
    return spool.pending(10_000)


def refused_for(reason: str) -> float:
    return REGISTRY.get_sample_value("e2c_photos_rejected_total",
                                     {"door": "amqp", "reason": reason}) or 0.0


def spool_count(spool_dir: Path) -> int:
    """Photos in a spool another process owns, read from its index without touching it."""
    if not (spool_dir / "index.db").exists():
        return 0
    db = sqlite3.connect(f"file:{spool_dir / 'index.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    finally:
        db.close()


def test_a_capture_is_spooled_with_its_headers_and_a_receipt_goes_to_reply_to(site: DoorSite) -> None:
    name = site.settings.site
    with rabbit.channel() as ch:
        reply_q = ch.queue_declare("", exclusive=True).method.queue
        rabbit.publish(ch, capture_key(name), render_photo(0, 1), reply_to=reply_q,
                       correlation_id="c-1", headers={"sku": sku(2)}, timestamp=1_764_000_000)
        got: list[tuple[object, bytes]] = []
        waiting.wait_until(lambda: got.extend(
            (p, b) for m, p, b in [ch.basic_get(reply_q, auto_ack=True)] if m) or got,
            WAIT, "the receipt")
    props, body = got[0]
    receipt = json.loads(body)
    assert props.correlation_id == "c-1" and props.type == "receipt"  # type: ignore[attr-defined]
    [item] = spooled(site.spool)
    assert item.record.sha256 == receipt["sha256"] and receipt["duplicate"] is False
    assert (item.record.sku, item.record.device, item.record.source.value) == (sku(2), "kiosk-1", "kiosk")
    assert item.record.captured_at is not None and item.record.captured_at.year == 2025
    assert rabbit.queue_depth(f"e2c.{name}.capture") == 0


def test_refusals_are_dead_lettered_with_their_reason_and_the_door_keeps_going(site: DoorSite) -> None:
    name = site.settings.site
    with rabbit.channel() as ch:
        rabbit.publish(ch, capture_key(name), b"\xff\xd8\xff not really a jpeg", headers={"sku": sku(1)})
        rabbit.publish(ch, capture_key(name), render_photo(1, 1))  # a kiosk capture needs its sku
        rabbit.publish(ch, capture_key(name, "bad*device"), render_photo(1, 2), headers={"sku": sku(1)})
        rabbit.publish(ch, capture_key(name), render_photo(1, 3), headers={"sku": sku(1)})
    waiting.wait_until(lambda: rabbit.queue_depth(f"e2c.{name}.refused") == 3, WAIT, "3 dead letters")
    letters = rabbit.drain(f"e2c.{name}.refused")
    reasons = sorted(p.headers["x-e2c-reason"] for p, _b in letters)
    assert reasons == ["corrupt", "invalid_id", "malformed"], reasons
    corrupt = next(b for p, b in letters if p.headers["x-e2c-reason"] == "corrupt")
    assert corrupt == b"\xff\xd8\xff not really a jpeg"  # the original body, kept for an operator
    waiting.wait_until(lambda: len(spooled(site.spool)) == 1, WAIT, "the good capture")
    assert rabbit.queue_depth(f"e2c.{name}.capture") == 0


def test_recognition_requests_are_answered_to_reply_to_with_their_correlation_id(
    tmp_path: Path, site_name: str, trained_model: TrainedModel,  # noqa: F811
) -> None:
    s = open_site(settings_for(tmp_path, site_name))
    try:
        with rabbit.channel() as ch:
            reply_q = ch.queue_declare("", exclusive=True).method.queue
            key = f"e2c.{site_name}.shopper.phone-1.recognize"
            replies: dict[str, tuple[object, bytes]] = {}

            def collect(n: int) -> bool:
                method, props, body = ch.basic_get(reply_q, auto_ack=True)
                if method is not None:
                    replies[str(props.correlation_id)] = (props, body)
                return len(replies) == n

            rabbit.publish(ch, key, render_photo(0, 100), reply_to=reply_q, correlation_id="before")
            waiting.wait_until(lambda: collect(1), WAIT, "the answer without a model")
            s.catalogue.replace(list(trained_model.products))
            s.gateway.recognizer.load(trained_model.path, version=1, sha256=trained_model.sha256)
            rabbit.publish(ch, key, render_photo(0, 101), reply_to=reply_q, correlation_id="after")
            rabbit.publish(ch, key, render_photo(0, 102), reply_to=reply_q)  # no id: refused
            waiting.wait_until(lambda: collect(3), WAIT, "three replies")
    finally:
        s.close()
    assert json.loads(replies["after"][1])["model_version"] == 1
    assert replies["after"][0].type == "answer"  # type: ignore[attr-defined]
    assert json.loads(replies["before"][1])["error"] == "no_model"
    assert json.loads(replies["None"][1])["error"] == "malformed"


def test_a_full_spool_leaves_the_capture_unacknowledged_until_there_is_room(
    tmp_path: Path, site_name: str
) -> None:
    settings = settings_for(tmp_path, site_name, spool_budget_bytes=1000)
    s = open_site(settings)
    try:
        before = refused_for("spool_full")
        with rabbit.channel() as ch:
            rabbit.publish(ch, capture_key(site_name), render_photo(2, 1), headers={"sku": sku(2)})
        waiting.wait_until(lambda: refused_for("spool_full") > before, WAIT, "a spool_full refusal")
        assert spooled(s.spool) == [] and rabbit.queue_depth(f"e2c.{site_name}.refused") == 0
    finally:
        s.close()
    # Unacknowledged, so the broker still has it: a site with room takes it.
    waiting.wait_until(lambda: rabbit.queue_depth(f"e2c.{site_name}.capture") == 1, WAIT, "kept")
    s = open_site(settings.model_copy(update={"spool_budget_bytes": 100_000_000}))
    try:
        waiting.wait_until(lambda: len(spooled(s.spool)) == 1, WAIT, "spooled once there is room")
    finally:
        s.close()


def test_a_site_killed_mid_burst_loses_nothing_the_broker_accepted(
    tmp_path: Path, site_name: str
) -> None:
    settings = settings_for(tmp_path, site_name).model_dump(mode="json")
    photos = [render_photo(i % 5, 200 + i, size=480) for i in range(40)]
    queue = f"e2c.{site_name}.capture"
    with site_process(settings) as proc:
        with rabbit.channel() as ch:
            for i, photo in enumerate(photos):
                rabbit.publish(ch, capture_key(site_name, f"kiosk-{i % 3}"), photo,
                               headers={"sku": sku(i % 5)})
        spool_dir = Path(settings["data_dir"]) / "spool"
        waiting.wait_until(lambda: spool_count(spool_dir) >= 3, WAIT, "the burst under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)
    kept = spool_count(spool_dir)
    assert kept < len(photos), "killed after the burst, not in the middle of it"
    # Every photo is durable in the spool or still the broker's (unacknowledged ones went back).
    waiting.wait_until(lambda: kept + rabbit.queue_depth(queue) >= len(photos), WAIT,
                       "every photo spooled or back in the queue")
    with site_process(settings):
        waiting.wait_until(lambda: spool_count(spool_dir) == len(photos), WAIT,
                           "every photo in the spool")
        waiting.wait_until(lambda: rabbit.queue_depth(queue) == 0, WAIT, "the queue drained")
    assert rabbit.queue_depth(f"e2c.{site_name}.refused") == 0


def test_the_door_waits_for_a_broker_that_is_down_and_reconnects_after_a_cut(
    tmp_path: Path, site_name: str
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5672))  # not listening yet: the broker is "down"
    url = rabbit.AMQP_URL.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    s = open_site(settings_for(tmp_path, site_name).model_copy(update={"amqp_url": url}))
    try:
        [door] = s.doors.running()
        assert door.status()["state"] in ("connecting", "down")  # started all the same
        proxy.open()
        waiting.wait_until(lambda: door.status()["state"] == "up", WAIT, "connected once it is up")
        with rabbit.channel() as ch:
            rabbit.publish(ch, capture_key(site_name), render_photo(4, 1), headers={"sku": sku(4)})
        waiting.wait_until(lambda: len(spooled(s.spool)) == 1, WAIT, "the first capture")
        before = door.status()["reconnects"]
        proxy.cut()
        waiting.wait_until(lambda: door.status()["reconnects"] > before, WAIT, "the cut seen")
        with rabbit.channel() as ch:  # sent while the door is away: the broker keeps it
            rabbit.publish(ch, capture_key(site_name), render_photo(4, 2), headers={"sku": sku(4)})
        waiting.wait_until(lambda: len(spooled(s.spool)) == 2, WAIT, "the capture after the cut")
        assert door.status()["state"] == "up" and door.status()["last_error"] is None
    finally:
        s.close()
        proxy.close()


class Surprise(Exception):
    pass


def test_an_unforeseen_exception_ends_in_a_dead_letter_after_bounded_attempts(site: DoorSite) -> None:
    name = site.settings.site
    calls: list[str] = []
    real_capture = site.gateway.capture

    def capture_or_raise(data: bytes, meta: object, door: str) -> object:
        if getattr(meta, "device", "") == "k-boom":
            calls.append("boom")
            raise Surprise("no handler was written for this")
        return real_capture(data, meta, door)  # type: ignore[arg-type]

    site.gateway.capture = capture_or_raise  # type: ignore[method-assign]
    with rabbit.channel() as ch:
        rabbit.publish(ch, capture_key(name, "k-boom"), render_photo(5, 1), headers={"sku": sku(5)})
        rabbit.publish(ch, capture_key(name, "k-fine"), render_photo(5, 2), headers={"sku": sku(5)})
    waiting.wait_until(lambda: rabbit.queue_depth(f"e2c.{name}.refused") == 1, WAIT, "the dead letter")
    waiting.wait_until(lambda: len(spooled(site.spool)) == 1, WAIT, "the other device's capture")
    [(props, body)] = rabbit.drain(f"e2c.{name}.refused")
    assert props.headers["x-e2c-reason"] == "internal_error"
    assert "Surprise" not in props.headers["x-e2c-detail"]  # no internals to the device
    [letter] = site.dead_letters.list()  # and kept on the edge for an operator, with the error
    assert "Surprise" in letter.error and site.dead_letters.payload(letter.id) == body
    assert len(calls) == 3  # bounded attempts, then set aside: no redelivery loop
    assert rabbit.queue_depth(f"e2c.{name}.capture") == 0
