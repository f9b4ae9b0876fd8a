"""A NATS cluster at the core, as settings and config text (pure: no servers; the cluster
itself runs in tests/scale/test_nats_cluster.py): the `cluster {}` block with TLS on routes
pinned to the core's certificates, the KV replicas the settings ask for, and a site's one leaf
remote listing every node."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge2core.common.certs import cert_fingerprint, read_cert
from edge2core.common.nats_config import NatsClusterConfig, NatsServerConfig, NatsTls, NatsUser, render_config
from edge2core.common.site_tokens import leaf_user
from edge2core.common.tls import core_tls_files, site_tls_files
from edge2core.config import CoreSettings, EdgeSettings, NatsCluster
from edge2core.core.service import core_nats_config
from edge2core.edge.broker_config import SiteAccess, core_leaf_remote, edge_nats_config
from tests.support.tls import make_pki

ROUTES = ["nats-route://core-a:6470", "nats-route://core-b:6470", "nats-route://core-c:6470"]
INTERNAL = NatsUser("e2c-core-internal", "secret")


def test_a_core_alone_renders_no_cluster_and_keeps_one_copy(tmp_path: Path) -> None:
    settings = CoreSettings(data_dir=tmp_path)
    config = core_nats_config(settings)
    assert config.name == "e2c-core" and config.cluster is None
    assert "cluster {" not in render_config(config)
    assert settings.resolved_jetstream_replicas == 1
    with pytest.raises(ValidationError, match="needs nats_cluster"):
        CoreSettings(data_dir=tmp_path, jetstream_replicas=3)


def test_a_cluster_node_renders_its_routes_with_tls_pinned_to_core_certificates(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "ca", sites=("store-1",), devices=())
    settings = CoreSettings(data_dir=tmp_path / "core", tls_dir=pki.folder, site_tokens={"store-1": "t" * 20},
                            nats_cluster=NatsCluster(node="core-b", port=6471, routes=ROUTES))
    config = core_nats_config(settings, core_tls_files(pki.folder), INTERNAL)
    assert config.name == "core-b"  # the server name: unique in the cluster
    assert config.cluster == NatsClusterConfig("e2c-core", 6471, tuple(ROUTES))
    assert config.jetstream_domain == "core" and config.leafnode_port == settings.leafnode_port
    core_print = cert_fingerprint(read_cert(pki.ca.paths("core", "core")[0]))
    site_print = cert_fingerprint(read_cert(pki.ca.paths("site", "store-1")[0]))
    assert config.tls is not None
    assert config.tls.route_pinned == (core_print,) and config.tls.leaf_pinned == (site_print,)
    text = render_config(config)
    block = text[text.index("cluster {"):]
    block = block[:block.index("\n}\n")]
    assert 'name: "e2c-core"' in block and "port: 6471" in block and "no_advertise: true" in block
    assert f"routes: [{', '.join(f'{chr(34)}{r}{chr(34)}' for r in ROUTES)}]" in block
    # Routes are mutual TLS, and only the core's certificate may form one (not a site's).
    assert "verify: true" in block and f'pinned_certs: ["{core_print}"]' in block
    assert site_print not in block
    assert settings.resolved_jetstream_replicas == 3


def test_routes_are_plain_without_tls_and_replicas_follow_the_cluster_size(tmp_path: Path) -> None:
    two = CoreSettings(data_dir=tmp_path, plaintext=True,
                       nats_cluster=NatsCluster(node="a", routes=["nats-route://b:6470"]))
    assert two.resolved_jetstream_replicas == 2  # one peer listed: two nodes
    block = render_config(core_nats_config(two)).split("cluster {")[1]
    assert "tls {" not in block.split("\n}")[0]
    assert CoreSettings(data_dir=tmp_path, jetstream_replicas=5, plaintext=True,
                        nats_cluster=NatsCluster(node="a", routes=ROUTES)).resolved_jetstream_replicas == 5
    with pytest.raises(ValidationError, match="nats-route://"):
        NatsCluster(node="a", routes=["core-b:6470"])
    with pytest.raises(ValidationError):
        NatsCluster(node="a", routes=[])
    with pytest.raises(ValidationError, match="tls_dir"):  # one CA for every node, not one each
        CoreSettings(data_dir=tmp_path, nats_cluster=NatsCluster(node="a", routes=ROUTES))


def test_a_site_lists_every_node_in_one_leaf_remote(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "ca", sites=("store-1",), devices=())
    urls = ["nats-leaf://core-a:7470", "nats-leaf://core-b:7470", "nats-leaf://core-c:7470"]
    token = "token-of-store-1-0123456789"
    for given in (",".join(urls), " , ".join(urls), urls):  # comma-separated or a (TOML) list
        settings = EdgeSettings(site="store-1", data_dir=tmp_path / "site", token=token, core_leaf_url=given)
        assert settings.core_leaf_urls == tuple(urls)
    access = SiteAccess(None, None).secured(site_tls_files(pki.folder, "store-1"))
    config = edge_nats_config(settings, access)
    user = leaf_user("store-1", token)
    (remote,) = config.leafnode_remotes  # one link, not one per node
    assert remote == tuple(u.replace("://", f"://{user}:{token}@") for u in urls)
    text = render_config(config)
    assert text.count("urls: [") == 1 and "url: " not in text
    remotes = text[text.index("remotes: ["):]
    assert "tls {" in remotes  # the site's certificate towards whichever node answers


def test_the_single_url_form_is_unchanged(tmp_path: Path) -> None:
    settings = EdgeSettings(site="store-1", data_dir=tmp_path, core_leaf_url="nats-leaf://core:7470")
    assert core_leaf_remote(settings) == "nats-leaf://core:7470"
    assert 'url: "nats-leaf://core:7470"' in render_config(edge_nats_config(settings))
    assert EdgeSettings(site="store-1", data_dir=tmp_path, core_leaf_url=None).core_leaf_urls == ()
    text = render_config(NatsServerConfig(name="x", store_dir=tmp_path, client_port=1, http_port=2,
                                          leafnode_remotes=("nats-leaf://a:1", ("nats-leaf://b:1", "nats-leaf://c:1"))))
    assert 'url: "nats-leaf://a:1"' in text and 'urls: ["nats-leaf://b:1", "nats-leaf://c:1"]' in text
    assert NatsTls(Path("c"), Path("k"), Path("ca")).route_pinned == ()
