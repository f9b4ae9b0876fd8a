"""`edge2core demo`: a core, an edge site and simulated devices through the whole loop."""

from __future__ import annotations

import ssl
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from edge2core.common.products import Product
from edge2core.common.waiting import wait_until
from edge2core.config import DemoSettings
from edge2core.edge.devices import DeviceRegistry, DeviceRole
from edge2core.edge.mqtt_door import MqttEndpoint
from edge2core.roles import make_role_tls, start_core, start_edge, trust
from edge2core.sim import photos as sim_photos
from edge2core.sim.devices import Kiosk, Shopper
from edge2core.web.demo_pages import make_demo_users, print_addresses, serve_until_interrupted

SITE = "store-001"
KIOSKS = ("kiosk-1", "kiosk-2")
SHOPPER = "phone-1"
POLL_S = 0.25  # how often the story looks at the core and the edge while it waits


def catalogue_entry(product: sim_photos.Product) -> Product:
    return Product(
        sku=product.sku, name=product.name, coarse=product.coarse_name, price=product.price,
        currency=product.currency, description=product.description,
    )


def _ok_json(response: httpx.Response) -> Any:
    return response.json() if response.status_code == 200 else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Stages:
    """Times each stage of the story and prints it as it happens."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.console.print(f"[bold cyan]▶[/] {name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.console.print(f"  [green]✓[/] {name} ({self.seconds[name]:.1f} s)")


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
    )


def run_demo(settings: DemoSettings, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    if settings.work_dir:
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        return _run(settings, settings.work_dir, console)
    with tempfile.TemporaryDirectory(prefix="e2c-demo-") as tmp:
        return _run(settings, Path(tmp), console)


def _run(settings: DemoSettings, work: Path, console: Console) -> dict[str, Any]:
    source = sim_photos.resolve_source(settings.dataset, classes=settings.classes, seed=settings.seed)
    products = sim_photos.choose_products(source, settings.classes, settings.seed)
    console.print(f"[bold]edge2core demo[/]: {len(products)} products from {source!r}")
    stages = Stages(console)
    # TLS on every link, as outside the demo: a private CA made for this run.
    tls = make_role_tls(work / "tls", [SITE])
    ca = str(tls / "ca.pem")
    passwords = make_demo_users(work / "core")  # the dashboard's sign-in (web/)
    core, core_ports = start_core(work / "core", tls=tls)
    edge = None
    try:
        with stages.stage("start core and edge site"):
            core.wait_healthy()
            credentials = register_devices(work / "edge")
            edge, edge_ports = start_edge(SITE, work / "edge", core_ports, tls=tls)
            edge.wait_healthy()
        http = httpx.Client(base_url=core_ports.https_url, timeout=120, verify=trust(tls))
        http.put("/v1/products",
                 json=[catalogue_entry(p).model_dump(mode="json") for p in products]).raise_for_status()
        summary = _story(
            settings, source, products, stages, http, edge_ports, credentials, console, ca
        )
        print_addresses(console, core_ports.https_url, edge_ports.https_url, passwords, Path(ca),
                        serving=settings.keep_running)
        if settings.keep_running:
            _print_summary(console, summary)
            serve_until_interrupted(console)
    finally:
        if edge is not None:
            edge.stop()
        core.stop()
    summary["stage_seconds"] = stages.seconds
    _print_summary(console, summary)
    return summary


def register_devices(edge_dir: Path) -> dict[str, str]:
    """Every simulated device gets its own identity, as a real deployment would."""
    registry = DeviceRegistry(edge_dir / "devices.json")
    tokens = {name: registry.add(name, DeviceRole.KIOSK) for name in KIOSKS}
    tokens[SHOPPER] = registry.add(SHOPPER, DeviceRole.SHOPPER)
    return tokens


def _story(settings: DemoSettings, source: Any, products: list, stages: Stages, http: httpx.Client,
           edge_ports: Any, credentials: dict[str, str], console: Console, ca: str) -> dict[str, Any]:
    train = [p for product in products for p in source.photos("train", product, settings.per_class)]
    held_out = [p for product in products
                for p in source.photos("val", product, settings.held_out_per_class)]

    with stages.stage(f"kiosks publish {len(train)} labelled photos over MQTT (QoS 1)"):
        acked = _publish_captures(train, edge_ports.mqtt, credentials, console, ca)

    with stages.stage("edge prepares, spools and forwards them to the core"):
        def kiosk_photos() -> int:
            return int(http.get("/v1/stats").json()["by_source"].get("kiosk", 0))
        wait_until(lambda: kiosk_photos() >= acked, 300, "every photo at the core", POLL_S)
        stored = kiosk_photos()

    with stages.stage("core's learning loop builds a dataset, trains, passes the gate, rolls out"):
        model = wait_until(lambda: _ok_json(http.get("/v1/models/production")), 900,
                           "a production model", POLL_S)
        dataset = http.get(f"/v1/datasets/{model['dataset_version']}").raise_for_status().json()
        run = http.get(f"/v1/models/{model['version']}/run").raise_for_status().json()

    with stages.stage(f"edge model agent loads model version {model['version']}"):
        edge_http = httpx.Client(base_url=edge_ports.https_url, timeout=10,
                                 verify=ssl.create_default_context(cafile=ca))
        wait_until(lambda: edge_http.get("/v1/status").json()["model_version"] == model["version"],
                   120, "the model at the edge", POLL_S)

    with stages.stage(f"shoppers ask about {len(held_out)} held-out photos over MQTT/WebSockets"):
        ws = MqttEndpoint("127.0.0.1", edge_ports.mqtt_ws, "websockets", SHOPPER, credentials[SHOPPER],
                          ca_file=ca)
        replies = _ask(held_out, ws, console)

    answers = [(photo, reply) for photo, reply in replies if not reply.error]
    # Accuracy of the best guess, and how often the edge was sure enough to answer at all.
    correct = sum(1 for photo, r in answers if r.body["top_k"][0]["sku"] == photo.product.sku)
    sure = [(photo, r) for photo, r in answers if r.body.get("recognised")]
    sure_right = sum(1 for photo, r in sure if r.body.get("sku") == photo.product.sku)
    unsure = len(answers) - len(sure)
    with stages.stage(f"{unsure} unrecognised photos flow back to the core"):
        wait_until(lambda: http.get("/v1/stats").json()["by_source"].get("shopper", 0) >= unsure,
                   120, "unrecognised photos at the core", POLL_S)
    latencies = [r.seconds * 1000 for _p, r in answers]
    val = model["metrics"].get("val", {})
    return {
        "ok": bool(answers) and stored >= acked == len(train),
        "products": len(products),
        "images_sent": len(train),
        "images_acked": acked,
        "images_stored_at_core": stored,
        "dataset_version": dataset["version"],
        "dataset_images": dataset["stats"]["images"],
        "model_version": model["version"],
        "model_val_top1": val.get("top1"),
        "model_val_n": val.get("n"),
        "held_out_photos": len(held_out),
        "held_out_top1": round(correct / len(held_out), 3) if held_out else None,
        "recognised_share": round(len(sure) / len(answers), 3) if answers else None,
        "recognised_precision": round(sure_right / len(sure), 3) if sure else None,
        "unrecognised": unsure,
        "errors": sum(1 for _p, r in replies if r.error),
        "recognition_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "recognition_ms_p99": round(percentile(latencies, 0.99), 1) if latencies else None,
        "training_timings_s": {f"training: {k}": v for k, v in (run.get("timings_s") or {}).items()},
    }


def _publish_captures(
    train: list, port: int, credentials: dict[str, str], console: Console, ca: str
) -> int:
    kiosks = [
        Kiosk(MqttEndpoint("127.0.0.1", port, "tcp", name, credentials[name], ca_file=ca), SITE, name)
        for name in KIOSKS
    ]
    try:
        with progress_bar(console) as bar:
            task = bar.add_task("acknowledged", total=len(train))
            return sum(
                kiosk.send(train[i :: len(kiosks)], lambda _p: bar.advance(task))
                for i, kiosk in enumerate(kiosks)
            )
    finally:
        for kiosk in kiosks:
            kiosk.close()


def _ask(held_out: list, endpoint: MqttEndpoint, console: Console) -> list:
    shopper = Shopper(endpoint, SITE, SHOPPER)
    try:
        with progress_bar(console) as bar:
            task = bar.add_task("answered", total=len(held_out))
            replies = []
            for photo in held_out:
                replies.append((photo, shopper.ask(photo.data)))
                bar.advance(task)
            return replies
    finally:
        shopper.close()


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    results = Table(title="edge2core demo: what happened", show_header=False)
    results.add_column("what")
    results.add_column("value", justify="right")
    timings = Table(title="time per stage")
    timings.add_column("stage")
    timings.add_column("seconds", justify="right")
    for key, value in summary.items():
        if isinstance(value, dict):
            for stage, seconds in value.items():
                timings.add_row(stage.replace("_", " "), f"{seconds:.2f}")
        else:
            results.add_row(key.replace("_", " "), str(value))
    console.print(results)
    console.print(timings)
