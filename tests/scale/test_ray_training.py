"""Training on a Ray cluster: a real two-node Ray cluster started on this machine as a user
would (``ray start --head`` and ``ray start --address``, one CPU each), reached through Ray
Client (``training_cluster = "ray://..."``).

* the full path through a real core gives the same val accuracy, within noise, as the same
  run in the core's process (fine-tuning with Ray Train + DDP over both nodes, embedding
  spread over them, workers reading photos from the object store);
* a worker killed in the middle of a fine-tuning is replaced and the job resumes from its
  last checkpoint;
* a core without ``training_cluster`` never imports Ray.

Tiny recipes (few photos, small crops, two or three epochs) keep it short on two cores."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edge2core.common.net import free_port
from tests.support.grocery import DATASET, sku, store_kiosk
from tests.support.recorded_sites import RecordedSites

pytestmark = [pytest.mark.scale, pytest.mark.timeout(1500)]  # a busy machine starts Ray slowly

needs_grocery = pytest.mark.skipif(not (DATASET / "train.txt").is_file(),
                                   reason=f"grocery dataset not found at {DATASET}")

FINE_IDS = (4, 30, 45, 63)  # four products from different coarse classes
RECIPE = {"epochs": 2, "train_size": 64, "batch_size": 8, "lr": 1e-4, "init": "linear_probe", "int8": False,
          "ema_decay": 0.0, "catalogue_copies": 0,  # a 2-epoch smoke recipe: no average, no catalogue images
          "shipped_eval_max": 16}


def _ray_env() -> dict[str, str]:
    # raylet_start_wait_time_s: on two busy cores the node's agents take more than the
    # default 30 s to import Ray, and the raylet (or Ray Client's proxy) gives up waiting
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_raylet_start_wait_time_s": "180",
            "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180"}


def _ports() -> list[str]:
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}"]


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    ray_bin = str(Path(sys.executable).with_name("ray"))
    with log.open("ab") as out:
        return subprocess.Popen([ray_bin, "start", *args, "--num-cpus=1", "--object-store-memory=100000000",
                                 "--disable-usage-stats", "--include-log-monitor=false", "--block", *_ports()],
                                env=_ray_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def cluster():
    """``ray://`` address of a two-node local cluster; stopped (its process groups) after."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install edge2core[ray])")
    temp = Path(tempfile.mkdtemp(prefix="e2cray", dir="/tmp"))  # short: Ray's socket paths
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        gcs, address = _start_head(temp, nodes)
        nodes.append(_start(["--address", f"127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1"], temp / "node.log"))
        deadline = time.monotonic() + 120
        while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
            assert time.monotonic() < deadline, (temp / "node.log").read_text()[-2000:]
            time.sleep(0.5)
        yield address
    finally:
        ray.shutdown()
        for process in reversed(nodes):
            _stop(process)
        shutil.rmtree(temp, ignore_errors=True)


