"""A fleet of edge sites against one core, on this machine: rollouts, catalogue changes,
canaries and offline sites, under a steady capture load.

The core is `edge2core core up` (its own process, TLS on HTTP and the leaf link, an admin
token, one token per site). Each site has its own nats-server joined to the core's as a leaf
node (mutual TLS, logging in as the site with its token), its own spool, forwarder, model
agent, catalogue replica and signed reports (`_fleet_site.py`; `--per-process` sites share a
Python process). Every photo crosses HTTPS to the core's receiver; every model and price change
crosses the core's KV buckets and the leaf links; models are delivered head-only (kilobytes)
to sites holding the backbone. The models are tiny (`_fleet_model.py`): the bench measures
delivery, not recognition.

Timed, each from the API call that makes the change to the moment the last site has it:
- `catalogue_all_s`: a price change (PATCH /v1/products/SKU) to every site's replica;
- `rollout_all_s` (+ `_p50`, `_p99`): a promotion to production to every site reporting the
  version live to the core (its signed model report; `at` is the site's own clock, the same
  machine's);
- `canary_s`: a canary on `--canary` sites live there, then `canary_fleet_s` for the rest;
- `offline_converge_s`: `--offline` sites (one process, shut down) miss a rollout; from
  their restart to every one of them live on it.
Alongside: photos stored per second at the core and its CPU per photo, the core's memory,
TCP connections and database size per site.

    .venv/bin/python bench/fleet.py [--quick] [--sites N] [--per-process K]

Last stdout line: JSON (see `summary`). `sites_left_behind` must be 0.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, say
from _fleet_model import Registered, register_candidate
from _fleet_workers import CoreView, Worker, make_workers, wait_for

from edge2core.roles import RoleProcess, make_role_tls, start_core, trust

ADMIN = "fleet-bench-admin-token-0123456789"
PROBE_SKU = "fleet-probe"
TIMEOUT_S = 900  # a phase that takes longer than this is a failure, not a number


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def spread(delays: dict[str, float]) -> dict[str, float]:
    values = list(delays.values()) or [0.0]
    return {"p50": round(statistics.median(values), 2), "p99": round(percentile(values, 0.99), 2),
            "all": round(max(values), 2)}


class Fleet:
    def __init__(self, root: Path, n: int, per_process: int, rate: float) -> None:
        self.root = root
        self.sites = [f"site-{i:04d}" for i in range(n)]
        self.tokens = {s: secrets.token_urlsafe(18) for s in self.sites}
        self.per_process, self.rate = per_process, rate
        self.workers: list[Worker] = []
        self.core_proc: RoleProcess | None = None
        self.core: CoreView

    # --- setup -----------------------------------------------------------------------------

    def start(self) -> dict[str, float]:
        took: dict[str, float] = {}
        t = time.monotonic()
        ca = make_role_tls(self.root / "ca", self.sites)
        took["certificates_s"] = round(time.monotonic() - t, 1)
        core_proc, ports = start_core(self.root / "core", tls=ca, extra_env={
            "E2C_CORE_ADMIN_TOKEN": ADMIN, "E2C_CORE_SITE_TOKENS": json.dumps(self.tokens),
            # No learning loop, no gate: promotions come from the bench, of models with no
            # evaluation set (the gate judges models, not the fleet).
            "E2C_CORE_AUTOMATION": json.dumps({"enabled": False}),
            "E2C_CORE_GATE": json.dumps({"enabled": False}),
        })  # the default per-site upload limit (`site_rate`) is far above the load's rate
        self.core_proc = core_proc
        core_proc.wait_healthy(120)
        http = httpx.Client(base_url=ports.https_url, verify=trust(ca), timeout=60,
                            headers={"Authorization": f"Bearer {ADMIN}"})
        self.core = CoreView(http, core_proc.proc.pid, self.root / "core")
        products = [{"sku": PROBE_SKU, "name": "Probe", "price": 1.0},
                    *({"sku": f"fleet-{i:03d}", "name": f"Product {i}", "price": 2.0 + i} for i in range(30))]
        http.put("/v1/products", json=products).raise_for_status()
        self.promote(self.register(seed=1).version)
        specs = [{"site": s, "token": self.tokens[s], "data_dir": str(self.root / "sites" / s), "index": i}
                 for i, s in enumerate(self.sites)]
        common = {"core_url": ports.https_url, "core_leaf_url": f"nats-leaf://127.0.0.1:{ports.leafnode}",
                  "tls_dir": str(ca), "rate_per_site": self.rate, "probe_sku": PROBE_SKU}
        self.workers = make_workers(self.root, specs, common, self.per_process)
        t = time.monotonic()
        for worker in self.workers:  # one at a time: each starts its nats-servers in turn
            worker.start()
            wait_for(lambda w=worker: w.ready_at, TIMEOUT_S,  # type: ignore[misc]
                     f"sites {worker.sites[0]}.. ready", workers=[worker])
            say(f"sites {worker.sites[0]}..{worker.sites[-1]} up")
        took["sites_up_s"] = round(time.monotonic() - t, 1)
        wait_for(lambda: self.core.live_on(self.sites, 1), TIMEOUT_S, "every site on model 1 (backbone + head)",
                 every=0.5, workers=self.workers)
        took["first_model_everywhere_s"] = round(time.monotonic() - t, 1)
        wait_for(lambda: self.prices_at(1.0), TIMEOUT_S, "every site's catalogue", every=0.5)
        return took

    def register(self, seed: int) -> Registered:
        return register_candidate(self.root / "core", seed)

    def promote(self, version: int, stage: str = "production", sites: list[str] | None = None) -> float:
        """The core's own promotion; returns the epoch second the call was made."""
        at = time.time()
        body: dict[str, Any] = {"stage": stage, "reason": "fleet bench", "sites": sites or []}
        response = self.core.http.post(f"/v1/models/{version}/promote", json=body)
        if response.is_error:
            raise RuntimeError(f"promote {version}: {response.status_code} {response.text}")
        return at

    def prices_at(self, price: float) -> dict[str, float] | None:
        """site -> when its replica first showed `price` (latest change), once every site has."""
        out = {}
        for worker in self.workers:
            for site in worker.sites:
                changes = [at for p, at in worker.prices.get(site, []) if p == price]
                if not changes:
                    return None
                out[site] = changes[-1]
        return out

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.core_proc is not None:
            self.core_proc.stop()

    # --- measurements ----------------------------------------------------------------------

    def catalogue_change(self, price: float) -> dict[str, float]:
        at = time.time()
        self.core.http.patch(f"/v1/products/{PROBE_SKU}", json={"price": price}).raise_for_status()
        seen = wait_for(lambda: self.prices_at(price), TIMEOUT_S, f"price {price} at every site", every=0.05)
        return {s: t - at for s, t in seen.items()}

    def rollout(self, version: int, sites: list[str], stage: str = "production") -> dict[str, float]:
        at = self.promote(version, stage, sites if stage == "canary" else None)
        if not sites:
            return {}
        live = wait_for(lambda: self.core.live_on(sites, version), TIMEOUT_S,
                        f"model {version} live on {len(sites)} sites", every=0.1, workers=self.workers)
        return {s: t - at for s, t in live.items()}

    def offline_rollout(self, version: int, worker: Worker, hold_s: float) -> dict[str, float]:
        """`worker`'s sites are off while `version` rolls out to the others; back after
        `hold_s`; seconds from their restart to all of them live on it."""
        worker.stop()
        online = [s for s in self.sites if s not in worker.sites]
        self.rollout(version, online)
        time.sleep(hold_s)
        back = time.time()
        worker.start()
        live = wait_for(lambda: self.core.live_on(worker.sites, version), TIMEOUT_S,
                        "the returning sites live", every=0.1, workers=[worker])
        ready = worker.ready_at or back
        return {"offline_converge_s": round(max(live.values()) - back, 2),
                "offline_ready_s": round(ready - back, 2),  # the process and its nats-servers starting
                "offline_converge_after_ready_s": round(max(live.values()) - ready, 2)}

    def site_totals(self) -> dict[str, Any]:
        """Captures refused at the sites and model bytes downloaded, over every process (the
        offline group's since its restart)."""
        totals = [w.stats() or {} for w in self.workers]
        delivered: dict[str, float] = {}
        for t in totals:
            for kind, value in (t.get("delivered_bytes") or {}).items():
                delivered[kind] = delivered.get(kind, 0.0) + value
        return {"captures_refused_at_sites": sum(t.get("refused", 0) for t in totals),
                "captured_at_sites": sum(t.get("captured", 0) for t in totals),
                # How late the site processes' event loops ran (the bench machine's CPU):
                # every delivery step of every site in a process waits behind it.
                "site_loop_lag_max_s": max((t.get("loop_lag_max_s", 0.0) for t in totals), default=0.0),
                "spooled_at_sites": sum(t.get("spooled", 0) for t in totals),
                "model_bytes_delivered": {k: int(v) for k, v in sorted(delivered.items())}}


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    n = args.sites or (20 if args.quick else 100)
    fleet = Fleet(root, n, args.per_process, args.rate)
    result: dict[str, Any] = {"photo_source": "synthetic", "sites": n, "sites_per_process": args.per_process,
                              "rate_per_site": args.rate}
    try:
        say(f"{n} sites, {args.per_process} per process, {args.rate} photos/s each")
        result["setup"] = fleet.start()
        say(f"fleet up: {result['setup']}")
        images0, cpu0, t0 = fleet.core.images(), fleet.core.cpu_s(), time.time()

        catalogue = fleet.catalogue_change(1.5)
        result["catalogue_all_s"], result["catalogue"] = spread(catalogue)["all"], spread(catalogue)
        say(f"price change everywhere in {result['catalogue_all_s']} s")

        v2 = fleet.register(seed=2)
        result["model_bytes"] = {"full": v2.full_bytes, "head": v2.head_bytes, "backbone": v2.backbone_bytes}
        rollout = spread(fleet.rollout(v2.version, fleet.sites))
        result.update(rollout_all_s=rollout["all"], rollout_p50_s=rollout["p50"], rollout_p99_s=rollout["p99"])
        say(f"model {v2.version} live everywhere in {rollout['all']} s (p50 {rollout['p50']})")

        canary_sites = fleet.sites[:args.canary]
        v3 = fleet.register(seed=3).version
        result["canary_s"] = spread(fleet.rollout(v3, canary_sites, stage="canary"))["all"]
        rest = fleet.sites[args.canary:]
        result["canary_fleet_s"] = spread(fleet.rollout(v3, rest))["all"] if rest else 0.0
        say(f"canary on {len(canary_sites)} sites in {result['canary_s']} s, "
            f"then the rest in {result['canary_fleet_s']} s")

        offline = fleet.workers[-1]
        v4 = fleet.register(seed=4).version
        result["offline_sites"] = len(offline.sites)
        result.update(fleet.offline_rollout(v4, offline, args.offline_hold_s))
        say(f"{len(offline.sites)} sites back online converged in {result['offline_converge_s']} s")

        wait_for(lambda: time.time() - t0 >= args.min_load_s, TIMEOUT_S, "the load's minimum window")
        images1, cpu1, t1 = fleet.core.images(), fleet.core.cpu_s(), time.time()
        stored = images1 - images0
        result["photos_stored"] = stored
        result["photos_per_s"] = round(stored / (t1 - t0), 2)
        result["load_window_s"] = round(t1 - t0, 1)
        # The offline group is off for part of the window: fewer photos than offered.
        result["offered_photos_per_s"] = round(n * args.rate, 2)
        python_cpu = cpu1["python"] - cpu0.get("python", 0.0)
        result["core_cpu_ms_per_photo"] = round(1000 * python_cpu / stored, 2) if stored else None
        result["core_cpu_share"] = round(python_cpu / (t1 - t0), 3)
        result["core_nats_cpu_share"] = round(
            sum(v - cpu0.get(k, 0.0) for k, v in cpu1.items() if k != "python") / (t1 - t0), 3)
        result.update(fleet.site_totals())
        rss = fleet.core.rss_mb()
        result["core_rss_mb"], result["core_nats_rss_mb"] = rss.pop("python"), round(sum(rss.values()), 1)
        connections = fleet.core.connections()
        result["core_connections"] = sum(connections.values())
        result["core_connections_by_process"] = connections
        db, result["db_wal_bytes"] = fleet.core.db_bytes()
        result["db_bytes"], result["db_bytes_per_site"] = db, db // n
        result["db_images"] = fleet.core.images()
        result["db_bytes_per_photo"] = round(db / max(1, result["db_images"]))
        final = fleet.core.reports()
        result["sites_left_behind"] = sum(1 for s in fleet.sites
                                          if (final.get(s) or {}).get("version") != v4 or final[s]["state"] != "live")
        result["targets"] = {"rollout_all_s": 30, "catalogue_all_s": 5}
        return result
    finally:
        fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 sites instead of 100")
    parser.add_argument("--sites", type=int, default=0, help="number of sites (overrides --quick)")
    parser.add_argument("--per-process", type=int, default=10, help="sites sharing one Python process")
    parser.add_argument("--rate", type=float, default=0.2, help="photos a second per site")
    parser.add_argument("--canary", type=int, default=5, help="sites in the canary")
    parser.add_argument("--offline-hold-s", type=float, default=10.0, help="how long the offline sites stay off")
    parser.add_argument("--min-load-s", type=float, default=60.0, help="shortest capture window measured")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (logs)")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        emit(run(args, args.keep))
        return
    with tempfile.TemporaryDirectory(prefix="e2c-fleet-") as tmp:
        emit(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
