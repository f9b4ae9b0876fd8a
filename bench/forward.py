"""Forwarding goodput over a shaped link: the edge's forwarder draining a spool to the core,
against `curl` uploading the same bytes as one file over the same link to the same core.

    sudo .venv/bin/python bench/forward.py [--quick] [--concurrency N] [--sweep 4,8,16,32]

--quick (about a minute): 150 small + 1 large photo (7.7 MB), the default concurrency only,
3 repeats. Full (about five minutes): 400 small + 4 large photos (~24 MB), concurrency 4, 8,
16, 32, 3 repeats each.

Needs root (network namespaces). The link (see `_netns.py`): two namespaces of our own,
edge 10.177.0.1 -> core 10.177.0.2, shaped like `tc qdisc add dev <edge veth> root netem rate
20mbit delay 40ms loss 1%`: on the edge -> core (data) direction only, so 40 ms one way and a
40 ms base RTT (ACKs come back undelayed and are never lost). With `sch_netem` missing from the
kernel, the same shaping is done by a user-space emulator between two TUN devices; with no TUN
either, the run is unshaped and says `"shaped": false`.

What is timed:

- ours: a spool (the real `Spool`, filled beforehand with prepared grocery photos of ~30 KB
  plus a few 12-megapixel photos of 2-4.5 MB spread through the queue) drained by the real
  `Forwarder` + `CoreClient` in the edge namespace, from the forwarder's start until the last
  photo left the spool (the core confirmed it, the spool removed it).
- curl: one `curl -T` PUT of a single file holding exactly the same bytes (the photos
  concatenated in spool order) to the same core's `PUT /v1/images/<sha256>`, so it pays the
  same server path (streamed hashing, fsync, privacy re-check, object store, database row),
  once instead of once per photo; `Expect: 100-continue` is turned off, as httpx never sends it.
  Should the core one day refuse trailing bytes after a JPEG's end, the baseline falls back to
  one synthetic JPEG of about the same size (`curl_body: "jpeg"`).

Each run gets a fresh core (new data directory) and a fresh copy of the spool; ours and curl
alternate, repeats give medians. Goodput = photo bytes / seconds, in Mbit/s (1e6 bits).

Last stdout line: JSON with ours_mbit_s, curl_mbit_s, ratio (ours/curl, medians, at the edge's
default `forward_concurrency` unless --concurrency), the sweep (`sweep_mbit_s`, `sweep_ratio`,
`best_concurrency`), the photo mix, the link and TCP congestion control used, and, for the
user-space shaper, the loss it really applied and how late it delivered (CPU pressure), and
photo_source (see _common.py: the grocery photos, $E2C_DATASET or synthetic ones).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PHOTOS, assert_distinct, emit, say, synthetic_photos

HERE = Path(__file__).resolve()
CORE_PORT = 8470
SITE, DEVICE = "bench", "kiosk-1"
TARGET = 0.9


# --- photos ------------------------------------------------------------------------------------

def _grocery_files() -> list[Path]:
    return PHOTOS.grocery_files("train/**/*.jpg")


def small_photos(n: int) -> list[tuple[bytes, object]]:
    """`n` prepared ~30 KB photos: the grocery set (348x348) or synthetic ones."""
    from edge2core.edge.prepare import PreparePolicy, prepare

    files = _grocery_files()
    sources = (
        (f.read_bytes() for f in files[:: max(1, len(files) // n)])
        if len(files) >= n
        else iter(synthetic_photos(n))
    )
    out, seen = [], set()
    for data in sources:
        prepared = prepare(data, PreparePolicy())
        if prepared.sha256 not in seen:
            seen.add(prepared.sha256)
            out.append((prepared.data, prepared))
        if len(out) == n:
            break
    return out


def large_photos(n: int) -> list[tuple[bytes, object]]:
    """`n` 12-megapixel (4000x3000) prepared photos of 2-4 MB: a real photo upscaled, with
    sensor-like noise, prepared at long side 4000 (as a site that ships full resolution)."""
    import numpy as np
    from PIL import Image

    from edge2core.edge.prepare import PreparePolicy, prepare

    files = _grocery_files()
    policy = PreparePolicy(long_side=4000, max_bytes=64 << 20)
    synthetic = [] if files else synthetic_photos(n, size=1024)
    out = []
    for i in range(n):
        src = files[(i * 97) % len(files)].read_bytes() if files else synthetic[i]
        base = Image.open(io.BytesIO(src)).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
        # About 3.0, 2.2, 2.6 and 4.5 MB: the last is above the CoreClient's one-shot limit
        # (4 MiB today), so a full run also takes the resumable (tus-style) path.
        sigma = (6.0, 4.0, 5.0, 11.0)[i % 4]
        noise = np.random.default_rng(i).normal(0, sigma, (3000, 4000, 3)).astype(np.float32)
        pixels = np.clip(np.asarray(base, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=92)
        prepared = prepare(buf.getvalue(), policy)
        out.append((prepared.data, prepared))
    return out


def photo_record(prepared: object, index: int):
    from edge2core.common.events import PhotoRecord, Source

    p = prepared
    return PhotoRecord(
        site=SITE, device=DEVICE, source=Source.KIOSK, sku=f"SKU-{index % 12:04d}",
        sha256=p.sha256, size=len(p.data), width=p.width, height=p.height,  # type: ignore[attr-defined]
        phash=f"{p.phash:016x}",  # type: ignore[attr-defined]
        quality=p.quality.to_dict() if p.quality else None,  # type: ignore[attr-defined]
    )


def build_spool(root: Path, photos: list[tuple[bytes, object]]) -> list[bytes]:
    """Fill the master spool (copied per run); returns the bytes in the order it forwards them."""
    from edge2core.edge.spool import Spool

    spool = Spool(root, budget_bytes=1 << 40)
    try:
        for i, (data, prepared) in enumerate(photos):
            spool.put(photo_record(prepared, i), data, priority=0)
        order = [spool.read(item.sha256) for item in spool.pending(len(photos) + 1)]
    finally:
        spool.close()
    return order


def interleave(small: list, large: list) -> list:
    """Large photos spread evenly through the queue, not bunched at one end."""
    out = list(small)
    for k, item in enumerate(large):
        out.insert((k + 1) * len(out) // (len(large) + 1), item)
    return out


def synthetic_jpeg(target: int) -> bytes:
    """One valid JPEG of about `target` bytes (noise, sized by a first estimate)."""
    import numpy as np
    from PIL import Image

    def encode(w: int, h: int) -> bytes:
        pixels = np.random.default_rng(7).integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=75)
        return buf.getvalue()

    per_px = len(encode(512, 512)) / (512 * 512)
    w = 4096
    h = max(16, int(target / per_px / w))
    data = encode(w, h)
    h = max(16, int(h * target / len(data)))
    return encode(w, h)


# --- processes in the namespaces -------------------------------------------------------------

def serve_core(argv: list[str]) -> None:
    """`forward.py _core`: a fresh core (receiver and all) on uvicorn, as `core up` serves it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=CORE_PORT)
    parser.add_argument("--max-upload", type=int, default=32 << 20)
    args = parser.parse_args(argv)

    import threading

    import uvicorn

    from edge2core.config import CoreSettings
    from edge2core.core.service import build_core_services, create_core_app

    settings = CoreSettings(data_dir=args.data_dir, site_tokens={}, host=args.host,
                            http_port=args.port, max_upload_bytes=args.max_upload)
    app = create_core_app(build_core_services(settings))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_config=None,
                                           access_log=False))

    def announce() -> None:
        while not server.started:
            time.sleep(0.02)
        sys.stdout.write("READY\n")
        sys.stdout.flush()

    threading.Thread(target=announce, daemon=True).start()
    server.run()