def _start_head(temp: Path, nodes: list[subprocess.Popen[bytes]]) -> tuple[int, str]:
    """The head node (GCS port, ``ray://`` address), this process connected to it; a head
    that timed out starting (Ray waits 30 s for its own processes) is started again."""
    import ray

    for _attempt in range(3):
        gcs, client = free_port(), free_port()
        head = _start(["--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--ray-client-server-port={client}",
                       "--include-dashboard=false", f"--dashboard-port={free_port()}", f"--temp-dir={temp}"],
                      temp / "head.log")
        nodes.append(head)
        address = f"ray://127.0.0.1:{client}"
        deadline = time.monotonic() + 180
        while head.poll() is None and time.monotonic() < deadline:
            try:
                ray.init(address=address, namespace="edge2core", log_to_driver=False, logging_level="ERROR")
                return gcs, address
            except ConnectionError:
                time.sleep(1)
        _stop(nodes.pop())
    raise AssertionError((temp / "head.log").read_text()[-3000:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the node's process group (``ray start --block`` stops its own processes on
    it), then SIGKILL to what is left of the group."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)  # workers left in the group after the leader
    except ProcessLookupError:
        pass


def _core(data_dir: Path, cluster: str | None):
    """A real core (SQLite, local object store) with four products' photos, dataset v1."""
    from edge2core.common.products import Product
    from edge2core.config import CoreSettings
    from edge2core.core.curate.datasets import DatasetQuery
    from edge2core.core.service import build_core_services

    settings = CoreSettings(data_dir=data_dir, training_cluster=cluster, training_threads=1)
    core = build_core_services(settings, RecordedSites([]))
    core.catalogue.upsert([Product(sku=sku(i), name=f"p{i}", coarse=f"c{i}", price=1.0) for i in FINE_IDS])
    for split, per_class in (("train", 8), ("val", 5)):
        for fine in FINE_IDS:
            store_kiosk(core, _photos(fine, split, per_class), sku(fine), split, site="s1", devices=1)
    core.dataset = core.datasets.build(DatasetQuery(skus=[sku(i) for i in FINE_IDS]))
    return core


def _photos(fine: int, split: str, n: int) -> list[bytes]:
    out: list[bytes] = []
    for line in (DATASET / f"{split}.txt").read_text().splitlines():
        if line.strip() and int(line.split(",")[1]) == fine and len(out) < n:
            out.append((DATASET / line.split(",")[0].strip()).read_bytes())
    return out


@pytest.mark.slow  # a Ray cluster and two full runs: minutes on 2 cores (`make test-scale`)
@needs_grocery
def test_full_run_on_the_cluster_matches_the_in_process_run(cluster, tmp_path) -> None:
    local = _core(tmp_path / "local", None)
    remote = _core(tmp_path / "remote", cluster)
    assert type(remote.trainer.get().runner).__name__ == "RayRunner"
    here = local.trainer.train(local.dataset.version, seed=0, path="full", promote=False, params=RECIPE)
    there = remote.trainer.train(remote.dataset.version, seed=0, path="full", promote=False, params=RECIPE)
    assert there.record["device"] == "ray:2xcpu" and here.record["device"] == "cpu"
    head = remote.store.get(there.model.artifacts["head"].key)
    assert head  # registered like any model, with its own fine-tuned backbone
    assert there.model.lineage["backbone"].startswith("efficientnet-lite0-ft-")
    # every photo embedded with the new backbone, on the cluster's workers
    assert remote.trainer.cache.count(there.model.lineage["backbone"]) == remote.dataset.stats["images"]
    a, b = here.metrics["val"]["top1"], there.metrics["val"]["top1"]
    assert a >= 0.5 and b >= 0.5, (a, b)  # chance is 0.25
    assert abs(a - b) <= 0.2, (a, b)  # 20 val photos: one photo is 0.05


@pytest.mark.slow
def test_cluster_embeddings_equal_in_process_ones(cluster, tmp_path) -> None:
    """Slices embedded by the workers, read from the store, come back in order and equal the
    core's own (generated photos: runs without the grocery dataset)."""
    from edge2core.common.objectstore import LocalObjectStore
    from edge2core.core.train.backbones import IMAGENET_BACKBONE, Backbones
    from edge2core.core.train.embeddings import OrtEmbedder
    from edge2core.core.train.jobs import InProcessRunner, StoreSpec
    from edge2core.core.train.ray_runner import RayRunner

    store = LocalObjectStore(tmp_path / "objects")
    keys = [_put_generated(store, i) for i in range(10)]
    backbones = Backbones(store, threads=1)
    runner = RayRunner(cluster, StoreSpec(str(tmp_path / "objects")), storage=str(tmp_path / "ckpt"), slice_size=3)
    there = runner.embed(keys, IMAGENET_BACKBONE, backbones)
    here = InProcessRunner(store, lambda v: OrtEmbedder(backbones.onnx(v), threads=1)).embed(
        keys, IMAGENET_BACKBONE, backbones)
    assert there.shape == (10, 1280) and there.dtype == np.float32
    np.testing.assert_allclose(there, here, atol=1e-4)


def _put_generated(store, i: int) -> str:  # type: ignore[no-untyped-def]
    import io

    from PIL import Image

    rng = np.random.default_rng(i)
    image = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, "PNG")
    store.put(f"photos/{i}.png", out.getvalue())
    return f"photos/{i}.png"


