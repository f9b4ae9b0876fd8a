"""Embedded NATS server configuration: what a server listens on and who may connect, and the
config file text that says so (`render_config`, pure).

Both sides of edge2core run a local ``nats-server`` (see `nats_server` for the process):

* the **edge** server speaks MQTT (TCP and WebSocket on ``/mqtt``) to cameras,
  keeps a local JetStream domain for store-and-forward, and dials the core as a
  leaf node;
* the **core** server accepts leaf connections and has its own JetStream domain.

Distinct JetStream domains are what keep the two JetStream "brains" separate
over the leaf connection: without them, a leaf and its hub in the same account
would try to form one JetStream domain and the edge would lose its local store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from edge2core.common.net import free_port

__all__ = [
    "AuthCallout",
    "NatsClusterConfig",
    "NatsServerConfig",
    "NatsTls",
    "NatsUser",
    "leaf_url_with_credentials",
    "render_config",
    "MQTT_WS_PATH",
]

#: nats-server routes WebSocket upgrades on this path to its MQTT handler.
MQTT_WS_PATH = "/mqtt"

_DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024  # photos up to 8 MB must pass MQTT, with headroom


@dataclass(frozen=True)
class NatsUser:
    """A client the server lets in by its config: an edge2core process, or a site (leaf link).

    `password` may be a bcrypt hash ("$2a$..."/"$2b$..."), which nats-server verifies itself.
    Empty allow lists mean "all". (Devices are not config users: see `AuthCallout`.)
    """

    user: str
    password: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthCallout:
    """Delegate client authentication to a service (nats-server's auth callout).

    The server sends every connecting client not in `auth_users` to the service, on
    `$SYS.REQ.USER.AUTH` in the global account, with its MQTT client id among the facts; the
    service answers with a user JWT signed by `issuer` (an account public nkey, "A...") or an
    error. `auth_users` (edge2core's own clients, the service's among them) bypass it.
    """

    issuer: str
    auth_users: tuple[str, ...]


@dataclass(frozen=True)
class NatsTls:
    """TLS for a server's device and leaf listeners (files as `edge2core certs` writes them).

    `verify_devices`: MQTT and WebSocket clients must present a certificate from `ca` (nats-server
    cannot ask for one optionally). `leaf_pinned`: core side, SHA-256 fingerprints of the site
    certificates admitted on the leaf listener (unknown, revoked or expired ones are not listed;
    a reload drops connections whose certificate left the list). The leaf listener always
    verifies its peers: mutual TLS between each site and the core."""

    cert: Path
    key: Path
    ca: Path
    verify_devices: bool = False
    leaf_pinned: tuple[str, ...] = ()
    device_pinned: tuple[str, ...] = ()  # with verify_devices: only these device certificates
    # In a cluster: the certificates admitted on routes (the core's own; a site's certificate
    # from the same CA must never join the cluster, where no leaf permission holds it).
    route_pinned: tuple[str, ...] = ()


@dataclass(frozen=True)
class NatsClusterConfig:
    """This server is one node of a NATS cluster: routes to its peers, JetStream clustered
    (streams replicated by their `num_replicas`, a Raft group each).

    `routes`: every node's route URL (`nats-route://host:port`); the node's own URL may be in
    the list (nats-server drops a route to itself), so every node can be given the same list.
    Configured routes are retried for ever. With the server's `tls`, routes are mutual TLS:
    each side checks the other's certificate against the CA (and the dialled host name
    against its SANs) and, when `NatsTls.route_pinned` is set, against those fingerprints."""

    name: str
    port: int
    routes: tuple[str, ...]
    host: str | None = None  # listen address of the route port; None: the server's host


@dataclass(frozen=True, kw_only=True)
class NatsServerConfig:
    """Everything needed to render one nats-server config file."""

    name: str
    store_dir: Path
    client_port: int
    http_port: int
    host: str = "127.0.0.1"
    mqtt_port: int | None = None
    websocket_port: int | None = None
    jetstream_domain: str | None = None
    leafnode_port: int | None = None  # core side: accept leaf connections
    # Edge side, one entry per remote: a URL ("nats-leaf://127.0.0.1:7422"), or a tuple of the
    # URLs of one cluster's nodes: one leaf link that nats-server fails over between them.
    leafnode_remotes: tuple[str | tuple[str, ...], ...] = ()
    # Core side: only these may connect as leaf nodes (sites: id and token); empty: anyone.
    leafnode_users: tuple[NatsUser, ...] = ()
    max_payload: int = _DEFAULT_MAX_PAYLOAD
    # How long the server waits for an MQTT QoS 1 ack before redelivering (nats default 30s).
    mqtt_ack_wait: str | None = None
    # No users: anyone on the listeners may connect (development); else only these.
    users: tuple[NatsUser, ...] = ()
    # With it, every other client is admitted (or not) by the callout service.
    auth_callout: AuthCallout | None = None
    # Users of the system account ($SYS): server requests such as kicking a connection.
    system_users: tuple[NatsUser, ...] = ()
    # TLS on the MQTT, WebSocket and leaf listeners and on the leaf remotes; None: plain text.
    # The client port stays plain: it listens on the host's loopback for edge2core's own clients.
    tls: NatsTls | None = None
    cluster: NatsClusterConfig | None = None

    @classmethod
    def with_free_ports(
        cls,
        name: str,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        mqtt: bool = True,
        websocket: bool = True,
        leafnode: bool = False,
        jetstream_domain: str | None = None,
        leafnode_remotes: tuple[str | tuple[str, ...], ...] = (),
        leafnode_users: tuple[NatsUser, ...] = (),
        max_payload: int = _DEFAULT_MAX_PAYLOAD,
        mqtt_ack_wait: str | None = None,
        users: tuple[NatsUser, ...] = (),
        auth_callout: AuthCallout | None = None,
        system_users: tuple[NatsUser, ...] = (),
        tls: NatsTls | None = None,
    ) -> NatsServerConfig:
        """Build a config whose listeners all use ports that are free right now (tests, dev)."""
        return cls(
            name=name,
            store_dir=Path(store_dir),
            host=host,
            client_port=free_port(host),
            http_port=free_port(host),
            mqtt_port=free_port(host) if mqtt else None,
            websocket_port=free_port(host) if websocket else None,
            leafnode_port=free_port(host) if leafnode else None,
            jetstream_domain=jetstream_domain,
            leafnode_remotes=tuple(leafnode_remotes),
            leafnode_users=tuple(leafnode_users),
            max_payload=max_payload,
            mqtt_ack_wait=mqtt_ack_wait,
            users=users,
            auth_callout=auth_callout,
            system_users=system_users,
            tls=tls,
        )

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"

    @property
    def leafnode_url(self) -> str | None:
        """URL an edge server puts in ``leafnode_remotes`` to reach this (core) server."""
        if self.leafnode_port is None:
            return None
        return f"nats-leaf://{self.host}:{self.leafnode_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


# --------------------------------------------------------------------------- config text


def _q(value: str | Path) -> str:
    """Quote a string for the NATS config format (JSON string syntax is accepted)."""
    return json.dumps(str(value))


def _hostport(host: str, port: int) -> str:
    return _q(f"{host}:{port}")


def _jetstream_block(cfg: NatsServerConfig) -> list[str]:
    lines = ["jetstream {", f"  store_dir: {_q(cfg.store_dir)}"]
    if cfg.jetstream_domain:
        lines.append(f"  domain: {_q(cfg.jetstream_domain)}")
    lines.append("}")
    return lines


def _tls_block(tls: NatsTls, *, verify: bool, pinned: tuple[str, ...] = (), indent: str = "  ") -> list[str]:
    lines = [f"{indent}tls {{", f"{indent}  cert_file: {_q(tls.cert)}", f"{indent}  key_file: {_q(tls.key)}",
             f"{indent}  ca_file: {_q(tls.ca)}", f"{indent}  timeout: 5"]
    if verify:
        lines.append(f"{indent}  verify: true")
    if pinned:
        lines.append(f"{indent}  pinned_certs: [{', '.join(_q(p) for p in pinned)}]")
    return [*lines, f"{indent}}}"]


def _device_tls(tls: NatsTls) -> list[str]:
    # nats-server reads no CRL: pinning the unrevoked device certificates is how a revoked one
    # is refused (the edge's own doors present the site's certificate, pinned too).
    pinned = tls.device_pinned if tls.verify_devices else ()
    return _tls_block(tls, verify=tls.verify_devices, pinned=pinned)


def _mqtt_block(cfg: NatsServerConfig) -> list[str]:
    # MQTT in nats-server needs JetStream (sessions, retained msgs and QoS 1 are
    # JetStream streams) and an explicit server_name; both are always rendered.
    if cfg.mqtt_port is None:
        return []
    lines = ["mqtt {", f"  host: {_q(cfg.host)}", f"  port: {cfg.mqtt_port}"]
    if cfg.mqtt_ack_wait:
        lines.append(f"  ack_wait: {_q(cfg.mqtt_ack_wait)}")
    if cfg.tls is not None:
        lines += _device_tls(cfg.tls)
    return [*lines, "}"]


def _allow(kind: str, subjects: tuple[str, ...]) -> str:
    return f"{kind}: {{ allow: [{', '.join(_q(s) for s in subjects)}] }}"


def _user_line(user: NatsUser) -> str:
    perms = [_allow(k, v) for k, v in (("publish", user.publish), ("subscribe", user.subscribe)) if v]
    permissions = f", permissions: {{ {', '.join(perms)} }}" if perms else ""
    return f"{{ user: {_q(user.user)}, password: {_q(user.password)}{permissions} }}"


def _authorization_block(cfg: NatsServerConfig) -> list[str]:
    if not cfg.users:
        return []
    lines = ["authorization {", "  users: ["]
    lines += [f"    {_user_line(user)}" for user in cfg.users]
    lines.append("  ]")
    if cfg.auth_callout is not None:
        known = {u.user for u in (*cfg.users, *cfg.system_users)}
        missing = [u for u in cfg.auth_callout.auth_users if u not in known]
        if missing:
            raise ValueError(f"auth_callout.auth_users {missing} are not configured users")
        lines += [
            "  auth_callout {",
            f"    issuer: {_q(cfg.auth_callout.issuer)}",
            f"    auth_users: [{', '.join(_q(u) for u in cfg.auth_callout.auth_users)}]",
            "  }",
        ]
    return [*lines, "}"]


def _accounts_block(cfg: NatsServerConfig) -> list[str]:
    # Only the system account is declared: everything else (edge2core's clients, devices, MQTT,
    # JetStream, the leaf link) stays in the global account, as without this block.
    if not cfg.system_users:
        return []
    lines = ["accounts {", '  "$SYS": {', "    users: ["]
    lines += [f"      {_user_line(user)}" for user in cfg.system_users]
    return [*lines, "    ]", "  }", "}"]


def _websocket_block(cfg: NatsServerConfig) -> list[str]:
    # wss:// with TLS, else plain ws:// (a setting says so). MQTT clients connect on path /mqtt.
    if cfg.websocket_port is None:
        return []
    tls = _device_tls(cfg.tls) if cfg.tls else ["  no_tls: true"]
    return ["websocket {", f"  host: {_q(cfg.host)}", f"  port: {cfg.websocket_port}", *tls, "}"]


def _leafnodes_block(cfg: NatsServerConfig) -> list[str]:
    if cfg.leafnode_port is None and not cfg.leafnode_remotes:
        return []
    lines = ["leafnodes {"]
    if cfg.leafnode_port is not None:
        # Sites reach the core through whatever address they were given (NAT, a proxy, a
        # load balancer): never tell them to use the core's own listening address instead.
        lines += [f"  host: {_q(cfg.host)}", f"  port: {cfg.leafnode_port}", "  no_advertise: true"]
        if cfg.tls is not None:
            lines += _tls_block(cfg.tls, verify=True, pinned=cfg.tls.leaf_pinned)
        if cfg.leafnode_users:
            lines += ["  authorization {", "    users: ["]
            # nats-server takes no permissions here: a leaf user with permissions is a server
            # user instead (`users`; leaf links then log in against those).
            lines += [f"      {{ user: {_q(u.user)}, password: {_q(u.password)} }}"
                      for u in cfg.leafnode_users]
            lines += ["    ]", "  }"]
    if cfg.leafnode_remotes:
        lines.append("  remotes: [")
        for remote in cfg.leafnode_remotes:
            # Several URLs: nats-server dials them in turn until one answers, and again when
            # the node it is linked to goes away.
            where = f"url: {_q(remote)}" if isinstance(remote, str) else f"urls: [{', '.join(map(_q, remote))}]"
            if cfg.tls is None:
                lines.append(f"    {{ {where} }}")
            else:  # our certificate proves the site to the core; the core's is checked too
                lines += [f"    {{ {where}", *_tls_block(cfg.tls, verify=False, indent="      "), "    }"]
        lines.append("  ]")
    lines.append("}")
    return lines


def _cluster_block(cfg: NatsServerConfig) -> list[str]:
    cluster = cfg.cluster
    if cluster is None:
        return []
    lines = ["cluster {", f"  name: {_q(cluster.name)}", f"  host: {_q(cluster.host or cfg.host)}",
             f"  port: {cluster.port}",
             # Clients are not told of the other nodes' client ports: the core's own clients
             # stay on their node's (a loopback address, meaningless on another machine).
             "  no_advertise: true",
             f"  routes: [{', '.join(_q(r) for r in cluster.routes)}]"]
    if cfg.tls is not None:
        lines += _tls_block(cfg.tls, verify=True, pinned=cfg.tls.route_pinned)
    return [*lines, "}"]


def leaf_url_with_credentials(url: str, user: str, password: str) -> str:
    """`nats-leaf://host:port` -> `nats-leaf://user:password@host:port` (both quoted)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


def render_config(cfg: NatsServerConfig) -> str:
    """Render ``cfg`` as nats-server config file text (pure function)."""
    lines = [
        f"# generated by edge2core for server {cfg.name!r}",
        f"server_name: {_q(cfg.name)}",
        f"listen: {_hostport(cfg.host, cfg.client_port)}",
        f"http: {_hostport(cfg.host, cfg.http_port)}",
        f"max_payload: {cfg.max_payload}",
        *_jetstream_block(cfg),
        *_mqtt_block(cfg),
        *_websocket_block(cfg),
        *_leafnodes_block(cfg),
        *_cluster_block(cfg),
        *_authorization_block(cfg),
        *_accounts_block(cfg),
    ]
    return "\n".join(lines) + "\n"
