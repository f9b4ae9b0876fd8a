"""A steady load on one edge site, and what the devices were told.

Three device threads run until stopped: a kiosk over MQTT (QoS 1; a photo counts as
acknowledged when its PUBACK arrives), a kiosk over HTTP (acknowledged on a 2xx, whose body
names the sha256) and a shopper asking over HTTP and MQTT. Every photo is unique and
textured (no near-duplicates), so each acknowledged photo must reach the core exactly once.
The MQTT kiosk's photos are named by the sha256 the edge's own preparation gives them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from edge2core.edge.faces import FaceRedactor
from edge2core.edge.prepare import PreparePolicy, prepare
from edge2core.sim.devices import Kiosk, Shopper
from edge2core.sim.photos import LabelledPhoto, Product
from tests.faults.cluster import KIOSK_HTTP, KIOSK_MQTT, SHOPPER, SITE, Cluster
from tests.support.backends import noisy_jpeg

# A SKU no test model knows: the edge's golden-set smoke test never judges a model on noise.
PRODUCT = Product.create("Faults test apple", 900, "Apple", 0)


@dataclass
class Devices:
    """What the devices sent and were told, with the time of each acknowledgement."""

    sent: Counter[str] = field(default_factory=Counter)  # door -> photos sent
    acked_http: dict[str, float] = field(default_factory=dict)  # sha256 -> when
    acked_mqtt: dict[int, float] = field(default_factory=dict)  # photo seed -> when
    refused: Counter[str] = field(default_factory=Counter)  # door:reason -> count
    asked: int = 0
    answered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked_after(self, at: float) -> dict[str, bool]:
        with self.lock:
            return {"http": any(t >= at for t in self.acked_http.values()),
                    "mqtt": any(t >= at for t in self.acked_mqtt.values())}

    def acknowledged(self, redactor: FaceRedactor | None) -> set[str]:
        """sha256 of every photo a device was told is kept."""
        with self.lock:
            seeds, shas = list(self.acked_mqtt), set(self.acked_http)
        policy = PreparePolicy()
        return shas | {prepare(mqtt_photo(seed), policy, redactor).sha256 for seed in seeds}


def mqtt_photo(seed: int) -> bytes:
    return noisy_jpeg(100_000 + seed)


def http_photo(seed: int) -> bytes:
    return noisy_jpeg(500_000 + seed)


class Load:
    """Start with `start()`, stop with `stop()`; `every_s` paces each device."""

    def __init__(self, cluster: Cluster, every_s: float = 0.25, seed: int = 0) -> None:
        self.cluster, self.every_s, self.seed = cluster, every_s, seed
        self.devices = Devices()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        for target in (self._mqtt_kiosk, self._http_kiosk, self._http_shopper, self._mqtt_shopper):
            thread = threading.Thread(target=target, daemon=True, name=target.__name__)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 90.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def _pace(self) -> bool:
        return not self._stop.wait(self.every_s)

    def _mqtt_kiosk(self) -> None:
        kiosk = Kiosk(self.cluster.mqtt(KIOSK_MQTT), SITE, KIOSK_MQTT)
        seed = self.seed * 10_000
        try:
            while self._pace():
                seed += 1
                photo = LabelledPhoto(PRODUCT, mqtt_photo(seed), f"m{seed}")
                with self.devices.lock:
                    self.devices.sent["mqtt"] += 1
                # A long wait: across a restart of the edge, paho re-sends and the PUBACK comes.
                if kiosk.send([photo], timeout=90.0):
                    with self.devices.lock:
                        self.devices.acked_mqtt[seed] = time.monotonic()
        finally:
            kiosk.close()

    def _http_kiosk(self) -> None:
        url = f"{self.cluster.edge_ports.url}/v1/photos"
        headers = {"Authorization": f"Bearer {self.cluster.tokens[KIOSK_HTTP]}"}
        params = {"sku": PRODUCT.sku, "device": KIOSK_HTTP}
        seed = self.seed * 10_000
        with httpx.Client(timeout=30.0, headers=headers) as http:
            while self._pace():
                seed += 1
                with self.devices.lock:
                    self.devices.sent["http"] += 1
                try:
                    answer = http.post(url, params=params, content=http_photo(seed))
                except httpx.HTTPError as exc:
                    self._refused("http", type(exc).__name__)
                    continue
                if answer.status_code in (200, 201):
                    with self.devices.lock:
                        self.devices.acked_http[answer.json()["sha256"]] = time.monotonic()
                else:
                    self._refused("http", str(answer.json().get("error", answer.status_code)))

    def _http_shopper(self) -> None:
        url = f"{self.cluster.edge_ports.url}/v1/recognize"
        headers = {"Authorization": f"Bearer {self.cluster.tokens[SHOPPER]}"}
        seed = self.seed * 10_000
        with httpx.Client(timeout=30.0, headers=headers) as http:
            while self._pace():
                seed += 1
                self._ask()
                try:
                    answer = http.post(url, params={"device": SHOPPER},
                                       content=noisy_jpeg(900_000 + seed, (160, 120)))
                    answer.json()  # an answer, or a refusal with a reason: either is an answer
                except (httpx.HTTPError, ValueError):
                    continue
                with self.devices.lock:
                    self.devices.answered += 1

    def _mqtt_shopper(self) -> None:
        shopper = Shopper(self.cluster.mqtt(SHOPPER), SITE, SHOPPER)
        seed = self.seed * 10_000
        try:
            while not self._stop.wait(self.every_s * 4):
                seed += 1
                self._ask()
                try:
                    shopper.ask(noisy_jpeg(700_000 + seed, (160, 120)), timeout=10.0)
                except TimeoutError:
                    continue  # QoS 0 on the edge side: a request during an outage is gone
                with self.devices.lock:
                    self.devices.answered += 1
        finally:
            shopper.close()

    def _ask(self) -> None:
        with self.devices.lock:
            self.devices.asked += 1

    def _refused(self, door: str, reason: str) -> None:
        with self.devices.lock:
            self.devices.refused[f"{door}:{reason}"] += 1
