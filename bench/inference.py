"""Recognition latency and throughput: our HTTP and MQTT doors against the limits and a peer.

One run, one ONNX model (EfficientNet-Lite0 + a head trained with the project's own training
code on a few grocery classes, or on synthetic photos when the data set is absent), the same
photos for everything:

- the limit: `InferenceSession.run` on preprocessed tensors, with the session options our
  `Recognizer` uses;
- the in-process limit: decode + preprocess + run + top-k in one plain function;
- ours: POST /v1/recognize (uvicorn serving `create_edge_app`) and MQTT request/reply
  (embedded NATS, `start_doors`, `Shopper` over TCP), both in one edge process;
- the peer: the same model served by BentoML (bench/_bento_service.py) in its own venv
  (`.venv-bench-peer/`, created with pip on first use);

each at concurrency 1 and 16, targets alternated run by run. Then a hot swap under load:
16 HTTP clients while `Recognizer.load` swaps in copies of the model.

    .venv/bin/python bench/inference.py [--quick] [--peer-venv PATH]

Last stdout line: JSON with limit_p50_ms, http_p50_ms, http_p99_ms, mqtt_p50_ms, mqtt_p99_ms,
http_c16_rps, limit_c16_rps, peer_p50_ms, peer_c16_rps, swap_failed_requests, swap_p99_ms,
the ratios ours / in-process limit, ours / limit and ours / peer, the edge's inference pool
settings, the details per target and photo_source (see _common.py: the grocery photos,
$E2C_DATASET or synthetic ones). The edge reads E2C_EDGE_* variables, so e.g.

    E2C_EDGE_RECOGNIZE_BATCH_MAX=4 E2C_EDGE_RECOGNIZE_BATCH_WAIT_MS=1 .venv/bin/python bench/inference.py --quick

measures micro-batching.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PHOTOS, REPO, assert_distinct, emit, median, say, synthetic_photos

from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig
from edge2core.common.net import free_port
from edge2core.common.preprocess import IMAGE_SIZE, preprocess
from edge2core.config import EdgeSettings
from edge2core.edge.inference import load_session, model_classes
from edge2core.edge.inference_pool import workers_for
from edge2core.edge.mqtt_door import MqttEndpoint
from edge2core.sim.devices import Shopper

BENCH = Path(__file__).resolve().parent
PEER_VENV = REPO / ".venv-bench-peer"
PEER_PACKAGES = ["bentoml", "onnxruntime", "pillow", "numpy"]
CONCURRENCY = 16
SITE = "bench"
TOP_K = EdgeSettings().top_k
THREADS = EdgeSettings().inference_threads  # intra-op threads per session, as the edge runs


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    path: Path
    sha256: str
    classes: tuple[str, ...]
    products: list[dict[str, Any]]
    photos: list[bytes]  # never seen in training
    source: str


def _grocery_pick(root: Path, n_classes: int, train_per_class: int, n_photos: int):
    """A spread of grocery classes: training files and held-out (val) photos."""
    def by_class(listing: str) -> dict[int, list[Path]]:
        out: dict[int, list[Path]] = {}
        for line in (root / listing).read_text().splitlines():
            if line.strip():
                rel, cls, _coarse = (part.strip() for part in line.split(","))
                out.setdefault(int(cls), []).append(root / rel)
        return out

    train, val = by_class("train.txt"), by_class("val.txt")
    ids = sorted(set(train) & set(val))
    chosen = ids[:: max(1, len(ids) // n_classes)][:n_classes]
    names = {int(row.split(",")[1]): row.split(",")[0]
             for row in (root / "classes.csv").read_text().splitlines()[1:] if row}
    train_files = [(i, f) for i in chosen for f in train[i][:train_per_class]]
    # Held out: the val photos, then training photos the head never saw, classes interleaved.
    held = [val[i] + train[i][train_per_class:] for i in chosen]
    held_out = [f for group in itertools.zip_longest(*held) for f in group if f]
    return chosen, names, train_files, held_out[:n_photos]


def build_model(out_dir: Path, n_photos: int) -> Model:
    """EfficientNet-Lite0 + a linear head, trained and exported with the project's code."""
    from edge2core.core.train.backbone import load_backbone
    from edge2core.core.train.head import embed, train_head
    from edge2core.core.train.onnx_export import export_onnx

    images: list[Image.Image] = []
    labels: list[int] = []
    if PHOTOS.grocery is not None:
        chosen, names, train_files, val_files = _grocery_pick(PHOTOS.grocery, 5, 12, n_photos)
        classes = [f"SKU-{i:04d}" for i in chosen]
        products = [{"sku": f"SKU-{i:04d}", "name": names.get(i, str(i)), "price": 1.0 + k,
                     "currency": "EUR"} for k, i in enumerate(chosen)]
        for cls, path in train_files:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
            labels.append(chosen.index(cls))
        photos = [f.read_bytes() for f in val_files]
        source = f"grocery: {len(chosen)} classes, {len(images)} training photos"
    else:
        from edge2core.sim.synthetic import product_style, render_photo

        classes = [f"SKU-{p:04d}" for p in range(3)]
        products = [{"sku": classes[p], "name": product_style(p).name, "price": 1.0 + p,
                     "currency": "EUR"} for p in range(3)]
        for p in range(3):
            for i in range(8):  # photo indices 0..7; the held-out photos start at 100
                with Image.open(io.BytesIO(render_photo(p, i))) as im:
                    images.append(im.convert("RGB"))
                labels.append(p)
        photos = synthetic_photos(n_photos, first=100, products=3)
        source = "synthetic: 3 classes, 24 training photos"
    backbone = load_backbone()
    head = train_head(embed(backbone, images), np.array(labels, dtype=np.int64), classes, seed=0)
    path = out_dir / "model-v1.onnx"
    export_onnx(backbone, head, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert_distinct(photos, "test photos")
    return Model(path, sha, tuple(classes), products, photos, source)


# --------------------------------------------------------------------------- load generation


@dataclass
class Run:
    """One target at one concurrency: per-request (start, end, ok, model_version)."""

    events: list[tuple[float, float, bool, int | None]] = field(default_factory=list)
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def latencies_ms(self) -> list[float]:
        return [(end - start) * 1000 for start, end, ok, _v in self.events if ok]

    @property
    def failed(self) -> int:
        return sum(1 for e in self.events if not e[2])

    @property
    def rps(self) -> float:
        return sum(1 for e in self.events if e[2]) / self.elapsed_s if self.elapsed_s else 0.0


Worker = Callable[[int], int | None]  # request number -> model version (None: not reported)


def drive(workers: list[Worker], count: int, max_s: float) -> Run:
    """len(workers) closed-loop clients share `count` requests; stop early after `max_s`."""
    run = Run()
    lock = threading.Lock()
    numbers = itertools.count()
    start_gate = threading.Barrier(len(workers) + 1)
    deadline = [0.0]

    def loop(work: Worker) -> None:
        start_gate.wait()
        while True:
            with lock:
                i = next(numbers)
            if i >= count or time.perf_counter() > deadline[0]:
                return
            t0 = time.perf_counter()
            try:
                version, ok = work(i), True
            except Exception as exc:
                version, ok = None, False
                with lock:
                    run.errors.append(repr(exc)[:300])
            t1 = time.perf_counter()
            with lock:
                run.events.append((t0, t1, ok, version))

    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + max_s
    start_gate.wait()
    for t in threads:
        t.join(max_s + 60)
    run.elapsed_s = time.perf_counter() - t0
    return run


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class HttpWorker:
    """One keep-alive connection, raw body POSTs: the cheapest client Python has."""

    def __init__(self, port: int, path: str, photos: list[bytes]) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self._path = path
        self._photos = photos
        self._used = 0.0

    def __call__(self, i: int) -> int | None:
        if time.monotonic() - self._used > 1.0:
            # Idle between runs: servers drop idle keep-alive connections (uvicorn after 5 s,
            # BentoML sooner); a fresh connection keeps that out of the measurement.
            self._conn.close()
        self._used = time.monotonic()
        try:
            self._conn.request("POST", self._path, body=self._photos[i % len(self._photos)],
                               headers={"Content-Type": "image/jpeg"})
            response = self._conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()  # reconnects on the next request
            raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        answer = json.loads(body)
        if not answer.get("top_k"):
            raise RuntimeError(f"no top_k in {body[:200]!r}")
        return answer.get("model_version")

    def close(self) -> None:
        self._conn.close()


class MqttWorker:
    """A shopper's phone: its own MQTT connection, one request at a time."""

    def __init__(self, endpoint: MqttEndpoint, device: str, photos: list[bytes]) -> None:
        self._shopper = Shopper(endpoint, SITE, device)
        self._photos = photos

    def __call__(self, i: int) -> int | None:
        reply = self._shopper.ask(self._photos[i % len(self._photos)], timeout=60)
        if reply.error or not reply.body.get("top_k"):
            raise RuntimeError(f"MQTT refusal: {reply.body}")
        return reply.body.get("model_version")

    def close(self) -> None:
        self._shopper.close()


# --------------------------------------------------------------------------- the processes


def _stop_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


class EdgeProcess:
    """bench/_edge_server.py: our HTTP and MQTT doors in their own process, as `edge up`."""

    def __init__(self, model: Model, root: Path, mqtt_port: int) -> None:
        products = root / "products.json"
        products.write_text(json.dumps(model.products))
        self.http_port = free_port()
        self.log = (root / "edge.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "_edge_server.py"), "--model", str(model.path),
             "--sha256", model.sha256, "--products", str(products), "--data", str(root / "edge"),
             "--site", SITE, "--http-port", str(self.http_port), "--mqtt-port", str(mqtt_port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._root = root
        line = self._readline(120)
        if line != "READY":
            raise RuntimeError(f"edge process did not start ({line!r}): {self.log_tail()}")

    def _readline(self, timeout: float) -> str:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        return box[0].strip() if box else ""

    def swap(self, path: Path, version: int, sha256: str) -> tuple[float, float]:
        """Ask for a hot swap; returns (sent, done) perf_counter times."""
        sent = time.perf_counter()
        self.proc.stdin.write(f"swap {path} {version} {sha256}\n")
        self.proc.stdin.flush()
        line = self._readline(120)
        done = time.perf_counter()
        if not line.startswith("SWAPPED") or not line.endswith(" ok"):
            raise RuntimeError(f"hot swap failed: {line!r}")
        return sent, done

    def log_tail(self) -> str:
        self.log.flush()
        return (self._root / "edge.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                pass
        _stop_group(self.proc)
        self.log.close()


def ensure_peer_venv(venv: Path) -> Path:
    """The peer's own venv with BentoML; made with pip on first use. Returns its bentoml."""
    bentoml = venv / "bin" / "bentoml"
    stamp = venv / ".e2c-bench-ready"
    if bentoml.exists() and (stamp.exists() or venv != PEER_VENV):
        return bentoml
    say(f"creating the peer's venv {venv} (one time): pip install {' '.join(PEER_PACKAGES)}")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off",
         "--disable-pip-version-check", *PEER_PACKAGES],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    seen: set[str] = set()
    for line in proc.stdout:
        line = line.rstrip()
        if line.startswith("Collecting"):
            name = line.split()[1].split("=")[0].split("<")[0].split(">")[0].split("~")[0]
            if name not in seen:
                seen.add(name)
                if len(seen) % 10 == 1:
                    say(f"[dim]pip:[/] collecting {name} ({len(seen)} packages so far)")
        elif line.startswith(("Installing", "Successfully", "ERROR")):
            say(f"[dim]pip:[/] {line[:150]}")
    if proc.wait() != 0 or not bentoml.exists():
        raise SystemExit(f"could not install the peer into {venv}; remove it and retry")
    stamp.write_text(" ".join(PEER_PACKAGES) + "\n")
    return bentoml


class PeerProcess:
    """`bentoml serve` of bench/_bento_service.py on a free loopback port."""

    def __init__(self, bentoml: Path, model: Model, root: Path) -> None:
        self.port = free_port()
        self._root = root
        self.log = (root / "peer.log").open("wb")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))},
            "BENTOML_HOME": str(root / "bentoml-home"),
            "BENTOML_DO_NOT_TRACK": "True",
            "E2C_PEER_MODEL": str(model.path),
            "E2C_PEER_THREADS": str(THREADS),
            "E2C_PEER_TOPK": str(TOP_K),
        }
        self.proc = subprocess.Popen(
            [str(bentoml), "serve", "_bento_service:PeerRecognizer", "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=BENCH, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"BentoML exited: {self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
                conn.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"BentoML not ready in 180 s: {self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self) -> str:
        self.log.flush()
        return (self._root / "peer.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        _stop_group(self.proc)
        self.log.close()


# --------------------------------------------------------------------------- the targets


class Targets:
    """Each target makes `concurrency` workers; all use the same model and photos."""

    def __init__(self, model: Model, edge: EdgeProcess, peer: PeerProcess | None,
                 mqtt: MqttEndpoint) -> None:
        self.model = model
        self.edge = edge
        self.peer = peer
        self.mqtt = mqtt
        self.session = load_session(model.path, THREADS)
        self.classes = model_classes(self.session)
        self.input_name = self.session.get_inputs()[0].name
        self.tensors = [self._tensor(p) for p in model.photos]
        self._closers: list[Callable[[], None]] = []
        self._devices = itertools.count()

    @staticmethod
    def _tensor(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))
            return preprocess(image)[None]

    def names(self) -> list[str]:
        return ["limit", "inproc", "http", "mqtt"] + (["peer"] if self.peer else [])

    def limit_call(self, i: int) -> None:
        self.session.run(None, {self.input_name: self.tensors[i % len(self.tensors)]})

    def inproc_call(self, i: int, session: Any = None) -> float:
        """Decode (reduced where JPEG allows, as the edge does), preprocess, run, top-k."""
        session = session or self.session
        photos = self.model.photos
        probs = session.run(None, {self.input_name: self._tensor(photos[i % len(photos)])})[0][0]
        order = np.argsort(-probs)[:TOP_K]
        top = [(self.classes[k], float(probs[k])) for k in order]
        return top[0][1]

    def workers(self, name: str, n: int) -> list[Worker]:
        photos = self.model.photos
        if name in ("limit", "inproc"):
            call = self.limit_call if name == "limit" else self.inproc_call
            if n == 1:
                return [call]
            # The in-process bound for n requests in flight: queue them to one worker per core
            # (more threads than cores only add switching and GIL contention).
            pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix=f"bench-{name}")
            self._closers.append(pool.shutdown)
            return [lambda i: pool.submit(call, i).result()] * n
        made: list[Any]
        if name == "http":
            made = [HttpWorker(self.edge.http_port, "/v1/recognize", photos) for _ in range(n)]
        elif name == "mqtt":
            made = [MqttWorker(self.mqtt, f"shopper-{next(self._devices)}", photos)
                    for _ in range(n)]
        elif name == "peer" and self.peer:
            made = [HttpWorker(self.peer.port, "/recognize", photos) for _ in range(n)]
        else:
            raise ValueError(name)
        self._closers += [w.close for w in made]
        return made

    def close(self) -> None:
        for close in self._closers:
            with contextlib.suppress(Exception):
                close()


def measure(targets: Targets, repeats: int, count: dict[int, int], max_s: float) -> dict:
    """Every target at concurrency 1 and 16, order alternated; p50/p99 pooled, rps median."""
    pools = {(name, c): [targets.workers(name, c), [], []]
             for name in targets.names() for c in (1, CONCURRENCY)}
    for (name, c), (workers, _lat, _rps) in pools.items():
        run = drive(workers, max(4, c * 2), 30)  # warm-up: connections, first-request costs
        if run.failed:
            raise RuntimeError(f"{name} failed its warm-up: {run.errors[:3]}")
    order = list(pools)
    for r in range(repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            workers, lat, rps = pools[key]
            run = drive(workers, count[key[1]], max_s)
            if run.failed:
                raise RuntimeError(f"{key[0]} c{key[1]}: {run.failed} requests failed: {run.errors[:3]}")
            lat.extend(run.latencies_ms)
            rps.append(run.rps)
            say(f"run {r + 1}/{repeats} {key[0]:>6} c{key[1]:<2}: p50 "
                f"{pct(run.latencies_ms, 50):6.1f} ms  p99 {pct(run.latencies_ms, 99):6.1f} ms  "
                f"{run.rps:6.1f} req/s  ({len(run.events)} requests)")
    out: dict[str, dict[str, float]] = {}
    for (name, c), (_w, lat, rps) in pools.items():
        out[f"{name}_c{c}"] = {"p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2),
                               "rps": round(median(rps), 1), "requests": len(lat)}
    return out


def single_request_extras(targets: Targets, model: Model) -> dict:
    """What the inference_threads setting leaves at concurrency 1, and how many answers are
    unsure (the edge spools those photos in the background: extra work the peer skips)."""
    cores = os.cpu_count() or 1
    session = load_session(model.path, cores)
    for i in range(5):
        session.run(None, {targets.input_name: targets.tensors[i % len(targets.tensors)]})
    lat = []
    for i in range(60):
        t0 = time.perf_counter()
        session.run(None, {targets.input_name: targets.tensors[i % len(targets.tensors)]})
        lat.append((time.perf_counter() - t0) * 1000)
    best = [targets.inproc_call(i) for i in range(len(model.photos))]
    threshold = EdgeSettings().unrecognised_below or 0.5
    return {"limit_p50_ms_all_cores": round(pct(lat, 50), 2),
            "unsure_fraction": round(sum(b < threshold for b in best) / len(best), 2)}


def hot_swap(targets: Targets, model: Model, root: Path, swaps: int, gap_s: float) -> dict:
    """16 HTTP clients; after a quiet stretch, `swaps` hot swaps `gap_s` apart."""
    copies = []
    for v in range(2, swaps + 2):
        path = root / f"model-v{v}.onnx"
        shutil.copyfile(model.path, path)
        copies.append((path, v))
    workers = targets.workers("http", CONCURRENCY)
    windows: list[tuple[float, float]] = []
    total_s = gap_s * (swaps + 1.5)
    result: list[Run] = []
    load = threading.Thread(target=lambda: result.append(drive(workers, 10**9, total_s)))
    load.start()
    time.sleep(gap_s)
    for path, version in copies:
        windows.append(targets.edge.swap(path, version, model.sha256))
        say(f"hot swap to v{version}: {(windows[-1][1] - windows[-1][0]) * 1000:.0f} ms")
        time.sleep(gap_s)
    load.join()
    run = result[0]
    first = windows[0][0]

    def during(start: float, end: float) -> bool:
        return any(start < done and end > sent for sent, done in windows)

    before = [(e - s) * 1000 for s, e, ok, _v in run.events if ok and e < first]
    inside = [(e - s) * 1000 for s, e, ok, _v in run.events if ok and during(s, e)]
    last = [v for s, _e, ok, v in run.events if ok and s > windows[-1][1]]
    if not last or set(last) != {copies[-1][1]}:
        raise RuntimeError(f"answers after the last swap came from versions {set(last)}")
    return {
        "swap_failed_requests": run.failed,
        "swap_requests": len(run.events),
        "swap_p99_ms": round(pct(inside, 99), 2),
        "swap_window_requests": len(inside),
        "swap_before_p99_ms": round(pct(before, 99), 2),
        "swap_p99_ratio": round(pct(inside, 99) / pct(before, 99), 2),
        "swap_load_ms": [round((d - s) * 1000, 1) for s, d in windows],
        "swaps": swaps,
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute of measuring")
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV,
                        help=f"venv with bentoml (default {PEER_VENV.name}/, made on first use)")
    parser.add_argument("--no-peer", action="store_true", help="skip BentoML")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    count = {1: 30 if args.quick else 100, CONCURRENCY: 120 if args.quick else 400}
    max_s = 3.0 if args.quick else 10.0

    bentoml = None if args.no_peer else ensure_peer_venv(args.peer_venv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="e2c-bench-inference-") as tmp:
        root = Path(tmp)
        say(f"photos: {PHOTOS.describe()}; training and exporting the model with the project's code")
        model = build_model(root, 32 if args.quick else 64)
        say(f"model: {model.source}, {model.path.stat().st_size // 1024} KiB, "
            f"{len(model.photos)} test photos")
        cfg = NatsServerConfig.with_free_ports("e2c-bench", root / "js", websocket=False,
                                               jetstream_domain="bench")
        closers: list[Callable[[], None]] = []
        try:
            nats = EmbeddedNats(cfg, root / "nats").start()
            closers.append(nats.stop)
            host, port = nats.mqtt_address
            say("starting our edge (uvicorn + MQTT doors) and the BentoML peer")
            edge = EdgeProcess(model, root, port)
            closers.append(edge.close)
            peer = None
            if bentoml is not None:
                peer = PeerProcess(bentoml, model, root)
                closers.append(peer.close)
            targets = Targets(model, edge, peer, MqttEndpoint(host, port))
            closers.append(targets.close)
            results = measure(targets, repeats, count, max_s)
            extra = single_request_extras(targets, model)
            say("hot swap under 16 concurrent HTTP clients")
            swap = hot_swap(targets, model, root, 3 if args.quick else 6, 1.5 if args.quick else 3)
        finally:
            for close in reversed(closers):
                try:
                    close()
                except Exception as exc:
                    say(f"[red]cleanup: {exc!r}[/]")

    def get(name: str, c: int, key: str) -> float:
        return results.get(f"{name}_c{c}", {}).get(key, float("nan"))

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b and not (math.isnan(a) or math.isnan(b)) else None

    out: dict[str, Any] = {
        "limit_p50_ms": get("limit", 1, "p50_ms"),
        "limit_c16_rps": get("limit", CONCURRENCY, "rps"),
        "inproc_p50_ms": get("inproc", 1, "p50_ms"),
        "inproc_c16_rps": get("inproc", CONCURRENCY, "rps"),
        "http_p50_ms": get("http", 1, "p50_ms"),
        "http_p99_ms": get("http", 1, "p99_ms"),
        "http_c16_p50_ms": get("http", CONCURRENCY, "p50_ms"),
        "http_c16_p99_ms": get("http", CONCURRENCY, "p99_ms"),
        "http_c16_rps": get("http", CONCURRENCY, "rps"),
        "mqtt_p50_ms": get("mqtt", 1, "p50_ms"),
        "mqtt_p99_ms": get("mqtt", 1, "p99_ms"),
        "mqtt_c16_p50_ms": get("mqtt", CONCURRENCY, "p50_ms"),
        "mqtt_c16_p99_ms": get("mqtt", CONCURRENCY, "p99_ms"),
        "mqtt_c16_rps": get("mqtt", CONCURRENCY, "rps"),
        "peer": "bentoml" if bentoml else None,
        "peer_p50_ms": get("peer", 1, "p50_ms") if bentoml else None,
        "peer_p99_ms": get("peer", 1, "p99_ms") if bentoml else None,
        "peer_c16_p99_ms": get("peer", CONCURRENCY, "p99_ms") if bentoml else None,
        "peer_c16_rps": get("peer", CONCURRENCY, "rps") if bentoml else None,
        **swap,
        **extra,
        # Latency ratios: > 1 means slower than the reference; throughput ratios: < 1 means less.
        "http_vs_inproc_p50": ratio(get("http", 1, "p50_ms"), get("inproc", 1, "p50_ms")),
        "mqtt_vs_inproc_p50": ratio(get("mqtt", 1, "p50_ms"), get("inproc", 1, "p50_ms")),
        "http_vs_inproc_c16_rps": ratio(get("http", CONCURRENCY, "rps"),
                                        get("inproc", CONCURRENCY, "rps")),
        "mqtt_vs_inproc_c16_rps": ratio(get("mqtt", CONCURRENCY, "rps"),
                                        get("inproc", CONCURRENCY, "rps")),
        "http_vs_limit_c16_rps": ratio(get("http", CONCURRENCY, "rps"),
                                       get("limit", CONCURRENCY, "rps")),
        "mqtt_vs_limit_c16_rps": ratio(get("mqtt", CONCURRENCY, "rps"),
                                       get("limit", CONCURRENCY, "rps")),
        "http_vs_limit_p50": ratio(get("http", 1, "p50_ms"), get("limit", 1, "p50_ms")),
        "mqtt_vs_limit_p50": ratio(get("mqtt", 1, "p50_ms"), get("limit", 1, "p50_ms")),
        "http_vs_peer_p50": ratio(get("http", 1, "p50_ms"), get("peer", 1, "p50_ms")),
        "mqtt_vs_peer_p50": ratio(get("mqtt", 1, "p50_ms"), get("peer", 1, "p50_ms")),
        "http_vs_peer_c16_rps": ratio(get("http", CONCURRENCY, "rps"),
                                      get("peer", CONCURRENCY, "rps")),
        "mqtt_vs_peer_c16_rps": ratio(get("mqtt", CONCURRENCY, "rps"),
                                      get("peer", CONCURRENCY, "rps")),
        "details": results,
        "model": model.source,
        "photos": len(model.photos),
        "repeats": repeats,
        "concurrency": CONCURRENCY,
        "inference_threads": THREADS,
        # The edge's shared inference pool, as configured (E2C_EDGE_RECOGNIZE_* variables apply).
        # The pool's worker count (the setting may be unset: then derived from the cores).
        "recognize_workers": workers_for(EdgeSettings()),
        "recognize_batch_max": EdgeSettings().recognize_batch_max,
        "recognize_batch_wait_ms": EdgeSettings().recognize_batch_wait_ms,
        "cpus": os.cpu_count(),
        "measure_s": round(time.perf_counter() - started, 1),
        "swap_target_p99_ratio": 2.0,
    }
    emit(out)


if __name__ == "__main__":
    main()
