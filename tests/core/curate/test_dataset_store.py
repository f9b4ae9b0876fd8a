"""Datasets built from what the receiver stored (kiosk photos on two sites): manifests, their
determinism, query filters, lookup errors and tampering.

Runs on SQLite and on PostgreSQL (the `sessions` fixture); `store` and `receiver` come from
tests/core/conftest.py.
"""

from __future__ import annotations

import hashlib

import pytest

from edge2core.common.events import Source
from edge2core.common.objectstore import image_key
from edge2core.core.curate.datasets import DatasetQuery, DatasetStore
from edge2core.core.ingest.near_dups import stable_split
from tests.support.receiving import VAL_PERCENT, chunks, distinct_jpeg, record_for

SKUS = ("SKU-A", "SKU-B", "SKU-C")


@pytest.fixture
async def kiosk_photos(receiver) -> dict[str, tuple[str, str]]:
    """12 labelled photos (4 per SKU over two sites) and one unlabelled shopper photo."""
    photos: dict[str, tuple[str, str]] = {}
    for n in range(12):
        data = distinct_jpeg(n)
        sku, site = SKUS[n % 3], ("store-1", "store-2")[n % 2]
        receipt = await receiver.receive(record_for(data, sku=sku, site=site), chunks(data))
        assert receipt.created
        photos[receipt.sha256] = (sku, site)
    shopper = distinct_jpeg(99)
    await receiver.receive(
        record_for(shopper, sku=None, source=Source.SHOPPER, device="cart-1"), chunks(shopper)
    )
    assert len(photos) == 12
    return photos


async def test_dataset_build_from_kiosk_photos(kiosk_photos, store, sessions) -> None:
    datasets = DatasetStore(store, sessions)
    info = datasets.build(DatasetQuery())
    assert info.version == 1
    assert info.manifest_key == f"datasets/manifests/{info.manifest_sha256}.parquet"
    manifest = store.get(info.manifest_key)
    assert hashlib.sha256(manifest).hexdigest() == info.manifest_sha256
    assert info.stats["images"] == 12
    assert info.stats["classes"] == 3
    assert info.stats["per_class"] == {"SKU-A": 4, "SKU-B": 4, "SKU-C": 4}
    assert info.stats["per_site"] == {"store-1": 6, "store-2": 6}
    assert sum(info.stats["per_split"].values()) == 12

    entries = datasets.entries(info.version)
    assert [e.sha256 for e in entries] == sorted(kiosk_photos)  # shopper photo left out
    for e in entries:
        assert (e.sku, e.site) == kiosk_photos[e.sha256]
        assert e.key == image_key(e.sha256)
        assert e.split == stable_split(e.sha256, VAL_PERCENT)
        assert e.source is Source.KIOSK
        assert store.exists(e.key)
    assert datasets.get(info.version).manifest_sha256 == info.manifest_sha256


async def test_dataset_manifest_is_deterministic(kiosk_photos, store, sessions) -> None:
    datasets = DatasetStore(store, sessions)
    first = datasets.build(DatasetQuery())
    second = datasets.build(DatasetQuery())
    assert second.version == first.version + 1
    assert (second.manifest_sha256, second.manifest_key) == (
        first.manifest_sha256, first.manifest_key,
    )
    assert datasets.entries(first.version) == datasets.entries(second.version)
    manifests = list(store.list("datasets/"))
    assert manifests == [first.manifest_key]


async def test_dataset_query_filters(kiosk_photos, store, sessions) -> None:
    datasets = DatasetStore(store, sessions)
    only_a = datasets.build(DatasetQuery(skus=["SKU-A"]))
    assert {e.sku for e in datasets.entries(only_a.version)} == {"SKU-A"}
    assert only_a.stats["images"] == 4
    assert only_a.query.skus == ["SKU-A"]

    site_2 = datasets.build(DatasetQuery(sites=["store-2"]))
    assert {e.site for e in datasets.entries(site_2.version)} == {"store-2"}
    assert site_2.stats["images"] == 6

    both = datasets.build(DatasetQuery(skus=["SKU-A", "SKU-B"], sites=["store-1"]))
    expected = sorted(
        sha for sha, (sku, site) in kiosk_photos.items()
        if sku in ("SKU-A", "SKU-B") and site == "store-1"
    )
    assert [e.sha256 for e in datasets.entries(both.version)] == expected
    assert datasets.get(both.version).query == both.query

    assert len({only_a.manifest_sha256, site_2.manifest_sha256, both.manifest_sha256}) == 3


async def test_dataset_with_no_matching_photos_is_a_lookup_error(kiosk_photos, store, sessions) -> None:
    datasets = DatasetStore(store, sessions)
    with pytest.raises(LookupError, match="no labelled photos match the query"):
        datasets.build(DatasetQuery(skus=["SKU-NOPE"]))
    with pytest.raises(LookupError, match="no labelled photos"):
        datasets.build(DatasetQuery(sources=[Source.SHOPPER]))  # shopper photos have no label
    with pytest.raises(LookupError, match="does not exist"):
        datasets.get(1)  # the failed builds made no versions


def test_dataset_on_an_empty_core_is_a_lookup_error(store, sessions) -> None:
    with pytest.raises(LookupError, match="send kiosk captures first"):
        DatasetStore(store, sessions).build(DatasetQuery())


async def test_tampered_manifest_is_detected(kiosk_photos, store, sessions) -> None:
    datasets = DatasetStore(store, sessions)
    info = datasets.build(DatasetQuery())
    manifest = store.get(info.manifest_key)
    store.put(info.manifest_key, manifest[:100] + bytes([manifest[100] ^ 1]) + manifest[101:])
    with pytest.raises(RuntimeError, match="does not match its hash"):
        datasets.entries(info.version)


