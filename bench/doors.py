"""Doors: photos per second acknowledged through each door with the same photos in one run,
and the camera door's CPU per camera.

    .venv/bin/python bench/doors.py [--quick]

Each door gets a burst of the same photos from 4 devices at once and a fresh site (spool,
gateway; no face detector, the same preparation for every door), and is timed from the first
photo offered to the last one acknowledged:
- MQTT: paho clients at QoS 1 on the embedded NATS server, up to 32 in flight each; the
  door's acknowledgement to the broker (time until the spool holds them all: the device's
  PUBACK comes from the broker, earlier);
- HTTP: httpx clients, POST /v1/photos, one request at a time each; the 201;
- AMQP: pika publishers (confirms) to RabbitMQ at 127.0.0.1:5672; the door's basic.ack
  (time until the spool holds them all and the queue is empty);
- folder: the files written into a watched folder (one scanner); the move to done/.
Medians over the rounds; `amqp_vs_mqtt` and `folder_vs_mqtt` are the ratios (target >= 0.8).

The camera door watches GStreamer's RTSP server (scripts/install-system-deps.sh) serving a
1280x720 15 fps H.264 clip of grocery photos with sensor noise (a still clip without it costs
next to nothing to decode), sampling at 5 fps; its CPU (this process's user+system time, less
an idle baseline of the same length) per wall second, in percent of one core. The baseline in
the same run is plain PyAV decoding of the same stream (`rtsp_decode_only_cpu_percent`):
decoding is the floor every camera pays. Target: under 15%.

Last stdout line: JSON with mqtt_photos_per_s, http_photos_per_s, amqp_photos_per_s,
folder_photos_per_s, rtsp_cpu_percent_per_camera, the ratios and the baseline.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import paho.mqtt.client as mqtt
import pika

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import PHOTOS, emit, median, say, synthetic_photos

from edge2core.common import envelope, topics
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig
from edge2core.common.net import free_port
from edge2core.config import CameraSettings, EdgeSettings, WatchedFolder
from edge2core.edge.api import create_edge_app
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.dead_letters import DeadLetters
from edge2core.edge.doors.amqp import AmqpDoor
from edge2core.edge.doors.amqp_messages import AmqpHandlers
from edge2core.edge.doors.folder import FolderDoor
from edge2core.edge.doors.http import HttpDoor
from edge2core.edge.doors.rtsp import CameraDoor
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.prepare import PreparePolicy
from edge2core.edge.service import start_doors
from edge2core.edge.spool import Spool
from tests.support.camera_clips import gstreamer_rtsp_available, make_clip, rtsp_server

DEVICES = 4
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
WAIT = 300.0


def sku(i: int) -> str:
    return f"SKU-{i % 10:04d}"


def load_photos(n: int) -> list[bytes]:
    files = PHOTOS.grocery_files()[:: max(1, 2640 // n)][:n]
    return [f.read_bytes() for f in files] if len(files) == n else synthetic_photos(n)


class Site:
    """A fresh spool and gateway for one door's round."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.spool = Spool(root / name / "spool", 10**10)
        self.gateway = Gateway(Intake(name, PreparePolicy(), self.spool),
                               Recognizer(CatalogueReplica(root / name / "catalogue.json")))

    def count(self) -> int:
        return self.spool.stats().items

    def close(self) -> None:
        self.gateway.close()
        self.spool.close()


def wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.005)


def shares(photos: list[bytes]) -> list[list[tuple[int, bytes]]]:
    return [[(i, p) for i, p in enumerate(photos) if i % DEVICES == d] for d in range(DEVICES)]


def in_parallel(fn: Callable[[int, list[tuple[int, bytes]]], None], photos: list[bytes]) -> None:
    with ThreadPoolExecutor(DEVICES) as pool:
        for future in [pool.submit(fn, d, share) for d, share in enumerate(shares(photos))]:
            future.result()


# --- one round per door -----------------------------------------------------------------------

