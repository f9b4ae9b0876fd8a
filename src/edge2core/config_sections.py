"""The nested sections of the settings (`edge2core.config`): cameras and watched folders at a
site, the promotion gate and the learning loop's policy at the core, the core's NATS cluster.
Plain pydantic models, re-exported by `edge2core.config`, so that file holds only the roles'
settings classes and how they are read."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

__all__ = ["AutomationPolicy", "CameraSettings", "NatsCluster", "PromotionGate", "WatchedFolder"]


class CameraSettings(BaseModel):
    """`[[edge.cameras]]`: one RTSP camera the site watches (docs/doors.md). The URL carries no
    credentials; they come from `camera_credentials` (a secret), keyed by `name`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="also its device id")
    url: str = Field(pattern=r"^rtsps?://", description="rtsp://host:port/path, no user:password")
    sample_fps: float = Field(default=5.0, gt=0, le=30, description="frames looked at per second")
    min_interval_s: float = Field(default=2.0, ge=0, description="at most one kept frame per this")
    change_threshold: float = Field(
        default=12.0, gt=0, le=255,
        description="mean absolute grey-level difference (0-255) on a 32x24 thumbnail that "
        "counts as a scene change")
    transport: Literal["tcp", "udp"] = "tcp"
    stall_timeout_s: float = Field(default=10.0, gt=0, description="no packet this long: reconnect")


class WatchedFolder(BaseModel):
    """`[[edge.watched_folders]]`: a folder cameras or scanners drop photos into (docs/doors.md).
    `<path>/<sku>/photo.jpg` is a labelled capture; `<path>/photo.jpg` an unlabelled one."""

    path: Path
    device: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="device id of its photos")
    settle_s: float = Field(default=1.0, ge=0, description="a file unchanged this long is complete")
    poll_s: float = Field(default=0.5, gt=0)


class PromotionGate(BaseModel):
    """`[core.gate]`: no promotion to canary or production if, on the same frozen evaluation
    set, top-1 drops or any class's recall drops by more than these against production."""

    enabled: bool = True
    # 2%: on a typical ~160-photo evaluation set one photo is 0.6%, and a new product
    # legitimately costs the others a photo or two (measured: 2 of 161, 1.3%).
    max_top1_drop: float = Field(default=0.02, ge=0.0, le=1.0)
    max_class_recall_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    min_class_support: int = Field(default=1, ge=1, description="classes with fewer eval photos are not checked")
    min_photo_drop: int = Field(
        default=2, ge=1, description="a drop counts only if at least this many photos (net) went wrong")
    eval_dataset: int | None = Field(
        default=None, description="dataset version whose val split is the frozen evaluation set; "
        "default: the candidate's dataset version")
    # A first model has no production model to be compared with: it must reach a floor instead,
    # so the first model shoppers meet is never one that would embarrass the store.
    first_min_top1: float = Field(
        default=0.6, ge=0.0, le=1.0, description="a first model's top-1 on its own val split must reach this")
    first_min_val_photos: int = Field(
        default=3, ge=1, description="a first model judged on fewer val photos is not served")
    first_min_photos_per_class: int = Field(
        default=4, ge=1, description="a first model needs this many train photos of every class")


class AutomationPolicy(BaseModel):
    """`[core.automation]`: when the core retrains and how it rolls out, without a person."""

    enabled: bool = True
    new_product_min_photos: int = Field(default=30, ge=2)
    new_product_min_devices: int = Field(default=2, ge=1)
    min_photos_per_class: int = Field(default=4, ge=2, description="products with fewer stay out")
    bootstrap_quiet_s: float = Field(
        default=5.0, ge=0, description="the first model waits until arrivals pause this long")
    drift_window: int = Field(default=20, ge=2, description="latest kiosk captures per product")
    drift_min_photos: int = Field(default=8, ge=1, description="fewer recent captures: not judged")
    drift_every_s: float = Field(default=60.0, ge=0, description="how often drift is scored")
    drift_below: float = Field(
        default=0.35, ge=0, le=1,
        description="mean production confidence in a product's own class under which it drifts")
    full_retrain_every_s: float = Field(default=20 * 3600, gt=0)
    full_retrain_hours_utc: tuple[int, int] = Field(
        default=(1, 5), description="[start, end) hours (UTC) a scheduled full retrain may start in")
    full_retrain_min_new_photos: int = Field(default=500, ge=1)
    canary_sites: list[str] = Field(default_factory=list, description="empty: straight to the fleet")
    canary_soak_s: float = Field(default=30.0, ge=0)
    canary_timeout_s: float = Field(default=300.0, gt=0)
    check_every_s: float = Field(default=2.0, gt=0, description="also woken by arrivals")
    min_step_gap_s: float = Field(default=0.5, ge=0, description="arrivals within it: one look")
    train_params: dict[str, Any] = Field(default_factory=dict)


class NatsCluster(BaseModel):
    """`[core.nats_cluster]`: the core's NATS server is one node of a cluster (docs/scaling.md).
    Each machine runs `edge2core core up` with its own `node` and the same `routes`."""

    node: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                      description="this node's server name, unique in the cluster")
    name: str = Field(default="e2c-core", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                      description="the cluster's name, the same on every node")
    port: int = Field(default=6470, ge=1, le=65535, description="route port the peers dial")
    host: str | None = Field(default=None, description="route listen address; default the core's host")
    routes: list[str] = Field(
        min_length=1, description="every node's route URL, nats-route://host:port (this node's own "
        "may be listed); with TLS, each host must be in the core certificate's SANs")

    @model_validator(mode="after")
    def _route_urls(self) -> NatsCluster:
        bad = [r for r in self.routes if not r.startswith(("nats-route://", "nats://", "tls://"))]
        if bad:
            raise ValueError(f"routes must be nats-route://host:port URLs, not {bad}")
        return self
