"""The core's NATS as one node of a three-node cluster (docs/scaling.md, "A NATS cluster at the
core"): the `cluster {}` part of the core's server config, who may join it, and waiting for
the cluster's JetStream before the core creates its replicated KV buckets.

Each machine runs `edge2core core up` with its own `nats_cluster.node` and the same routes; the
nodes share the JetStream domain, the leaf listener's users and TLS, so a site's leaf link may
land on any of them (the site lists them all: `EdgeSettings.core_leaf_url`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from nats.errors import Error as NatsError

from edge2core.common.certs import CertAuthority
from edge2core.common.logging import get_logger
from edge2core.common.nats_config import NatsClusterConfig
from edge2core.config import CoreSettings

__all__ = ["CORE_SERVER_NAME", "cluster_config", "route_pins", "server_name", "wait_for_jetstream"]

log = get_logger(__name__)

#: The server name of a core that runs alone (its config and log file are named after it).
CORE_SERVER_NAME = "e2c-core"


def server_name(settings: CoreSettings) -> str:
    """The node's name in a cluster (unique there: JetStream's Raft groups name their peers by
    it), else `CORE_SERVER_NAME`."""
    return settings.nats_cluster.node if settings.nats_cluster else CORE_SERVER_NAME


def cluster_config(settings: CoreSettings) -> NatsClusterConfig | None:
    """The `cluster {}` block's settings, or None for a core alone."""
    cluster = settings.nats_cluster
    if cluster is None:
        return None
    return NatsClusterConfig(name=cluster.name, port=cluster.port, routes=tuple(cluster.routes),
                             host=cluster.host)


def route_pins(ca_folder: Path) -> tuple[str, ...]:
    """Fingerprints of the unrevoked, unexpired core certificates in the CA folder's `core/`:
    the only certificates a route may present. Nodes share one core certificate (its SANs name
    every node), so after a renewal the new files go to one node at a time (docs/scaling.md)."""
    if not (ca_folder / "core").is_dir():
        return ()
    return tuple(CertAuthority(ca_folder).valid_fingerprints("core"))


async def wait_for_jetstream(js: Any, timeout_s: float, every_s: float = 0.5) -> None:
    """Return once JetStream answers an account-info request (`js`: a nats.py JetStream
    context); a clustered one answers only once a majority of its nodes elected a leader.

    Raises TimeoutError after `timeout_s` seconds (the nodes still missing are logged every
    30 s while waiting)."""
    deadline = time.monotonic() + timeout_s
    said = time.monotonic()
    while True:
        try:
            await js.account_info()
            return
        except (NatsError, TimeoutError) as exc:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"JetStream did not answer within {timeout_s:.0f}s "
                                   f"(a cluster needs a majority of its nodes up): {exc!r}") from exc
            if now - said >= 30:
                log.warning("waiting for the NATS cluster's JetStream (a majority of its nodes)",
                            error=repr(exc))
                said = now
        await asyncio.sleep(every_s)