@pytest.mark.slow
@needs_grocery
def test_a_worker_killed_mid_run_is_replaced_and_the_run_resumes(cluster, tmp_path) -> None:
    from edge2core.common.objectstore import LocalObjectStore
    from edge2core.core.train.backbones import IMAGENET_BACKBONE, Backbones
    from edge2core.core.train.finetune import FineTuneConfig
    from edge2core.core.train.jobs import FineTuneJob, StoreSpec
    from edge2core.core.train.ray_runner import RayRunner

    store = LocalObjectStore(tmp_path / "objects")
    train = [(f"t/{f}/{i}", f) for f in FINE_IDS[:2] for i, _ in enumerate(_photos(f, "train", 20))]
    for f in FINE_IDS[:2]:
        for i, data in enumerate(_photos(f, "train", 20)):
            store.put(f"t/{f}/{i}", data)
        for i, data in enumerate(_photos(f, "val", 2)):
            store.put(f"v/{f}/{i}", data)
    val = [(f"v/{f}/{i}", f) for f in FINE_IDS[:2] for i in range(2)]
    job = FineTuneJob(base=IMAGENET_BACKBONE, train_keys=tuple(k for k, _ in train),
                      train_labels=np.array([FINE_IDS.index(f) for _, f in train]),
                      val_keys=tuple(k for k, _ in val), val_labels=np.array([FINE_IDS.index(f) for _, f in val]),
                      classes=(sku(FINE_IDS[0]), sku(FINE_IDS[1])),
                      config=FineTuneConfig(epochs=6, batch_size=8, train_size=96, seed=0, patience=9), threads=1)
    storage = tmp_path / "ckpt"
    runner = RayRunner(cluster, StoreSpec(str(tmp_path / "objects")), storage=str(storage), max_failures=2)
    killer = subprocess.Popen([sys.executable, "-c", _KILLER, str(storage)], stdout=subprocess.PIPE, text=True)
    try:
        result = runner.finetune(job, Backbones(store, threads=1))
    finally:
        killer.kill()
    killed = killer.communicate()[0]
    assert killed.strip(), "no worker was found to kill"
    assert [r["epoch"] for r in result.log] == [1, 2, 3, 4, 5, 6]  # each epoch once: resumed, not redone
    assert result.head.info["resumed_at_epochs"] and result.head.info["resumed_at_epochs"][0] >= 1, (killed, result.log)
    assert result.device == "ray:2xcpu"


# Waits for the second checkpoint (the first is then surely recorded: a checkpoint's folder
# appears while it is being written), then SIGKILLs one Ray Train worker process of this job
# (found by its process title, started after the killer), as a node losing a worker would;
# prints the pid it killed.
_KILLER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    def started(pid):  # clock ticks after boot (field 22 of /proc/<pid>/stat)
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    me = started("self")
    storage = Path(sys.argv[1])
    deadline = time.monotonic() + 240
    while len(list(storage.glob("*/checkpoint_*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            mine = started(pid) >= me  # a worker of this job, not one of an earlier job
        except OSError:
            continue
        if title.startswith("ray::RayTrainWorker") and mine:
            os.kill(int(pid), signal.SIGKILL)
            print(pid, title.strip(), sorted(p.name for p in storage.glob("*/checkpoint_*")), flush=True)
            break
""")


def test_a_core_without_a_cluster_never_imports_ray(tmp_path) -> None:
    """Fast path training, service wiring and the runner choice, in a fresh interpreter."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from edge2core.config import CoreSettings
        from edge2core.core.service import build_core_services
        from edge2core.core.train import ray_runner, run
        settings = CoreSettings(data_dir=Path({str(tmp_path)!r}))
        core = build_core_services(settings)
        trainer = core.trainer.get()
        assert ray_runner.job_runner(settings) is None
        assert type(trainer.runner).__name__ == "InProcessRunner"
        assert "torch" in sys.modules and "edge2core.core.train.fit" in sys.modules  # the trainer is built
        print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True)
    assert out.stdout.split() == ["[]"]
