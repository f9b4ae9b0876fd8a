"""Our edge's recognition doors in their own process, for bench/inference.py.

Built from the same parts `edge2core edge up` uses: a catalogue replica, a `Recognizer`, a
`Gateway` over an `Intake`, the HTTP app (`create_edge_app`, served by uvicorn as `edge up`
serves it) and the MQTT doors (`start_doors`) on a broker the bench runs. No forwarder, model
agent or face detector: the bench measures answering, not uploading.

Talks to the bench over stdin/stdout, one line each:
    -> READY                            once both doors answer
    <- swap PATH VERSION SHA256         load PATH as a new version while serving
    -> SWAPPED SECONDS ok|error:DETAIL
    <- quit
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import uvicorn

from edge2core.common.net import wait_for_port
from edge2core.common.products import Product
from edge2core.config import EdgeSettings
from edge2core.edge.api import create_edge_app
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import Recognizer
from edge2core.edge.inference_pool import InferencePool
from edge2core.edge.intake import Intake
from edge2core.edge.prepare import PreparePolicy
from edge2core.edge.service import start_doors
from edge2core.edge.spool import Spool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--sha256", required=True)
    parser.add_argument("--products", type=Path, required=True, help="JSON list of products")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--site", default="bench")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--mqtt-port", type=int, required=True)
    args = parser.parse_args()

    settings = EdgeSettings(site=args.site, data_dir=args.data, host="127.0.0.1",
                            http_port=args.http_port, mqtt_port=args.mqtt_port)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    catalogue = CatalogueReplica(settings.data_dir / "catalogue.json")
    catalogue.replace([Product.model_validate(p) for p in json.loads(args.products.read_text())])
    recognizer = Recognizer(catalogue, threads=settings.inference_threads,
                            unrecognised_below=settings.unrecognised_below, top_k=settings.top_k)
    recognizer.load(args.model, version=1, sha256=args.sha256)
    spool = Spool(settings.data_dir / "spool", settings.spool_budget_bytes)
    gateway = Gateway(Intake(settings.site, PreparePolicy(), spool), recognizer,
                      InferencePool.for_settings(recognizer, settings))
    app = create_edge_app(gateway, settings.site, dict, settings.max_bytes)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.http_port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", args.http_port, 30)
    doors = start_doors(settings, gateway)
    print("READY", flush=True)
    print(f"pool workers={gateway.pool.workers} max_batch={gateway.pool.max_batch} "
          f"max_wait_s={gateway.pool.max_wait_s}", file=sys.stderr, flush=True)
    try:
        for line in sys.stdin:
            command = line.split()
            if not command or command[0] == "quit":
                break
            if command[0] == "swap":
                start = time.perf_counter()
                try:
                    recognizer.load(Path(command[1]), version=int(command[2]), sha256=command[3])
                    outcome = "ok"
                except Exception as exc:
                    outcome = f"error:{exc!r}".replace("\n", " ")
                print(f"SWAPPED {time.perf_counter() - start:.4f} {outcome}", flush=True)
    finally:
        if gateway.pool.batches:
            print(f"pool: {gateway.pool.batched_requests} requests in {gateway.pool.batches} runs",
                  file=sys.stderr, flush=True)
        for door in doors:
            door.stop()
        server.should_exit = True
        thread.join(10)
        gateway.close()
        spool.close()


if __name__ == "__main__":
    main()
