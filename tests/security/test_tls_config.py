"""TLS settings turned into server config and files (pure or file-only: no servers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge2core.common.leaf_permissions import site_inbox, site_publish, site_subscribe
from edge2core.common.nats_config import NatsServerConfig, NatsTls, NatsUser, render_config
from edge2core.common.site_tokens import leaf_user, tokens_of
from edge2core.common.tls import prepare_core_tls, prepare_site_tls
from edge2core.config import CoreSettings
from edge2core.core.service import core_nats_config
from tests.support.tls import Pki


def test_every_device_and_leaf_listener_gets_a_tls_block(tmp_path: Path, session_pki: Pki) -> None:
    cert, key = (Path(p) for p in session_pki.site("site-a"))
    tls = NatsTls(cert, key, Path(session_pki.ca_file), verify_devices=True, device_pinned=("ab" * 32,),
                  leaf_pinned=("cd" * 32,))
    text = render_config(NatsServerConfig(
        name="x", store_dir=tmp_path, client_port=1, http_port=2, mqtt_port=3, websocket_port=4,
        leafnode_port=5, leafnode_remotes=("nats-leaf://core:7", ), tls=tls))
    assert text.count("tls {") == 4  # mqtt, websocket, the leaf listener, the remote
    assert "no_tls" not in text
    assert text.count("verify: true") == 3  # devices on mqtt and websocket; sites on the leaf listener
    assert f'pinned_certs: ["{"ab" * 32}"]' in text and f'pinned_certs: ["{"cd" * 32}"]' in text
    plain = render_config(NatsServerConfig(name="x", store_dir=tmp_path, client_port=1, http_port=2,
                                           mqtt_port=3, websocket_port=4))
    assert "tls {" not in plain and "no_tls: true" in plain


def test_the_cores_broker_gives_each_site_only_its_own_subjects(tmp_path: Path) -> None:
    settings = CoreSettings(data_dir=tmp_path, site_tokens={"store-1": "t" * 20, "store-2": "u" * 20})
    with pytest.raises(ValueError):
        core_nats_config(settings)  # the core's own clients need a user then
    config = core_nats_config(settings, None, NatsUser("e2c-core-internal", "secret"))
    users = {u.user: u for u in config.users}
    assert set(users) == {"e2c-core-internal", leaf_user("store-1", "t" * 20), leaf_user("store-2", "u" * 20)}
    assert users["e2c-core-internal"].publish == ()  # the core itself: everything
    store1 = users[leaf_user("store-1", "t" * 20)]
    assert store1.publish == site_publish("store-1", "core")
    assert store1.subscribe == site_subscribe("store-1") == (f"{site_inbox('store-1')}.>",)
    assert not any("store-2" in s for s in store1.publish + store1.subscribe)
    assert not any(s.endswith(("API.>", "STREAM.DELETE.KV_e2c-deploy", "STREAM.PURGE.KV_e2c-deploy"))
                   or ".API.STREAM.DELETE" in s or ".API.STREAM.PURGE" in s for s in store1.publish)
    assert config.leafnode_users == ()  # leaf links log in as those users
    assert "permissions" in render_config(config)


def test_a_site_being_rotated_has_a_leaf_user_for_each_of_its_tokens(tmp_path: Path) -> None:
    assert tokens_of("old-token, new-token") == ("old-token", "new-token")
    assert tokens_of("only") == ("only",) and tokens_of(" , ") == ()
    settings = CoreSettings(data_dir=tmp_path, site_tokens={"store-1": "old-token-1234,new-token-5678"})
    config = core_nats_config(settings, None, NatsUser("e2c-core-internal", "secret"))
    users = {u.user: u for u in config.users}
    old, new = leaf_user("store-1", "old-token-1234"), leaf_user("store-1", "new-token-5678")
    assert old != new and {old, new} < set(users)
    assert users[old].password == "old-token-1234" and users[new].password == "new-token-5678"
    assert users[old].publish == users[new].publish == site_publish("store-1", "core")


def test_tls_on_by_default_with_a_ca_made_on_first_start_and_plain_text_only_when_asked(
        tmp_path: Path) -> None:
    files = prepare_core_tls(None, tmp_path / "core", "127.0.0.1", plaintext=False)
    assert files is not None and files.cert.is_file() and files.crl is not None and files.crl.is_file()
    again = prepare_core_tls(None, tmp_path / "core", "127.0.0.1", plaintext=False)
    assert again is not None and again.cert.read_bytes() == files.cert.read_bytes()  # kept, not remade
    assert prepare_core_tls(None, tmp_path / "x", "127.0.0.1", plaintext=True) is None
    with pytest.raises(FileNotFoundError, match="edge2core certs"):
        prepare_site_tls(None, tmp_path / "edge", "store-1", plaintext=False)
    assert prepare_site_tls(None, tmp_path / "edge", "store-1", plaintext=True) is None


def test_a_site_without_its_certificate_refuses_to_start_and_says_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2C_")}
    done = subprocess.run([sys.executable, "-m", "edge2core", "edge", "up", "--site", "store-9",
                           "--data-dir", str(tmp_path / "edge")], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "TLS is on" in done.stderr and "sites/store-9.pem" in done.stderr
    assert "Traceback" not in done.stderr
