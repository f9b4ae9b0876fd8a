"""The core's TLS at run time: HTTPS for sites (mutual TLS) and people, the leaf listener's
TLS with the admitted sites pinned, and one watcher reloading both when files change."""

from __future__ import annotations

import ssl
from collections.abc import Callable

from edge2core.common.certs import CertAuthority
from edge2core.common.nats_config import NatsTls
from edge2core.common.tls import CertWatcher, TlsFiles, server_context
from edge2core.config import CoreSettings
from edge2core.core.nats_cluster import route_pins


def core_leaf_tls(tls: TlsFiles | None) -> NatsTls | None:
    """The leaf listener's TLS: peers must present a site certificate from the CA; when the CA
    folder holds the sites' certificates, only the unrevoked, unexpired ones are pinned
    (nats-server reads no CRL; pinning is how a revoked site is refused on the leaf link)."""
    if tls is None:
        return None
    pinned = CertAuthority(tls.ca.parent).valid_fingerprints("site") if (tls.ca.parent / "sites").is_dir() else []
    # In a cluster only core certificates may form routes (used only with `nats_cluster`).
    return NatsTls(tls.cert, tls.key, tls.ca, leaf_pinned=tuple(pinned), route_pinned=route_pins(tls.ca.parent))


def watch_core_tls(settings: CoreSettings, tls: TlsFiles | None,
                   reload_broker: Callable[[], None]) -> tuple[ssl.SSLContext | None, CertWatcher]:
    """(the HTTPS context or None for plain HTTP, the watcher to run). Client certificates are
    optional at the handshake (people's browsers have none; a certificate that is sent must be
    valid) and required by the API for what sites do (`access.site_cert_ok`)."""
    watcher = CertWatcher(every_s=settings.tls_check_s)
    if tls is None:
        return None, watcher
    ca = CertAuthority(tls.ca.parent)
    if ca.exists:  # the core keeps the CA: its CRL never runs out (an expired one refuses all)
        watcher.on_tick = ca.refresh_crl
    http = server_context(tls, client_certs=ssl.CERT_OPTIONAL)
    watcher.watch(http, tls, "core")
    # A renewed core certificate, a revocation (crl.pem) or a new site (index.json): the leaf
    # listener's pins and files are rendered again and nats-server reloads (SIGHUP), closing
    # only leaf connections whose certificate is no longer pinned.
    watcher.watch(None, tls, "core-leaf", presents=False, on_change=reload_broker,
                  extra=(tls.ca.parent / "index.json",))
    return http, watcher