def mqtt_round(photos: list[bytes], root: Path, nats: EmbeddedNats) -> float:
    site = Site(root, "bench-mqtt")
    settings = EdgeSettings(site=site.name, data_dir=root / site.name, mqtt_port=nats.config.mqtt_port,
                            device_auth=False)
    doors = start_doors(settings, site.gateway)
    clients = []
    for d in range(DEVICES):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-kiosk-{d}-{time.time_ns()}",
                             protocol=mqtt.MQTTv311)
        client.max_inflight_messages_set(32)
        client.connect("127.0.0.1", nats.config.mqtt_port or 0)
        client.loop_start()
        clients.append(client)

    def send(d: int, share: list[tuple[int, bytes]]) -> None:
        topic = topics.capture_topic(site.name, f"kiosk-{d}")
        infos = [clients[d].publish(topic, envelope.encode(p, {"sku": sku(i)}), qos=1) for i, p in share]
        for info in infos:
            info.wait_for_publish(WAIT)

    try:
        start = time.perf_counter()
        in_parallel(send, photos)  # the broker has them all (its PUBACKs)
        wait_for(lambda: site.count() == len(photos), "MQTT photos spooled")  # and the edge too
        elapsed = time.perf_counter() - start
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        for door in doors:
            door.stop()
        site.close()
    return len(photos) / elapsed


def http_round(photos: list[bytes], root: Path) -> float:
    site = Site(root, "bench-http")
    door = HttpDoor(create_edge_app(site.gateway, site.name, dict, 8 * 1024 * 1024), "127.0.0.1", free_port())
    door.start()

    def send(d: int, share: list[tuple[int, bytes]]) -> None:
        with httpx.Client(base_url=door.url, timeout=WAIT) as client:
            for i, photo in share:
                r = client.post("/v1/photos", params={"device": f"kiosk-{d}", "sku": sku(i)}, content=photo,
                                headers={"content-type": "image/jpeg"})
                r.raise_for_status()

    try:
        start = time.perf_counter()
        in_parallel(send, photos)
        elapsed = time.perf_counter() - start
    finally:
        door.stop()
        site.close()
    return len(photos) / elapsed


def amqp_round(photos: list[bytes], root: Path) -> float:
    site = Site(root, f"bench-amqp-{time.time_ns() % 10**9}")
    door = AmqpDoor(AMQP_URL, site.name, AmqpHandlers(site.gateway), DeadLetters(root / "dl"), prefetch=32)
    door.start()

    def send(d: int, share: list[tuple[int, bytes]]) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        ch = conn.channel()
        ch.confirm_delivery()
        for i, photo in share:
            ch.basic_publish("e2c", f"e2c.{site.name}.kiosk.kiosk-{d}.capture", photo,
                             pika.BasicProperties(delivery_mode=2, headers={"sku": sku(i)}), mandatory=True)
        conn.close()

    try:
        start = time.perf_counter()
        in_parallel(send, photos)
        wait_for(lambda: site.count() == len(photos), "AMQP photos spooled")
        elapsed = time.perf_counter() - start
    finally:
        door.stop()
        site.close()
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        for role in ("capture", "recognize", "refused"):
            conn.channel().queue_delete(f"e2c.{site.name}.{role}")
        conn.close()
    return len(photos) / elapsed


def folder_round(photos: list[bytes], root: Path) -> float:
    site = Site(root, "bench-folder")
    drop = root / "drop"
    door = FolderDoor(WatchedFolder(path=drop, device="scanner-1", settle_s=0.2, poll_s=0.05),
                      site.name, site.gateway, workers=DEVICES)
    door.start()
    try:
        start = time.perf_counter()
        for i, photo in enumerate(photos):
            (drop / sku(i)).mkdir(exist_ok=True)
            (drop / sku(i) / f"{i}.jpg").write_bytes(photo)
        wait_for(lambda: door.status()["done"] == len(photos), "folder photos done")
        elapsed = time.perf_counter() - start
    finally:
        door.stop()
        site.close()
    return len(photos) / elapsed


# --- the camera ---------------------------------------------------------------------------------

