"""Prometheus metrics shared by both roles, exposed on each service's `/metrics`."""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PHOTOS_RECEIVED = Counter(
    "e2c_photos_received_total", "Photos accepted at a door", ["door", "source"]
)
PHOTOS_REJECTED = Counter(
    "e2c_photos_rejected_total", "Photos refused at a door", ["door", "reason"]
)
PHOTOS_DUPLICATE = Counter(
    "e2c_photos_duplicate_total", "Duplicates not spooled again", ["kind"]
)
PHOTOS_FLAGGED = Counter("e2c_photos_flagged_total", "Photos kept with a quality flag", ["flag"])
FACES_REDACTED = Counter("e2c_faces_redacted_total", "Faces blurred before leaving the site")
SPOOL_EVICTED = Counter(
    "e2c_spool_evicted_total", "Photos evicted from a full spool to make room", ["source"]
)
SPOOL_INDEX_REPAIRED = Counter(
    "e2c_spool_index_repaired_total", "Corrupt spool indexes rebuilt at start (old one quarantined)"
)
SPOOL_OLDEST_AGE = Gauge("e2c_spool_oldest_age_seconds", "Age of the oldest photo waiting")
DEVICES_REFUSED = Counter(
    "e2c_devices_refused_total", "Unknown or revoked devices refused", ["door", "reason"]
)
SPOOL_BYTES = Gauge("e2c_spool_bytes", "Bytes waiting in the spool")
SPOOL_ITEMS = Gauge("e2c_spool_items", "Photos waiting in the spool")
FORWARDED = Counter("e2c_forwarded_total", "Photos confirmed by the core")
FORWARDED_BYTES = Counter("e2c_forwarded_bytes_total", "Bytes confirmed by the core")
FORWARD_RETRIES = Counter("e2c_forward_retries_total", "Upload attempts that failed")
MQTT_POISON = Counter(
    "e2c_mqtt_poison_total",
    "MQTT messages whose handler failed every attempt (kept as dead letters)",
    ["topic_kind"],
)
MQTT_REDELIVERY_SKIPPED = Counter(
    "e2c_mqtt_redelivery_skipped_total",
    "MQTT messages the broker resent while a worker still held the first copy (not handled twice)",
)
MQTT_RETAINED_SKIPPED = Counter(
    "e2c_mqtt_retained_skipped_total", "Retained MQTT messages replayed on subscribe and skipped"
)
MQTT_RETAINED_CLEARED = Counter(
    "e2c_mqtt_retained_cleared_total",
    "Retained device messages the edge deleted from the broker (photos are never kept there)",
)
FORWARD_QUARANTINED = Counter(
    "e2c_forward_quarantined_total", "Spooled photos put aside for an operator, with a reason"
)
RECOGNITIONS = Counter(
    "e2c_recognitions_total", "Recognition answers", ["door", "outcome"]
)
RECOGNITION_SECONDS = Histogram(
    "e2c_recognition_seconds",
    "Time to answer a recognition request",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
MODEL_VERSION = Gauge("e2c_model_version", "Model version serving at this edge")
MODEL_SWAPS = Counter("e2c_model_swaps_total", "Model loads", ["outcome"])
MODEL_DELIVERY_BYTES = Counter(
    "e2c_model_delivery_bytes_total", "Model bytes downloaded by kind (full, backbone, head)",
    ["kind"],
)
CORE_IMAGES = Counter("e2c_core_images_total", "Photos stored at the core", ["outcome"])


def snapshot(prefix: str = "e2c_") -> dict[str, float | dict[str, float]]:
    """This process's counters and gauges as plain numbers, for status pages and the CLI.

    Labelled series become {"label=value,...": number}; histograms are left to Prometheus.
    """
    out: dict[str, float | dict[str, float]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith(prefix) or family.type not in ("counter", "gauge"):
            continue
        name = family.name.removeprefix(prefix)
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if sample.labels:
                key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                series = out.setdefault(name, {})
                assert isinstance(series, dict)
                series[key] = sample.value
            else:
                out[name] = sample.value
    return out


def mount_metrics(app: FastAPI) -> None:
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