def _counter(metric) -> float:
    try:
        return float(metric._value.get())
    except AttributeError:
        return float("nan")


def run_edge(argv: list[str]) -> None:
    """`forward.py _edge`: drain a filled spool with the real Forwarder; print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)

    from edge2core.common.metrics import FORWARD_RETRIES
    from edge2core.edge.core_client import CoreClient
    from edge2core.edge.forwarder import Forwarder
    from edge2core.edge.spool import Spool

    async def main() -> dict:
        spool = Spool(args.spool / "spool", budget_bytes=1 << 40)
        stats = spool.stats()
        quarantine = args.spool / "quarantine"
        quarantine.mkdir(exist_ok=True)
        core = CoreClient(args.url)
        done = asyncio.Event()
        forwarded = {"photos": 0, "bytes": 0}

        async def on_forwarded(event) -> None:
            forwarded["photos"] += 1
            forwarded["bytes"] += event.size
            if forwarded["photos"] >= stats.items:
                done.set()

        forwarder = Forwarder(spool, core, quarantine_dir=quarantine,
                              concurrency=args.concurrency, on_forwarded=on_forwarded)
        start = time.perf_counter()
        task = asyncio.create_task(forwarder.run())
        waiter = asyncio.create_task(done.wait())
        while not done.is_set():
            await asyncio.wait({task, waiter}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            if task.done():  # the forwarder died: report, don't hang
                task.result()
            if any(quarantine.iterdir()):
                break
        seconds = time.perf_counter() - start
        task.cancel()
        waiter.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
        await core.aclose()
        left = spool.stats().items
        spool.close()
        return {
            "seconds": seconds, "photos": forwarded["photos"], "bytes": forwarded["bytes"],
            "left_in_spool": left, "quarantined": len(list(quarantine.glob("*.json"))),
            "retries": _counter(FORWARD_RETRIES),
        }

    result = asyncio.run(main())
    sys.stdout.write(json.dumps(result) + "\n")


class Bench:
    def __init__(self, link, work: Path, master: Path, total_bytes: int, count: int,
                 logs: Path) -> None:
        self.link = link
        self.work = work
        self.master = master
        self.total_bytes = total_bytes
        self.count = count
        self.logs = logs
        self.runs = 0

    def _start_core(self, tag: str, max_upload: int):
        from _netns import CORE_IP

        data_dir = self.work / f"core-{tag}"
        log = (self.logs / f"core-{tag}.log").open("wb")
        proc = self.link.popen(
            self.link.core_ns,
            [sys.executable, str(HERE), "_core", "--data-dir", str(data_dir), "--host", CORE_IP,
             "--port", str(CORE_PORT), "--max-upload", str(max_upload)],
            stdout=subprocess.PIPE, stderr=log,
        )
        line = proc.stdout.readline().decode().strip()
        if line != "READY":
            raise RuntimeError(f"the core did not start; see {log.name}")
        return proc, data_dir

    def _stop_core(self, proc, data_dir: Path) -> None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)

    def ours(self, concurrency: int) -> dict:
        from _netns import CORE_IP

        self.runs += 1
        tag = f"ours-{self.runs}"
        run_dir = self.work / tag
        shutil.copytree(self.master, run_dir / "spool")
        proc, data_dir = self._start_core(tag, 32 << 20)
        try:
            limit = max(120, int(self.total_bytes * 8 / 0.5e6))  # fail below 0.5 Mbit/s
            with (self.logs / f"edge-{tag}.log").open("wb") as log:
                edge = self.link.popen(
                    self.link.edge_ns,
                    [sys.executable, str(HERE), "_edge", "--spool", str(run_dir), "--url",
                     f"http://{CORE_IP}:{CORE_PORT}", "--concurrency", str(concurrency)],
                    stdout=subprocess.PIPE, stderr=log,
                )
                try:
                    out, _ = edge.communicate(timeout=limit)
                except subprocess.TimeoutExpired:
                    edge.kill()
                    raise RuntimeError(f"ours (c={concurrency}) took over {limit} s") from None
            if edge.returncode != 0 or not out.strip():
                raise RuntimeError(f"the edge run failed; see {log.name}")
            result = json.loads(out.decode().strip().splitlines()[-1])
        finally:
            self._stop_core(proc, data_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
        if result["photos"] != self.count or result["left_in_spool"] or result["quarantined"]:
            raise RuntimeError(f"not every photo was confirmed: {result}")
        result["mbit_s"] = result["bytes"] * 8 / result["seconds"] / 1e6
        return result

    def curl(self, body: Path, meta: str, sha256: str, size: int) -> dict:
        from _netns import CORE_IP

        self.runs += 1
        tag = f"curl-{self.runs}"
        proc, data_dir = self._start_core(tag, max(32 << 20, 2 * size))
        answer = self.work / f"{tag}.out"
        try:
            cmd = [
                "curl", "-sS", "-o", str(answer), "-w", "%{http_code} %{time_total} %{size_upload}",
                "-T", str(body), "-H", "Expect:", "-H", "Content-Type: image/jpeg",
                "-H", f"X-E2C-Meta: {meta}", f"http://{CORE_IP}:{CORE_PORT}/v1/images/{sha256}",
            ]
            done = subprocess.run(["ip", "netns", "exec", self.link.edge_ns, *cmd],
                                  check=False, capture_output=True, text=True, timeout=600)
        finally:
            self._stop_core(proc, data_dir)
        status, seconds, uploaded = done.stdout.split()
        text = answer.read_text(errors="replace") if answer.exists() else done.stderr
        answer.unlink(missing_ok=True)
        if status != "201" or int(float(uploaded)) != size:
            return {"ok": False, "status": status, "answer": text[:300]}
        return {"ok": True, "seconds": float(seconds), "bytes": size,
                "mbit_s": size * 8 / float(seconds) / 1e6}


def meta_for(body: bytes) -> tuple[str, str]:
    from PIL import Image

    from edge2core.common.events import PhotoRecord, Source

    sha256 = hashlib.sha256(body).hexdigest()
    with Image.open(io.BytesIO(body)) as image:
        width, height = image.size
    record = PhotoRecord(site=SITE, device=DEVICE, source=Source.KIOSK, sku="SKU-0000",
                         sha256=sha256, size=len(body), width=width, height=height)
    return record.model_dump_json(), sha256


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> None:
    from edge2core.config import EdgeSettings

    default_c = EdgeSettings().forward_concurrency
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute")
    parser.add_argument("--concurrency", type=int, default=default_c,
                        help=f"the headline run's Forwarder concurrency (default: the edge's "
                             f"forward_concurrency, {default_c})")
    parser.add_argument("--sweep", default=None,
                        help="comma-separated concurrencies also measured (default: none with "
                             "--quick, else 4,8,16,32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=None, help="~30 KB photos (150 / 400)")
    parser.add_argument("--large", type=int, default=None,
                        help="12-MP photos: 3.0, 2.2, 2.6, 4.5 MB, ... (1 / 4)")
    parser.add_argument("--shaper", choices=["auto", "netem", "tun", "none"], default="auto")
    parser.add_argument("--rate-mbit", type=float, default=20.0)
    parser.add_argument("--delay-ms", type=float, default=40.0, help="edge -> core, one way")
    parser.add_argument("--reverse-delay-ms", type=float, default=0.0, help="core -> edge")
    parser.add_argument("--loss", type=float, default=0.01, help="edge -> core, 0.01 = 1%%")
    parser.add_argument("--cc", default=None,
                        help="TCP congestion control in both namespaces (default: the kernel's)")
    args = parser.parse_args()

    if os.geteuid() != 0:
        sys.exit("forward.py needs root: it creates network namespaces")
    n_small = args.small if args.small is not None else (150 if args.quick else 400)
    n_large = args.large if args.large is not None else (1 if args.quick else 4)
    if args.sweep is None:
        sweep = [] if args.quick else [4, 8, 16, 32]
    else:
        sweep = [int(c) for c in args.sweep.split(",") if c.strip()]
    sweep = sorted(set(sweep) | {args.concurrency})

    from _netns import Link

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="e2c-forward-"))
    logs = work / "logs"
    logs.mkdir()

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    try:
        say(f"photos: {PHOTOS.describe()}; preparing {n_small} small and {n_large} large photos")
        small = small_photos(n_small)
        large = large_photos(n_large)
        photos = interleave(small, large)
        assert_distinct((d for d, _ in photos), "prepared photos")
        master = work / "master"
        order = build_spool(master, photos)
        total = sum(len(d) for d in order)
        body_path = work / "body.bin"
        body = b"".join(order)  # exactly the spool's bytes, in the order they are forwarded
        body_path.write_bytes(body)
        meta, body_sha = meta_for(body)
        curl_body = "concat"
        say(f"{len(order)} photos, {total / 1e6:.1f} MB (small mean "
            f"{statistics.mean(len(d) for d, _ in small) / 1e3:.0f} KB; large "
            f"{', '.join(f'{len(d) / 1e6:.1f}' for d, _ in large)} MB)")

        with Link(rate_mbit=args.rate_mbit, delay_ms=args.delay_ms, loss=args.loss,
                  reverse_delay_ms=args.reverse_delay_ms, shaper=args.shaper,
                  congestion_control=args.cc) as link:
            cc = link.sysctl_get(link.edge_ns, "net.ipv4.tcp_congestion_control")
            desc = link.describe()
            say(f"link: {desc['shaper']} ({'shaped' if desc['shaped'] else 'NOT shaped'}), "
                f"{args.rate_mbit:g} Mbit/s, {args.delay_ms:g} ms edge->core + "
                f"{args.reverse_delay_ms:g} ms back, loss {args.loss:.1%}, TCP {cc}"
                + (f"; {desc['note']}" if desc["note"] else ""))
            bench = Bench(link, work, master, total, len(order), logs)
            ours: dict[int, list[dict]] = {c: [] for c in sweep}
            curls: list[dict] = []
            for rep in range(args.repeats):
                result = bench.curl(body_path, meta, body_sha, len(body))
                if not result["ok"] and curl_body == "concat":
                    say(f"[yellow]the core refused the concatenation ({result['status']}: "
                        f"{result['answer'][:120]}); falling back to one JPEG of the same size")
                    curl_body = "jpeg"
                    body = synthetic_jpeg(total)
                    body_path.write_bytes(body)
                    meta, body_sha = meta_for(body)
                    result = bench.curl(body_path, meta, body_sha, len(body))
                if not result["ok"]:
                    raise RuntimeError(f"curl's upload was refused: {result}")
                curls.append(result)
                say(f"repeat {rep + 1}/{args.repeats}  curl: {result['mbit_s']:.2f} Mbit/s "
                    f"({result['seconds']:.1f} s)")
                for c in sweep:
                    r = bench.ours(c)
                    ours[c].append(r)
                    say(f"repeat {rep + 1}/{args.repeats}  ours c={c}: {r['mbit_s']:.2f} Mbit/s "
                        f"({r['seconds']:.1f} s, {r['retries']:.0f} retries)")
            emu = link.emulator_stats()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    curl_mbit = _median([r["mbit_s"] for r in curls])
    by_c = {c: _median([r["mbit_s"] for r in rs]) for c, rs in ours.items()}
    best_c = max(by_c, key=lambda c: by_c[c])
    ours_mbit = by_c[args.concurrency]
    up = emu.get("edge_to_core", {})
    try:  # photos above this go through the resumable protocol (chunked PATCHes)
        from edge2core.edge.core_client import RESUMABLE_ABOVE as resumable_above
    except ImportError:
        resumable_above = None
    result = {
        "ours_mbit_s": ours_mbit,
        "curl_mbit_s": curl_mbit,
        "ratio": round(ours_mbit / curl_mbit, 3),
        "target_ratio": TARGET,
        "meets_target": ours_mbit / curl_mbit >= TARGET,
        "concurrency": args.concurrency,
        "ours_runs_mbit_s": [round(r["mbit_s"], 3) for r in ours[args.concurrency]],
        "curl_runs_mbit_s": [round(r["mbit_s"], 3) for r in curls],
        "ours_seconds_median": _median([r["seconds"] for r in ours[args.concurrency]]),
        "curl_seconds_median": _median([r["seconds"] for r in curls]),
        "ours_retries_median": _median([r["retries"] for r in ours[args.concurrency]]),
        "sweep_mbit_s": {str(c): v for c, v in sorted(by_c.items())},
        "sweep_ratio": {str(c): round(v / curl_mbit, 3) for c, v in sorted(by_c.items())},
        "best_concurrency": best_c,
        "best_mbit_s": by_c[best_c],
        "best_ratio": round(by_c[best_c] / curl_mbit, 3),
        "photos": len(order),
        "photo_bytes": total,
        "small_photos": len(small),
        "small_mean_bytes": round(statistics.mean(len(d) for d, _ in small)),
        "large_photos": len(large),
        "large_bytes": [len(d) for d, _ in large],
        "resumable_above_bytes": resumable_above,
        "photos_resumable": sum(len(d) > resumable_above for d in order) if resumable_above else 0,
        "curl_body": curl_body,
        "curl_bytes": len(body),
        "repeats": args.repeats,
        "mode": "quick" if args.quick else "full",
        "tcp_congestion_control": cc,
        "link": desc,
        "shaped": desc["shaped"],
        "measured_loss_edge_to_core": round(up["lost"] / up["packets"], 4) if up.get("packets") else None,
        "emulator_overflow_drops": up.get("overflow"),
        "emulator_max_queue_packets": up.get("max_queue"),
        "emulator_late_mean_ms": up.get("late_mean_ms"),
        "emulator_late_max_ms": up.get("late_max_ms"),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    emit(result)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_core":
        serve_core(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_edge":
        run_edge(sys.argv[2:])
    else:
        try:
            main()
        except KeyboardInterrupt:
            say("[red]interrupted; namespaces and processes removed")
            sys.exit(130)
