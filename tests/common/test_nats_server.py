"""Tests for the embedded nats-server component (real server processes, free ports)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import paho.mqtt.client as mqtt
import pytest

from edge2core.common.nats_server import (
    MQTT_WS_PATH,
    EmbeddedNats,
    NatsServerConfig,
    nats_server_binary,
    render_config,
)
from edge2core.common.net import free_port, wait_for_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

WAIT = 10.0  # generous upper bound for every wait-for-condition below


# --------------------------------------------------------------------------- helpers


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as gone (it holds no ports/files).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class MqttPeer:
    """A connected paho client (v2 callback API) with events for connect/suback/messages."""

    def __init__(self, host: str, port: int, transport: str = "tcp") -> None:
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.messages: list[mqtt.MQTTMessage] = []
        self.got_message = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"t-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
            transport=transport,
        )
        if transport == "websockets":
            self.client.ws_set_options(path=MQTT_WS_PATH)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(WAIT), "MQTT connect timed out"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.subscribed.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.messages.append(msg)
        self.got_message.set()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, _ = self.client.subscribe(topic, qos=qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert self.subscribed.wait(WAIT), "SUBACK timed out"

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=WAIT)  # QoS 1: returns once PUBACK arrived
        assert info.is_published(), "PUBACK not received"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_roundtrip(host: str, port: int, transport: str, payload: bytes) -> mqtt.MQTTMessage:
    topic = f"e2c/test/{uuid.uuid4().hex[:8]}"
    sub = MqttPeer(host, port, transport)
    pub = MqttPeer(host, port, transport)
    try:
        sub.subscribe(topic, qos=1)
        pub.publish(topic, payload, qos=1)
        assert sub.got_message.wait(WAIT), "subscriber got nothing"
        return sub.messages[0]
    finally:
        pub.close()
        sub.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    cfg = NatsServerConfig.with_free_ports("edge-test", tmp_path / "js", jetstream_domain="edge1")
    srv = EmbeddedNats(cfg, tmp_path / "run")
    with srv:
        yield srv


# --------------------------------------------------------------------------- tests


def test_free_port_and_wait_for_port() -> None:
    port = free_port()
    with pytest.raises(TimeoutError, match=str(port)):
        wait_for_port("127.0.0.1", port, timeout=0.2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        wait_for_port("127.0.0.1", port, timeout=2)


def test_binary_is_found() -> None:
    path = nats_server_binary()
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True)
    assert "nats-server" in out.stdout


def test_render_config_accepted_by_nats_server(tmp_path: Path) -> None:
    core = NatsServerConfig.with_free_ports(
        "core", tmp_path / "core", leafnode=True, jetstream_domain="core"
    )
    edge = NatsServerConfig.with_free_ports(
        "edge1", tmp_path / "edge", jetstream_domain="edge1", leafnode_remotes=(core.leafnode_url,)
    )
    for cfg in (core, edge):
        text = render_config(cfg)
        assert f'server_name: "{cfg.name}"' in text
        assert "no_tls: true" in text
        path = tmp_path / f"{cfg.name}.conf"
        path.write_text(text)
        res = subprocess.run(
            [str(nats_server_binary()), "-t", "-c", str(path)], capture_output=True, text=True
        )
        assert res.returncode == 0, res.stdout + res.stderr
    assert "nats-leaf://" in render_config(edge)
    assert "domain" not in render_config(
        NatsServerConfig(name="x", store_dir=tmp_path, client_port=1, http_port=2)
    )


def test_mqtt_qos1_over_tcp(server: EmbeddedNats) -> None:
    msg = mqtt_roundtrip(*server.mqtt_address, "tcp", b"hello-tcp")
    assert msg.payload == b"hello-tcp"
    assert msg.qos == 1


def test_mqtt_qos1_over_websocket(server: EmbeddedNats) -> None:
    msg = mqtt_roundtrip(*server.websocket_address, "websockets", b"hello-ws")
    assert msg.payload == b"hello-ws"
    assert msg.qos == 1


def test_mqtt_large_payload(server: EmbeddedNats) -> None:
    payload = os.urandom(6 * 1024 * 1024)
    msg = mqtt_roundtrip(*server.mqtt_address, "tcp", payload)
    assert msg.payload == payload


async def test_jetstream_publish_ack(server: EmbeddedNats) -> None:
    nc = await nats.connect(server.client_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="PHOTOS", subjects=["photos.>"])
        ack = await js.publish("photos.cam1", b"jpeg-bytes")
        assert ack.stream == "PHOTOS"
        assert ack.seq == 1
        assert ack.domain == "edge1"
        got = await js.get_msg("PHOTOS", seq=1)
        assert got.data == b"jpeg-bytes"
    finally:
        await nc.close()


async def _relay_until_received(
    pub_url: str, sub_url: str, subject: str, timeout: float = WAIT
) -> bytes:
    """Publish on one server until a subscriber on the other gets it.

    Interest crosses the leaf connection asynchronously after the subscription
    is made, so a single publish could be dropped; re-publishing until delivery
    is the wait-for-condition.
    """
    sub_nc = await nats.connect(sub_url)
    pub_nc = await nats.connect(pub_url)
    try:
        sub = await sub_nc.subscribe(subject)
        await sub_nc.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await pub_nc.publish(subject, b"ping")
            await pub_nc.flush()
            try:
                msg = await sub.next_msg(timeout=0.1)
                return msg.data
            except nats.errors.TimeoutError:
                continue
        raise TimeoutError(f"{subject}: nothing crossed the leaf connection in {timeout}s")
    finally:
        await pub_nc.close()
        await sub_nc.close()


async def test_leafnode_core_and_edge(tmp_path: Path) -> None:
    core_cfg = NatsServerConfig.with_free_ports(
        "core", tmp_path / "core-js", mqtt=False, websocket=False, leafnode=True,
        jetstream_domain="core",
    )
    edge_cfg = NatsServerConfig.with_free_ports(
        "edge1", tmp_path / "edge-js", jetstream_domain="edge1",
        leafnode_remotes=(core_cfg.leafnode_url,),
    )
    with EmbeddedNats(core_cfg, tmp_path / "core") as core, EmbeddedNats(
        edge_cfg, tmp_path / "edge"
    ) as edge:
        edge.wait_for_leafnodes(1)
        core.wait_for_leafnodes(1)
        assert await _relay_until_received(core.client_url, edge.client_url, "down.x") == b"ping"
        assert await _relay_until_received(edge.client_url, core.client_url, "up.x") == b"ping"

        # Separate JetStream domains: each side keeps its own store, and the core
        # can still reach the edge's JetStream API through the domain prefix.
        nc = await nats.connect(core.client_url)
        try:
            assert (await nc.jetstream().account_info()).domain == "core"
            assert (await nc.jetstream(domain="edge1").account_info()).domain == "edge1"
        finally:
            await nc.close()


def test_only_sites_with_their_token_join_the_core_as_leaf_nodes(tmp_path: Path) -> None:
    from edge2core.common.nats_server import NatsUser, leaf_url_with_credentials

    core_cfg = NatsServerConfig.with_free_ports(
        "core", tmp_path / "core-js", mqtt=False, websocket=False, leafnode=True,
        jetstream_domain="core", leafnode_users=(NatsUser("store-1", "s3cret/+@"),))
    assert "authorization" in render_config(core_cfg)

    def edge(name: str, user: str, password: str) -> NatsServerConfig:
        url = leaf_url_with_credentials(core_cfg.leafnode_url, user, password)
        return NatsServerConfig.with_free_ports(
            name, tmp_path / f"{name}-js", mqtt=False, websocket=False, jetstream_domain=name,
            leafnode_remotes=(url,))

    with EmbeddedNats(core_cfg, tmp_path / "core") as core:
        with EmbeddedNats(edge("intruder", "store-1", "guess"), tmp_path / "intruder") as bad:
            time.sleep(2.0)  # several reconnect attempts
            assert core.leafnode_count() == 0 and bad.leafnode_count() == 0
        with EmbeddedNats(edge("store1", "store-1", "s3cret/+@"), tmp_path / "good") as good:
            good.wait_for_leafnodes(1)
            core.wait_for_leafnodes(1)


def test_auth_callout_and_system_account_render_and_are_accepted(tmp_path: Path) -> None:
    from edge2core.common.nats_server import AuthCallout, NatsUser
    from edge2core.edge.nats_jwt import Issuer

    users = (NatsUser("e2c-internal", "pw-1"),)
    system = (NatsUser("e2c-system", "pw-2"),)
    callout = AuthCallout(Issuer().public_key, ("e2c-internal", "e2c-system"))
    cfg = NatsServerConfig.with_free_ports("callout", tmp_path / "js", jetstream_domain="edge1",
                                           users=users, auth_callout=callout, system_users=system)
    text = render_config(cfg)
    assert "auth_callout" in text and callout.issuer in text and '"$SYS"' in text
    path = tmp_path / "callout.conf"
    path.write_text(text)
    res = subprocess.run([str(nats_server_binary()), "-t", "-c", str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # Every user that bypasses the callout must exist, or nobody could answer it.
    bad = NatsServerConfig.with_free_ports("bad", tmp_path / "js2", users=users,
                                           auth_callout=AuthCallout(callout.issuer, ("ghost",)))
    with pytest.raises(ValueError, match="ghost"):
        render_config(bad)


async def test_edge_with_auth_callout_keeps_its_leaf_link_and_jetstream(tmp_path: Path) -> None:
    """Declaring the system account (for the callout service's kicks) leaves the global
    account as it was: edge2core's internal user still has the edge's JetStream domain, the
    leaf link to the core and, through it, the core's domain."""
    from edge2core.common.nats_server import AuthCallout, NatsUser
    from edge2core.edge.nats_jwt import Issuer

    internal, system = NatsUser("e2c-internal", "pw-1"), NatsUser("e2c-system", "pw-2")
    core_cfg = NatsServerConfig.with_free_ports(
        "core", tmp_path / "core-js", mqtt=False, websocket=False, leafnode=True,
        jetstream_domain="core",
    )
    edge_cfg = NatsServerConfig.with_free_ports(
        "edge1", tmp_path / "edge-js", jetstream_domain="edge1",
        leafnode_remotes=(core_cfg.leafnode_url,), users=(internal,), system_users=(system,),
        auth_callout=AuthCallout(Issuer().public_key, (internal.user, system.user)),
    )
    with EmbeddedNats(core_cfg, tmp_path / "core") as core, EmbeddedNats(
        edge_cfg, tmp_path / "edge"
    ) as edge:
        edge.wait_for_leafnodes(1)
        core.wait_for_leafnodes(1)
        edge_url = f"nats://{internal.user}:{internal.password}@127.0.0.1:{edge_cfg.client_port}"
        assert await _relay_until_received(core.client_url, edge_url, "down.x") == b"ping"
        assert await _relay_until_received(edge_url, core.client_url, "up.x") == b"ping"
        nc = await nats.connect(edge_url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="EVENTS", subjects=["e2c.events.>"])
            assert (await js.publish("e2c.events.x", b"1")).domain == "edge1"
            assert (await nc.jetstream(domain="core").account_info()).domain == "core"
        finally:
            await nc.close()


async def test_stop_leaves_no_process_and_restart_keeps_store(tmp_path: Path) -> None:
    cfg = NatsServerConfig.with_free_ports("restart", tmp_path / "js", mqtt=False, websocket=False)
    srv = EmbeddedNats(cfg, tmp_path / "run")
    srv.start()
    pid = srv.pid
    assert pid is not None and srv.is_running
    nc = await nats.connect(srv.client_url)
    js = nc.jetstream()
    await js.add_stream(name="KEEP", subjects=["keep.>"])
    await js.publish("keep.a", b"1")
    await nc.close()

    srv.stop()
    assert not srv.is_running
    assert not pid_alive(pid)
    srv.stop()  # idempotent

    srv.start()
    try:
        assert srv.pid != pid
        nc = await nats.connect(srv.client_url)
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1
        await nc.close()
    finally:
        srv.stop()


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = NatsServerConfig(
            name="busy", store_dir=tmp_path / "js", client_port=port, http_port=free_port()
        )
        srv = EmbeddedNats(cfg, tmp_path / "run")
        with pytest.raises(RuntimeError, match="log tail") as err:
            srv.start(timeout=5)
        assert "address already in use" in str(err.value).lower()
        assert not srv.is_running


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_killed_parent(tmp_path: Path) -> None:
    script = f"""
import sys, time
from pathlib import Path
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig
cfg = NatsServerConfig.with_free_ports("orphan", Path({str(tmp_path / 'js')!r}), mqtt=False, websocket=False)
srv = EmbeddedNats(cfg, Path({str(tmp_path / 'run')!r})).start()
print(srv.pid, flush=True)
time.sleep(60)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.strip(), "parent did not report the server pid"
        server_pid = int(line)
        assert pid_alive(server_pid)
        parent.kill()  # SIGKILL: no atexit, no finalizers; only PDEATHSIG can clean up
        parent.wait(timeout=5)
        wait_until(lambda: not pid_alive(server_pid), what="orphaned nats-server to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
