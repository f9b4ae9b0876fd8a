"""Who may use a site's broker, and how it is configured: its users and auth callout
(`SiteAccess`), the embedded NATS server's config, the leaf link to the core and the MQTT
endpoint the site's own doors connect to."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from edge2core.common.nats_config import (
    AuthCallout,
    NatsServerConfig,
    NatsUser,
    leaf_url_with_credentials,
)
from edge2core.config import EdgeSettings
from edge2core.edge.broker_auth import BrokerAuth
from edge2core.edge.devices import DeviceRegistry
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
        return BrokerAuth(url, site, self.devices, self.issuer, self.internal, self.system)


def site_access(settings: EdgeSettings) -> SiteAccess:
    if not settings.device_auth:
        return SiteAccess(None, None)
    # Fresh secrets per run for our own doors, NATS clients and auth service; they never leave
    # this process (and the 0600 server config file).
    internal = NatsUser("e2c-edge-internal", secrets.token_urlsafe(24))
    return SiteAccess(DeviceRegistry(settings.data_dir / "devices.json"), internal)


def core_leaf_remote(settings: EdgeSettings) -> str:
    """The leaf link logs in to the core as this site, with its upload token (if it has one)."""
    assert settings.core_leaf_url
    if not settings.token:
        return settings.core_leaf_url
    return leaf_url_with_credentials(settings.core_leaf_url, settings.site, settings.token)


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
        leafnode_remotes=(core_leaf_remote(settings),) if settings.core_leaf_url else (),
        users=access.users(settings.site) if access else (),
        auth_callout=access.auth_callout() if access else None,
        system_users=access.system_users() if access else (),
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
    return MqttEndpoint(
        host=settings.host,
        port=settings.mqtt_port,
        username=internal.user if internal else None,
        password=internal.password if internal else None,
    )
