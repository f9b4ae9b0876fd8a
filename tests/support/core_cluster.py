"""Several real core processes (`core up`) on one PostgreSQL database and one S3 bucket (moto's
server), behind a round-robin proxy, with TLS: what tests/scale's scale-out tests run against.

Each process has its own data folder (its own embedded NATS server, ports and logs); what they
share is the database, the bucket and the CA. Every cluster gets a database of its own, made
for it and dropped after.
"""

from __future__ import annotations

import contextlib
import io
import json
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine, text

from edge2core.common.certs import CertAuthority
from edge2core.common.events import PhotoRecord, Source
from edge2core.common.objectstore import S3ObjectStore
from edge2core.core.db.engine import make_engine
from edge2core.roles import CorePorts, RoleProcess, make_role_tls, start_core, trust
from tests.support.postgres import PG_SERVER
from tests.support.round_robin_proxy import RoundRobinProxy

SITE = "site-a"
SITE_TOKEN = "token-of-site-a-for-the-scale-tests"
ADMIN_TOKEN = "admin-token-for-the-scale-tests"


@dataclass
class CoreCluster:
    procs: list[RoleProcess]
    ports: list[CorePorts]
    proxy: RoundRobinProxy
    tls: Path
    db: Engine
    store: S3ObjectStore

    @property
    def url(self) -> str:
        """The load balancer's address."""
        return f"https://127.0.0.1:{self.proxy.port}"

    def direct_url(self, index: int) -> str:
        return self.ports[index].https_url

    def site_tls(self) -> ssl.SSLContext:
        """Trusting the CA, presenting the site's certificate (mutual TLS with its token)."""
        context = trust(self.tls)
        context.load_cert_chain(*(str(p) for p in CertAuthority(self.tls).paths("site", SITE)))
        return context

    def client(self, base_url: str | None = None, token: str = SITE_TOKEN) -> httpx.Client:
        """A new connection per request: each one goes to the next process."""
        return httpx.Client(base_url=base_url or self.url, verify=self.site_tls(), timeout=30,
                            headers={"Authorization": f"Bearer {token}"},
                            limits=httpx.Limits(max_keepalive_connections=0))

    def metric(self, index: int, metric: str, **labels: str) -> float | None:
        """A process's metric sample (None: the process does not answer)."""
        try:
            body = httpx.get(f"{self.direct_url(index)}/metrics", verify=trust(self.tls),
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5).text
        except httpx.HTTPError:
            return None
        for line in body.splitlines():
            if line.startswith(metric + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def scalar(self, sql: str) -> object:
        with self.db.connect() as conn:
            return conn.execute(text(sql)).scalar()


@contextlib.contextmanager
def private_database() -> Iterator[str]:
    """A PostgreSQL database made for one test and dropped after (skips without a server)."""
    name = f"e2c_scale_{uuid.uuid4().hex[:12]}"
    admin = make_engine(f"{PG_SERVER}/postgres").execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # no server here
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}: {exc!r}")
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@contextlib.contextmanager
def core_cluster(root: Path, s3_endpoint: str, *, processes: int = 2,
                 automation: dict[str, object] | None = None) -> Iterator[CoreCluster]:
    """`processes` core processes under `root`, started one after the other (the first
    migrates the database), behind a round-robin proxy; stopped at the end."""
    bucket = f"e2c-scale-{uuid.uuid4().hex[:12]}"
    store = S3ObjectStore(bucket, prefix="core", staging_dir=root / "checker-staging",
                          endpoint_url=s3_endpoint, access_key_id="testing",
                          secret_access_key="testing", create_bucket=True)
    tls = make_role_tls(root / "tls", [SITE])
    with private_database() as db_url, contextlib.ExitStack() as stack:
        env = {
            "E2C_CORE_DATABASE_URL": db_url,
            "E2C_CORE_OBJECT_STORE_URL": f"s3://{bucket}/core",
            "E2C_CORE_S3_ENDPOINT_URL": s3_endpoint,
            "E2C_CORE_S3_ACCESS_KEY_ID": "testing",
            "E2C_CORE_S3_SECRET_ACCESS_KEY": "testing",
            "E2C_CORE_AUTOMATION": json.dumps(automation or {"enabled": False}),
            "E2C_CORE_SITE_TOKENS": json.dumps({SITE: SITE_TOKEN}),
            "E2C_CORE_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        procs, ports = [], []
        for index in range(processes):
            proc, port = start_core(root / f"core-{index}", tls=tls, extra_env=env)
            stack.callback(proc.stop)
            proc.wait_healthy(timeout=120)
            procs.append(proc)
            ports.append(port)
        proxy = RoundRobinProxy([("127.0.0.1", p.http) for p in ports])
        proxy.open()
        stack.callback(proxy.close)
        db = make_engine(db_url)
        stack.callback(db.dispose)
        yield CoreCluster(procs, ports, proxy, tls, db, store)


def photo(seed: int, *, shift: int = 0, site: str = SITE) -> tuple[PhotoRecord, bytes]:
    """A real JPEG of random blocks (features, so it is grouped by near-duplicates) and its
    record; `shift` brightens it evenly: another photo (other bytes) with the same dHash."""
    blocks = np.random.default_rng(seed).integers(0, 200, size=(12, 12, 3), dtype=np.uint8)
    image = Image.fromarray(blocks + np.uint8(shift)).resize((192, 192), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    data = out.getvalue()
    record = PhotoRecord(site=site, device="phone-1", source=Source.SHOPPER,
                         sha256=sha256(data).hexdigest(), size=len(data), width=192, height=192)
    return record, data
