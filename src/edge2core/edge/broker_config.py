"""Who may use a site's broker, and how it is configured: its users and auth callout
(`SiteAccess`), the embedded NATS server's config, the leaf link to the core and the MQTT
endpoint the site's own doors connect to."""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass, field, replace

from edge2core.common.nats_config import (
    AuthCallout,
    NatsServerConfig,
    NatsTls,
    NatsUser,
    leaf_url_with_credentials,
)
from edge2core.common.site_tokens import leaf_user
from edge2core.common.tls import TlsFiles, client_context, site_tls_files
from edge2core.config import EdgeSettings
from edge2core.edge.broker_auth import BrokerAuth
from edge2core.edge.device_certs import DeviceCertIndex
from edge2core.edge.devices import DeviceRegistry
from edge2core.edge.guests import GuestPasses
from edge2core.edge.mqtt_door import MqttEndpoint
from edge2core.edge.nats_jwt import Issuer


def _system_user() -> NatsUser:
    return NatsUser("e2c-edge-system", secrets.token_urlsafe(24))


@dataclass(frozen=True)
class SiteAccess:
    """Who may use this site's broker: registered devices, each connection admitted (or not) by
    the edge's auth callout service (`broker_auth`), plus edge2core's own clients, which bypass
    it. No registry or no internal user: anyone may connect (`device_auth = false`)."""

    devices: DeviceRegistry | None
    internal: NatsUser | None
    # A system-account user: the auth service disconnects revoked devices with it.
    system: NatsUser = field(default_factory=_system_user)
    # Signs the auth service's answers: made afresh per run, kept in memory (the server config
    # holds only its public key).
    issuer: Issuer = field(default_factory=Issuer)
    # Anonymous shoppers' passes (the shopper page asks for one): shopper topics, own limits.
    guests: GuestPasses = field(default_factory=GuestPasses)
    # The site's certificate (MQTT, WebSocket, leaf link; its own doors trust `tls.ca`); None:
    # plain text. `device_certs`: devices must present a certificate from the CA too.
    tls: TlsFiles | None = None
    device_certs: bool = False

    def secured(self, tls: TlsFiles | None, device_certs: bool = False) -> SiteAccess:
        """The same access over TLS with `tls` (None: unchanged)."""
        return self if tls is None else replace(self, tls=tls, device_certs=device_certs)

    def nats_tls(self) -> NatsTls | None:
        """With device certificates, the broker verifies every MQTT and WebSocket client's
        certificate against the CA at the handshake (foreign and expired ones go no further)
        and pins none: revoked ones are refused by the auth callout (`device_certs`), so
        issuing or revoking a device certificate never changes this config (a reload would
        close every device the callout admitted, nats-server 2.15.1)."""
        if self.tls is None:
            return None
        return NatsTls(self.tls.cert, self.tls.key, self.tls.ca, verify_devices=self.device_certs,
                       device_pinned=())

    def device_cert_index(self) -> DeviceCertIndex | None:
        """The CA's view of device certificates in the TLS folder (`devices/`, `index.json`,
        as `edge2core certs` writes them), when device certificates are on."""
        if self.tls is None or not self.device_certs:
            return None
        return DeviceCertIndex(self.tls.ca.parent)

    @property
    def enabled(self) -> bool:
        return self.devices is not None and self.internal is not None

    def users(self, site: str) -> tuple[NatsUser, ...]:
        """The server's own users: only edge2core's (devices come through the callout)."""
        return (self.internal,) if self.enabled and self.internal is not None else ()

    def auth_callout(self) -> AuthCallout | None:
        if not self.enabled or self.internal is None:
            return None
        return AuthCallout(self.issuer.public_key, (self.internal.user, self.system.user))

    def system_users(self) -> tuple[NatsUser, ...]:
        return (self.system,) if self.enabled else ()

    def broker_auth(self, site: str, url: str) -> BrokerAuth | None:
        """The callout service for a server started with `edge_nats_config` (not started)."""
        if self.devices is None or self.internal is None:
            return None
        return BrokerAuth(url, site, self.devices, self.issuer, self.internal, self.system,
                          guests=self.guests, certs=self.device_cert_index())


def site_access(settings: EdgeSettings) -> SiteAccess:
    if not settings.device_auth:
        return SiteAccess(None, None)
    # Fresh secrets per run for our own doors, NATS clients and auth service; they never leave
    # this process (and the 0600 server config file).
    internal = NatsUser("e2c-edge-internal", secrets.token_urlsafe(24))
    return SiteAccess(DeviceRegistry(settings.data_dir / "devices.json"), internal)


def core_leaf_remote(settings: EdgeSettings) -> str | tuple[str, ...]:
    """The leaf link logs in to the core as this site, with its upload token (if it has one).
    A core cluster's nodes (several URLs): one remote listing them all, which nats-server
    fails over between (a remote each would link the site to the core several times)."""
    urls = settings.core_leaf_urls
    assert urls
    if settings.token:
        user = leaf_user(settings.site, settings.token)  # one user per token at the core
        urls = tuple(leaf_url_with_credentials(url, user, settings.token) for url in urls)
    return urls[0] if len(urls) == 1 else urls


def core_link_tls(settings: EdgeSettings) -> tuple[ssl.SSLContext, TlsFiles] | None:
    """How the site dials the core over HTTPS: trusting the private CA and presenting the
    site's certificate (mutual TLS). None for an http:// core URL (plain text, as set) or when
    the site has no certificate files (then the system's CAs, and no client certificate)."""
    if settings.core_url.startswith("http://"):
        return None
    files = site_tls_files(settings.resolved_tls_dir, settings.site)
    if files.missing():
        return None
    return client_context(files.ca, files.cert, files.key), files


def edge_nats_config(settings: EdgeSettings, access: SiteAccess | None = None) -> NatsServerConfig:
    return NatsServerConfig(
        name=f"e2c-edge-{settings.site}",
        store_dir=settings.data_dir / "nats" / "jetstream",
        host=settings.host,
        client_port=settings.nats_port,
        http_port=settings.nats_http_port,
        mqtt_port=settings.mqtt_port,
        websocket_port=settings.mqtt_ws_port,
        jetstream_domain=settings.jetstream_domain,
        leafnode_remotes=(core_leaf_remote(settings),) if settings.core_leaf_urls else (),
        users=access.users(settings.site) if access else (),
        auth_callout=access.auth_callout() if access else None,
        system_users=access.system_users() if access else (),
        tls=access.nats_tls() if access else None,
    )


def mqtt_endpoint(settings: EdgeSettings, access: SiteAccess | None = None) -> MqttEndpoint:
    if settings.external_mqtt:
        host, _, port = settings.external_mqtt.rpartition(":")
        return MqttEndpoint(
            host=host,
            port=int(port),
            username=settings.external_mqtt_username,
            password=settings.external_mqtt_password,
        )
    internal = access.internal if access else None
    tls = access.tls if access else None
    return MqttEndpoint(
        host=settings.host,
        port=settings.mqtt_port,
        username=internal.user if internal else None,
        password=internal.password if internal else None,
        ca_file=str(tls.ca) if tls else None,
        certfile=str(tls.cert) if tls else None,  # the site's: a device-cert broker asks for one
        keyfile=str(tls.key) if tls else None,
    )