def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_percent(run: Callable[[threading.Event], None], window_s: float, idle: float) -> float:
    """This process's CPU over `window_s` while `run` works (after a 2 s warm-up), less `idle`
    (the idle process's CPU per second), in percent of one core."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(2.0)
    c0, t0 = cpu_s(), time.perf_counter()
    time.sleep(window_s)
    used, wall = cpu_s() - c0, time.perf_counter() - t0
    stop.set()
    thread.join(30)
    return round(100 * (used / wall - idle), 2)


def camera_cpu(photos: list[bytes], root: Path, window_s: float) -> dict[str, float | None]:
    if not gstreamer_rtsp_available():
        say("no GStreamer RTSP server: camera CPU not measured (scripts/install-system-deps.sh)")
        return {"rtsp_cpu_percent_per_camera": None, "rtsp_decode_only_cpu_percent": None}
    # Each measurement opens its own session, which plays the clip from its start in real time.
    scenes = photos[:: max(1, len(photos) // 6)][:6]
    say("encoding the camera clip (1280x720, 15 fps, sensor noise)")
    clip = make_clip(root / "camera.mkv", scenes, seconds_each=(window_s + 6) / len(scenes), fps=15, size=(1280, 720),
                     noise=3.0)
    c0, t0 = cpu_s(), time.perf_counter()
    time.sleep(3.0)
    idle = (cpu_s() - c0) / (time.perf_counter() - t0)
    with rtsp_server(clip) as server:
        def decode_only(stop: threading.Event) -> None:
            with av.open(server.url, options={"rtsp_transport": "tcp"}, timeout=(10, 10)) as c:
                stream = c.streams.video[0]
                stream.thread_type = "AUTO"
                for _frame in c.decode(stream):
                    if stop.is_set():
                        break

        def camera_door(stop: threading.Event) -> None:
            site = Site(root, "bench-camera")
            door = CameraDoor(CameraSettings(name="cam-1", url=server.url, sample_fps=5), site.name,
                              site.gateway, lambda _s, _p: None)
            door.start()
            stop.wait()
            say(f"camera door: {door.status()['frames_decoded']} frames decoded, "
                f"{door.status()['frames_sampled']} sampled, {door.status()['frames_kept']} kept")
            door.stop()
            site.close()

        baseline = cpu_percent(decode_only, window_s, idle)
        say(f"decode only: {baseline}% of a core")
        ours = cpu_percent(camera_door, window_s, idle)
        say(f"camera door at 5 fps: {ours}% of a core")
    return {"rtsp_cpu_percent_per_camera": ours, "rtsp_decode_only_cpu_percent": baseline}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="about a minute")
    args = parser.parse_args()
    n, rounds, window = (120, 3, 6.0) if args.quick else (400, 5, 20.0)
    photos = load_photos(n)
    say(f"{n} photos from {PHOTOS.describe()}, {rounds} round(s), {DEVICES} devices per door")
    rates: dict[str, list[float]] = {"mqtt": [], "http": [], "amqp": [], "folder": []}
    with tempfile.TemporaryDirectory(prefix="e2c-bench-doors-") as tmp:
        root = Path(tmp)
        cfg = NatsServerConfig.with_free_ports("e2c-bench-doors", root / "js", websocket=False)
        with EmbeddedNats(cfg, root / "nats") as nats:
            for r in range(rounds):
                for door, run in (("mqtt", lambda d: mqtt_round(photos, d, nats)),
                                  ("http", lambda d: http_round(photos, d)),
                                  ("amqp", lambda d: amqp_round(photos, d)),
                                  ("folder", lambda d: folder_round(photos, d))):
                    rate = run(root / f"{door}-{r}")
                    rates[door].append(rate)
                    say(f"round {r + 1}: {door} {rate:.1f} photos/s")
        camera = camera_cpu(photos, root, window)
    result: dict[str, object] = {f"{door}_photos_per_s": round(median(v), 1) for door, v in rates.items()}
    mqtt_rate = median(rates["mqtt"])
    result |= {"amqp_vs_mqtt": round(median(rates["amqp"]) / mqtt_rate, 3),
               "folder_vs_mqtt": round(median(rates["folder"]) / mqtt_rate, 3),
               "http_vs_mqtt": round(median(rates["http"]) / mqtt_rate, 3),
               "photos": n, "rounds": rounds, "devices": DEVICES, **camera}
    emit(result)


if __name__ == "__main__":
    main()
