"""Settings for every edge2core process.

Precedence, highest first: explicit keyword arguments (the CLI's options), `E2C_*` environment
variables, the TOML file named by `E2C_CONFIG` (section `[core]`, `[edge]` or `[demo]`), defaults.
Default ports sit away from the standard ports of services that are often already running
(1883 Mosquitto, 4222 NATS, 5432 PostgreSQL, 6379 Redis).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from edge2core.common.rate_limit import RateLimit
from edge2core.config_sections import (  # re-exported: the settings' nested sections
    AutomationPolicy,
    CameraSettings,
    NatsCluster,
    PromotionGate,
    WatchedFolder,
)

CONFIG_ENV = "E2C_CONFIG"


class TomlSectionSource(PydanticBaseSettingsSource):
    """Reads one `[section]` of the TOML file named by `E2C_CONFIG`, if any."""

    def __init__(self, settings_cls: type[BaseSettings], section: str) -> None:
        super().__init__(settings_cls)
        self._values = _read_toml_section(os.environ.get(CONFIG_ENV), section)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items() if k in self.settings_cls.model_fields}


def _read_toml_section(path: str | None, section: str) -> dict[str, Any]:
    if not path:
        return {}
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} (from ${CONFIG_ENV}) does not exist")
    with file.open("rb") as fh:
        data = tomllib.load(fh)
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise ValueError(f"[{section}] in {file} must be a table")
    return value


class _Settings(BaseSettings):
    section: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlSectionSource(settings_cls, cls.section))


class CoreSettings(_Settings):
    """The core: receiver, datasets, training, registry, catalogue."""

    section: ClassVar[str] = "core"
    model_config = SettingsConfigDict(env_prefix="E2C_CORE_", extra="ignore")

    data_dir: Path = Path(".e2c/core")
    host: str = "127.0.0.1"
    http_port: int = 8470
    nats_port: int = 4470
    nats_http_port: int = 8472
    leafnode_port: int = 7470
    jetstream_domain: str = "core"
    nats_cluster: NatsCluster | None = Field(
        default=None, description="run the core's NATS as one node of a cluster; unset: alone")
    jetstream_replicas: int | None = Field(
        default=None, ge=1, le=5, description="copies of the core's KV buckets; default 3 in a "
        "cluster (its node count when fewer), else 1")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite in data_dir"
    )
    admin_token: str | None = Field(
        default=None, min_length=16,
        description="bearer token for the API beyond uploads and what sites read; "
        "unset: the API is open (development)")
    site_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="site id -> bearer token for uploads and the leaf link; \"OLD,NEW\" accepts "
        "both while the site's token is rotated; empty accepts any site (development)",
    )
    max_upload_bytes: int = 32 * 1024 * 1024
    val_percent: int = Field(default=20, ge=0, le=90)
    training_threads: int = Field(default=0, description="torch threads; 0 = all cores")
    # Training on a Ray cluster (docs/scaling.md); needs the `edge2core[ray]` extra.
    training_cluster: str | None = Field(
        default=None, pattern=r"^(ray://.+|auto)$",
        description="ray://host:10001 (Ray Client) or auto: fine-tuning and embedding jobs run "
        "on that Ray cluster; unset: in the core's process")
    training_workers: int = Field(default=2, ge=1, description="Ray Train ranks for fine-tuning")
    training_storage: str | None = Field(
        default=None, description="Ray Train checkpoints: a folder every node sees or s3://...; "
        "default data_dir/ray-train (a cluster on the core's machine)")
    gate: PromotionGate = Field(default_factory=PromotionGate)
    automation: AutomationPolicy = Field(default_factory=AutomationPolicy)
    embedding_cache_dir: Path | None = Field(default=None, description="default: data_dir/cache/embeddings")
    # Object store, resumable uploads, datasets, governance (issue 4).
    object_store_url: str | None = Field(
        default=None, description="s3://bucket/prefix or a directory; default: data_dir/objects"
    )
    s3_endpoint_url: str | None = Field(default=None, description="e.g. http://minio:9000")
    s3_region: str | None = None
    s3_access_key_id: str | None = Field(default=None, description="default: boto3's chain")
    s3_secret_access_key: str | None = None
    s3_presign_endpoint_url: str | None = Field(
        default=None, description="S3 as the sites reach it, for presigned uploads; default s3_endpoint_url")
    direct_uploads: bool = Field(
        default=True, description="with an S3 store, sites PUT photos straight to it (presigned URLs) and "
        "the core records and verifies them (docs/scaling.md); off: every photo goes through the core")
    upload_expiry_s: float = Field(default=24 * 3600, gt=0, description="unfinished uploads")
    near_dup_bits: int = Field(default=4, ge=0, le=16, description="dHash distance of twins")
    retention_days: dict[str, int] = Field(
        default_factory=dict, description="source -> days kept, e.g. {shopper = 30}"
    )
    kv_resync_s: float = Field(default=300.0, gt=0, description="re-publish desired state to KV")
    retention_every_s: float = Field(default=6 * 3600, gt=0, description="how often `core up` applies it")
    # Transport security (issue 19, docs/security.md).
    tls_dir: Path | None = Field(
        default=None, description="CA folder made by `edge2core certs` (ca.pem, crl.pem, core/core.pem "
        "and .key; sites/*.pem pins the sites admitted on the leaf link); default data_dir/tls, "
        "where a CA and the core's certificate are made on first start")
    plaintext: bool = Field(default=False, description="serve HTTP and the leaf link without TLS "
                            "(development only; logged as a warning)")
    tls_check_s: float = Field(default=5.0, gt=0, description="how often changed TLS files are reloaded")
    site_rate: RateLimit = Field(
        default_factory=lambda: RateLimit(messages_per_s=500, burst_messages=2000,
                                          bytes_per_s=256 << 20, burst_bytes=1 << 30),
        description="per site, on uploads (requests and bytes): over it, 429 `rate_limited`")

    @model_validator(mode="after")
    def _sites_can_read(self) -> CoreSettings:
        if self.admin_token and not self.site_tokens:
            raise ValueError("admin_token is set but site_tokens is empty: the sites could not "
                             "read their model; give every site a token in site_tokens")
        return self

    @model_validator(mode="after")
    def _replicas_need_a_cluster(self) -> CoreSettings:
        if (self.jetstream_replicas or 1) > 1 and self.nats_cluster is None:
            raise ValueError("jetstream_replicas above 1 needs nats_cluster (one server keeps one copy)")
        if self.nats_cluster is not None and not self.plaintext and self.tls_dir is None:
            # Else each node would make a CA of its own on first start, and trust no other node.
            raise ValueError("nats_cluster with TLS needs tls_dir: a copy of one CA folder on every node")
        return self

    @property
    def resolved_jetstream_replicas(self) -> int:
        """Copies of each KV bucket: as set, else 3 in a cluster (fewer listed peers: one per
        node), else 1."""
        if self.jetstream_replicas is not None:
            return self.jetstream_replicas
        if self.nats_cluster is None:
            return 1
        return min(3, len(self.nats_cluster.routes) + 1)

    @property
    def resolved_embedding_cache_dir(self) -> Path:
        return self.embedding_cache_dir or self.data_dir / "cache" / "embeddings"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'core.db').resolve()}"

    @property
    def http_url(self) -> str:
        return f"{'http' if self.plaintext else 'https'}://{self.host}:{self.http_port}"

    @property
    def resolved_tls_dir(self) -> Path:
        return self.tls_dir or self.data_dir / "tls"


class EdgeSettings(_Settings):
    """One edge site: gateway, spool, forwarder, inference, model agent."""

    section: ClassVar[str] = "edge"
    model_config = SettingsConfigDict(env_prefix="E2C_EDGE_", extra="ignore")

    site: str = "site1"
    data_dir: Path = Path(".e2c/edge")
    host: str = "127.0.0.1"
    http_port: int = 8480
    nats_port: int = 4480
    nats_http_port: int = 8482
    mqtt_port: int = 1890
    mqtt_ws_port: int = 8490
    external_mqtt: str | None = Field(
        default=None, description="host:port of an external MQTT broker instead of embedded NATS"
    )
    external_mqtt_username: str | None = None
    external_mqtt_password: str | None = None
    device_auth: bool = Field(
        default=True,
        description="only registered devices may connect (MQTT user/password, HTTP bearer token)",
    )
    core_url: str = "https://127.0.0.1:8470"
    core_leaf_url: str | None = Field(
        default="nats-leaf://127.0.0.1:7470",
        description="the core's leaf URL; a core cluster's nodes comma-separated (or a TOML list): "
        "one leaf link that fails over between them")
    core_jetstream_domain: str = "core"
    token: str = ""
    # Preparation
    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 64_000_000
    long_side: int = 1024
    jpeg_quality: int = Field(default=90, ge=30, le=100)
    quality_action: Literal["flag", "reject", "off"] = "flag"
    blur_faces: bool = Field(default=True, description="detect and blur faces before spooling")
    near_duplicate_window_s: float = Field(default=10.0, ge=0)
    near_duplicate_max_distance: int = Field(default=4, ge=0, le=64)
    retained_sweep_s: float = Field(
        default=5.0, gt=0,
        description="how often retained device messages are deleted from the broker",
    )
    capture_workers: int = Field(
        default=4, ge=1, le=64,
        description="MQTT captures prepared at once, fair between devices: one device's slow "
        "photo never holds up another's",
    )
    # Spool and forwarding
    spool_budget_bytes: int = 2 * 1024 * 1024 * 1024
    when_full: Literal["refuse", "evict"] = "refuse"
    # Many photos in flight hide the link's round trip (measured: 16 reaches 0.96 of one
    # curl stream on a 20 Mbit/s, 40 ms, 1% loss link; 4 only 0.6).
    forward_concurrency: int = Field(default=16, ge=1, le=256)
    bandwidth_limit_bytes_s: int = Field(default=0, ge=0, description="0 = no cap")
    direct_uploads: bool = Field(
        default=True, description="PUT photos straight to the core's S3 store where the core offers it "
        "(presigned URLs); else, and with a local store, through the core")
    resumable_above_bytes: int = Field(
        default=4 * 1024 * 1024, ge=0, description="larger photos use resumable uploads"
    )
    upload_windows: list[str] = Field(
        default_factory=list, description="local-time windows like '22:00-06:00'; empty = always"
    )
    # Recognition
    unrecognised_below: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="answer 'unrecognised' below this confidence; default: the model's "
        "calibrated threshold, else 0.5",
    )
    top_k: int = 3
    inference_threads: int = 1
    recognize_workers: int | None = Field(
        default=None, ge=1,
        description="recognition requests (HTTP and MQTT, one shared pool) run at once, each "
        "with inference_threads ORT threads; more wait in the pool's queue. Default: one per "
        "inference_threads cores",
    )
    recognize_batch_max: int = Field(
        default=1, ge=1, le=64,
        description="micro-batching: up to this many waiting requests go through one "
        "session.run (1 = off; measured not to pay on a 2-core CPU, see docs/architecture.md)",
    )
    recognize_batch_wait_ms: float = Field(
        default=0.0, ge=0.0, le=50.0,
        description="how long a worker waits for more requests to fill a batch (0: only "
        "those already waiting)",
    )
    recognize_queue_max: int = Field(
        default=1024, ge=1,
        description="recognition requests waiting beyond this are refused (HTTP 503, MQTT "
        "error 'overloaded')",
    )
    model_poll_s: float = Field(
        default=30.0, gt=0,
        description="HTTP check of the desired model while no KV watch has spoken (no leaf link)",
    )
    tls_dir: Path | None = Field(
        default=None, description="folder with ca.pem, crl.pem and sites/<site>.pem/.key from "
        "`edge2core certs`; default data_dir/tls")
    plaintext: bool = Field(default=False, description="serve devices and dial the core without "
                            "TLS (development only; logged as a warning)")
    device_certs: bool = Field(default=False, description="MQTT and WebSocket devices must present "
                               "a client certificate from the CA")
    tls_check_s: float = Field(default=5.0, gt=0, description="how often changed TLS files are reloaded")
    device_rate: RateLimit = Field(
        default_factory=lambda: RateLimit(messages_per_s=50, burst_messages=200,
                                          bytes_per_s=32 << 20, burst_bytes=128 << 20),
        description="per device, at every door (MQTT, WebSocket, HTTP): over it, `rate_limited`")
    model_public_key: str | None = Field(
        default=None, description="base64 Ed25519 key models and the catalogue must be signed "
        "with (during a key rotation the old and the new one, comma-separated); else pinned"
    )
    allow_unsigned_models: bool = False
    # Doors (docs/doors.md): plugins of the entry-point group `edge2core.doors`.
    doors: list[str] | None = Field(
        default=None, description="door plugins to run, e.g. [\"mqtt\", \"http\"]; default: every "
        "installed one (each runs only where its settings ask for it)")
    door_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="door name -> its own settings, for plugins")
    amqp_url: str | None = Field(
        default=None, description="amqp://user:password@host:5672/vhost of the site's AMQP "
        "broker; unset: no AMQP door")
    amqp_exchange: str = Field(default="e2c", description="topic exchange devices publish to")
    amqp_prefetch: int = Field(default=32, ge=1, le=1000, description="captures unacknowledged at once")
    cameras: list[CameraSettings] = Field(default_factory=list)
    camera_credentials: dict[str, SecretStr] = Field(
        default_factory=dict, description="camera name -> 'user:password' (a secret: give it as "
        "E2C_EDGE_CAMERA_CREDENTIALS JSON, never in the TOML file)")
    watched_folders: list[WatchedFolder] = Field(default_factory=list)

    @field_validator("core_leaf_url", mode="before")
    @classmethod
    def _leaf_urls_joined(cls, value: Any) -> Any:
        return ",".join(map(str, value)) if isinstance(value, list | tuple) else value

    @property
    def core_leaf_urls(self) -> tuple[str, ...]:
        """Every URL in `core_leaf_url` (empty: no leaf link)."""
        return tuple(u.strip() for u in (self.core_leaf_url or "").split(",") if u.strip())

    @property
    def jetstream_domain(self) -> str:
        return self.site

    @property
    def http_url(self) -> str:
        return f"{'http' if self.plaintext else 'https'}://{self.host}:{self.http_port}"

    @property
    def resolved_tls_dir(self) -> Path:
        return self.tls_dir or self.data_dir / "tls"


class DemoSettings(_Settings):
    """`edge2core demo`: how much of the story to run."""

    section: ClassVar[str] = "demo"
    model_config = SettingsConfigDict(env_prefix="E2C_", extra="ignore")

    dataset: Path | None = None
    classes: int = Field(default=8, ge=2)
    per_class: int = Field(default=24, ge=4)
    held_out_per_class: int = Field(default=5, ge=1)
    seed: int = 0
    work_dir: Path | None = None
    keep_running: bool = Field(default=False, description="keep serving the pages after the story")
