"""What TLS costs: recognition latency and throughput at the edge's HTTP door, and the forward
path's goodput into the core, each with TLS against plain text in one run.

One ONNX model (EfficientNet-Lite0 + a head, trained with the project's code as in
bench/inference.py), the same photos for everything. Four server processes, as `edge up` and
`core up` serve them: an edge recognition door plain and over TLS (the site's certificate from a
private CA made for the run), a core receiver plain and over mutual TLS (the client presents
the site's certificate, as a site's forwarder does). Targets alternate run by run.

- recognition: POST /v1/recognize on keep-alive connections, concurrency 1 (p50 latency) and 16
  (requests per second);
- forward: CoreClient.upload_once (the forwarder's one-shot upload) of distinct photos, 16 in
  flight, bytes confirmed per second.

    .venv/bin/python bench/tls.py [--quick]

Last stdout line: JSON with recognize_p50_ratio (TLS / plain latency, target <= 1.1),
recognize_c16_ratio and forward_ratio (TLS / plain throughput, target >= 0.9), the medians
behind them and photo_source.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import io
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, median, say, synthetic_photos

from edge2core.common.net import free_port

SITE = "bench-tls"
CONCURRENCY = 16


# --------------------------------------------------------------------------- the servers


def _serve(app: Any, port: int, tls: Path | None, files: Any) -> None:
    import uvicorn

    from edge2core.common.tls import server_context
    from edge2core.common.tls_http import uvicorn_tls_options

    ctx = server_context(files) if tls is not None else None
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, **uvicorn_tls_options(ctx)))

    def announce() -> None:
        while not server.started:
            time.sleep(0.02)
        sys.stdout.write("READY\n")
        sys.stdout.flush()

    threading.Thread(target=announce, daemon=True).start()
    server.run()


def serve_edge(argv: list[str]) -> None:
    """`tls.py _edge`: the recognition door as `edge up` builds it (plain or TLS)."""
    parser = argparse.ArgumentParser()
    for name in ("--model", "--sha256", "--products", "--data"):
        parser.add_argument(name, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls", type=Path)
    args = parser.parse_args(argv)
    from edge2core.common.products import Product
    from edge2core.common.tls import site_tls_files
    from edge2core.config import EdgeSettings
    from edge2core.edge.api import create_edge_app
    from edge2core.edge.catalogue_replica import CatalogueReplica
    from edge2core.edge.gateway import Gateway
    from edge2core.edge.inference import Recognizer
    from edge2core.edge.inference_pool import InferencePool
    from edge2core.edge.intake import Intake
    from edge2core.edge.prepare import PreparePolicy
    from edge2core.edge.spool import Spool

    data = Path(args.data)
    settings = EdgeSettings(site=SITE, data_dir=data, host="127.0.0.1", http_port=args.port)
    data.mkdir(parents=True, exist_ok=True)
    catalogue = CatalogueReplica(data / "catalogue.json")
    catalogue.replace([Product.model_validate(p) for p in json.loads(Path(args.products).read_text())])
    recognizer = Recognizer(catalogue, threads=settings.inference_threads, top_k=settings.top_k)
    recognizer.load(Path(args.model), version=1, sha256=args.sha256)
    gateway = Gateway(Intake(SITE, PreparePolicy(), Spool(data / "spool", 1 << 34)), recognizer,
                      InferencePool.for_settings(recognizer, settings))
    app = create_edge_app(gateway, SITE, dict, settings.max_bytes)
    _serve(app, args.port, args.tls, site_tls_files(args.tls, SITE) if args.tls else None)


def serve_core(argv: list[str]) -> None:
    """`tls.py _core`: the core's receiver as `core up` builds it (plain or mutual TLS)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls", type=Path)
    args = parser.parse_args(argv)
    from edge2core.common.tls import core_tls_files
    from edge2core.config import CoreSettings
    from edge2core.core.service import build_core_services, create_core_app

    settings = CoreSettings(data_dir=args.data, site_tokens={}, http_port=args.port)
    app = create_core_app(build_core_services(settings))
    _serve(app, args.port, args.tls, core_tls_files(args.tls) if args.tls else None)


