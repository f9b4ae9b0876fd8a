"""The site's TLS at run time: the HTTPS context for its devices, and one watcher that reloads
every TLS identity the site uses when its files change (HTTPS in place; the embedded broker's
MQTT, WebSocket and leaf listeners by a config reload)."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable

from edge2core.common.logging import get_logger
from edge2core.common.nats_config import NatsServerConfig, render_config
from edge2core.common.nats_server import EmbeddedNats
from edge2core.common.tls import CertWatcher, TlsFiles, server_context, site_tls_files
from edge2core.config import EdgeSettings
from edge2core.edge.broker_config import SiteAccess, edge_nats_config

log = get_logger(__name__)


class BrokerReload:
    """Reloads the site's broker only when what it would load differs: the rendered config
    (certificate paths) or the bytes of its certificate, key and CA. A reload closes every
    device the auth callout admitted (nats-server 2.15.1), so files that were only rewritten or
    touched (a CRL refreshed, which nats-server does not read; a copy of the same files) must
    not cost the devices their connections. Device certificates are not in the config at all
    (no pins: the auth callout refuses revoked ones), so issuing or revoking one never reloads
    it; only a real change of the site's own certificate, key or CA does."""

    def __init__(self, server: EmbeddedNats, render: Callable[[], NatsServerConfig], files: TlsFiles) -> None:
        self._server, self._render, self._files = server, render, files
        self.reloads = 0
        self._loaded = self._state(render())

    def _state(self, config: NatsServerConfig) -> tuple[str, str]:
        digest = hashlib.sha256()
        for path in (self._files.cert, self._files.key, self._files.ca):
            digest.update(path.read_bytes())
        return render_config(config), digest.hexdigest()

    def __call__(self) -> None:
        config = self._render()
        state = self._state(config)
        if state == self._loaded:
            log.info("TLS files touched but nothing the broker loads changed: not reloaded")
            return
        self._server.reload(config)
        self._loaded = state
        self.reloads += 1


def watch_site_tls(settings: EdgeSettings, access: SiteAccess, server: EmbeddedNats,
                   core_tls: ssl.SSLContext | None) -> tuple[ssl.SSLContext | None, CertWatcher]:
    """(the devices' HTTPS context or None for plain HTTP, the watcher to run).

    nats-server re-reads its certificate files on SIGHUP; with the auth callout on, a reload
    also closes the devices it admitted (nats-server 2.15.1), which reconnect at once: the
    broker is reloaded only when what it loads really changed (`BrokerReload`): the site's own
    certificate, key or CA, never a device certificate issued or revoked (the CA's index is
    read by the auth callout, `device_certs.DeviceCertIndex`)."""
    watcher = CertWatcher(every_s=settings.tls_check_s)
    http: ssl.SSLContext | None = None
    files: TlsFiles | None = access.tls
    if files is not None:
        http = server_context(files, client_certs=ssl.CERT_OPTIONAL)
        watcher.watch(http, files, f"site-{settings.site}")
        watcher.watch(None, files, f"site-{settings.site}-broker", presents=False,
                      on_change=BrokerReload(server, lambda: edge_nats_config(settings, access), files))
    if core_tls is not None:
        link = site_tls_files(settings.resolved_tls_dir, settings.site)
        watcher.watch(core_tls, link, f"site-{settings.site}-client", presents=files is None)
    return http, watcher