class Child:
    """One server process of this file; stopped with SIGTERM."""

    def __init__(self, mode: str, args: list[str], log: Path) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, __file__, mode, *args], stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "READY":
            raise RuntimeError(f"{mode} did not start: {log.read_text(errors='replace')[-2000:]}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


# --------------------------------------------------------------------------- recognition


class Door:
    """Keep-alive POSTs to /v1/recognize, plain or over TLS."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None) -> None:
        self.port, self.ctx = port, ctx

    def connection(self) -> http.client.HTTPConnection:
        if self.ctx is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60, context=self.ctx)


def _post(conn: http.client.HTTPConnection, photo: bytes) -> float:
    start = time.perf_counter()
    conn.request("POST", "/v1/recognize", body=photo, headers={"Content-Type": "image/jpeg"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200 or not json.loads(body).get("top_k"):
        raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
    return time.perf_counter() - start


def _paired_latencies(doors: dict[str, Door], photos: list[bytes], count: int) -> dict[str, list[float]]:
    """Concurrency 1, plain and TLS requests interleaved one by one (the same photo each, in
    turn first), so both see the same machine: a loaded CPU moves both alike."""
    conns = {name: door.connection() for name, door in doors.items()}
    took: dict[str, list[float]] = {name: [] for name in doors}
    try:
        for conn in conns.values():  # connect (and handshake) before the clock
            _post(conn, photos[0])
        for i in range(count):
            names = list(conns) if i % 2 == 0 else list(reversed(conns))
            for name in names:
                took[name].append(_post(conns[name], photos[i % len(photos)]))
    finally:
        for conn in conns.values():
            conn.close()
    return took


def _recognize_run(door: Door, photos: list[bytes], count: int, concurrency: int) -> tuple[list[float], float]:
    """(per-request seconds, requests per second)."""
    per_worker = max(1, count // concurrency)

    def worker(w: int) -> list[float]:
        conn = door.connection()
        took = []
        try:
            _post(conn, photos[0])  # connected (and TLS handshake done) before the clock
            for i in range(per_worker):
                took.append(_post(conn, photos[(w * per_worker + i) % len(photos)]))
        finally:
            conn.close()
        return took

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for took in pool.map(worker, range(concurrency)) for t in took]
    return latencies, len(latencies) / (time.perf_counter() - start)


# --------------------------------------------------------------------------- forwarding


def _records(photos: list[bytes]) -> list[tuple[Any, bytes]]:
    from PIL import Image

    from edge2core.common.events import PhotoRecord, Source

    out = []
    for data in photos:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        out.append((PhotoRecord(site=SITE, device="kiosk-1", source=Source.KIOSK, sku="SKU-0000",
                                sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                                width=width, height=height), data))
    return out


async def _forward(url: str, ctx: ssl.SSLContext | None, batch: list[tuple[Any, bytes]]) -> float:
    """Bytes per second confirmed by the core, 16 uploads in flight, on connections opened
    (and TLS handshakes done) by the batch's first 16 uploads, as a forwarder's stay open."""
    from edge2core.edge.core_client import CoreClient

    client = CoreClient(url, tls=ctx)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(record: Any, data: bytes) -> int:
        async with gate:
            receipt = await client.upload_once(record, data)
            if not receipt.get("key"):
                raise RuntimeError(f"no proof: {receipt}")
            return len(data)

    try:
        await asyncio.gather(*(one(r, d) for r, d in batch[:CONCURRENCY]))
        start = time.perf_counter()
        sent = sum(await asyncio.gather(*(one(r, d) for r, d in batch[CONCURRENCY:])))
        return sent / (time.perf_counter() - start)
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- the run


def _pki(folder: Path) -> Path:
    from edge2core.common.certs import CertAuthority

    ca = CertAuthority(folder)
    ca.create()
    ca.issue("core", "core", ["localhost", "127.0.0.1"])
    ca.issue("site", SITE, ["localhost", "127.0.0.1"])
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute of measuring")
    args = parser.parse_args()
    repeats = 5 if args.quick else 9
    c1_count, c16_count = (20, 160) if args.quick else (60, 480)
    per_forward = 64 if args.quick else 160

    from inference import build_model  # the same model bench/inference.py measures

    from edge2core.common.tls import client_context

    with tempfile.TemporaryDirectory(prefix="e2c-bench-tls-") as tmp:
        root = Path(tmp)
        tls = _pki(root / "ca")
        say("training the model (EfficientNet-Lite0 + head) ...")
        model = build_model(root, 24)
        (root / "products.json").write_text(json.dumps(model.products))
        trust = client_context(tls / "ca.pem")
        site = client_context(tls / "ca.pem", tls / "sites" / f"{SITE}.pem", tls / "sites" / f"{SITE}.key")
        children: list[Child] = []
        doors, cores = {}, {}
        try:
            for name, tls_dir in (("plain", None), ("tls", tls)):
                port = free_port()
                extra = ["--tls", str(tls_dir)] if tls_dir else []
                children.append(Child("_edge", ["--model", str(model.path), "--sha256", model.sha256,
                                                "--products", str(root / "products.json"),
                                                "--data", str(root / f"edge-{name}"), "--port", str(port),
                                                *extra], root / f"edge-{name}.log"))
                doors[name] = Door(port, trust if tls_dir else None)
                core_port = free_port()
                children.append(Child("_core", ["--data", str(root / f"core-{name}"), "--port", str(core_port),
                                                *extra], root / f"core-{name}.log"))
                cores[name] = (f"{'https' if tls_dir else 'http'}://127.0.0.1:{core_port}", site if tls_dir else None)
            results: dict[str, dict[str, list[float]]] = {n: {"p50": [], "rps": [], "goodput": []} for n in doors}
            latencies: dict[str, list[float]] = {n: [] for n in doors}
            # Photos the size the edge forwards (long side 1024); each run's batch goes to both
            # cores (separate stores), so both receive the same bytes.
            say("rendering the photos to forward ...")
            records = _records(synthetic_photos(repeats * per_forward, first=1000, size=1024))
            for run in range(repeats):
                order = ("plain", "tls") if run % 2 == 0 else ("tls", "plain")
                for name, took in _paired_latencies(doors, model.photos, c1_count).items():
                    latencies[name] += took
                for name in order:
                    _, rps = _recognize_run(doors[name], model.photos, c16_count, CONCURRENCY)
                    batch = records[run * per_forward:(run + 1) * per_forward]
                    goodput = asyncio.run(_forward(*cores[name], batch))
                    results[name]["rps"].append(rps)
                    results[name]["goodput"].append(goodput / 1e6)
                    say(f"run {run + 1}/{repeats} {name}: c1 p50 so far {median(latencies[name]) * 1000:.1f} ms, "
                        f"c16 {rps:.1f}/s, forward {goodput / 1e6:.1f} MB/s")
            for name, took in latencies.items():
                results[name]["p50"] = [median(took) * 1000]
        finally:
            for child in children:
                child.close()
    med = {n: {k: median(v) for k, v in r.items()} for n, r in results.items()}
    emit({
        "recognize_p50_ratio": round(med["tls"]["p50"] / med["plain"]["p50"], 3),
        "recognize_c16_ratio": round(med["tls"]["rps"] / med["plain"]["rps"], 3),
        "forward_ratio": round(med["tls"]["goodput"] / med["plain"]["goodput"], 3),
        "recognize_p50_ms": {n: round(m["p50"], 2) for n, m in med.items()},
        "recognize_c16_rps": {n: round(m["rps"], 1) for n, m in med.items()},
        "forward_mb_s": {n: round(m["goodput"], 2) for n, m in med.items()},
        "repeats": repeats, "model": model.source,
        "tls": "TLS 1.3, ECDSA P-256 server keys; the forward path with a client certificate",
    })


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_edge":
        serve_edge(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_core":
        serve_core(sys.argv[2:])
    else:
        main()
