"""The model registry on its own: versions, stages, candidates and promotion, unknown versions.

Runs on SQLite and on PostgreSQL (the `sessions` fixture).
"""

from __future__ import annotations

import hashlib

import pytest

from edge2core.common.events import ModelPublished
from edge2core.core.deliver.registry import ModelRegistry
from tests.support.recorded_sites import RecordedSites


def register(registry: ModelRegistry, artifact: bytes, **kw: object):
    return registry.register(
        artifact,
        dataset_version=1,
        classes=["SKU-A", "SKU-B"],
        metrics={"val_top1": 0.9},
        params={"epochs": 3},
        **kw,
    )


def test_registry_versions_and_stages(store, sessions) -> None:
    published: list[ModelPublished] = []
    registry = ModelRegistry(store, sessions, RecordedSites(published))
    assert registry.production() is None

    v1 = register(registry, b"onnx model one")
    assert (v1.version, v1.stage) == (1, "production")
    assert v1.sha256 == hashlib.sha256(b"onnx model one").hexdigest()
    assert v1.size == len(b"onnx model one")
    assert store.get(v1.artifact_key) == b"onnx model one"
    assert (v1.classes, v1.metrics, v1.params) == (["SKU-A", "SKU-B"], {"val_top1": 0.9}, {"epochs": 3})

    v2 = register(registry, b"onnx model two")
    assert (v2.version, v2.stage) == (2, "production")
    assert registry.get(1).stage == "archived"
    assert registry.production().version == 2
    assert [(m.version, m.stage) for m in registry.list()] == [(1, "archived"), (2, "production")]

    assert [m.version for m in published] == [1, 2]
    assert published[1].sha256 == hashlib.sha256(b"onnx model two").hexdigest()
    assert published[1].size == len(b"onnx model two")
    assert published[1].classes == ["SKU-A", "SKU-B"]
    assert published[1].url_path == "/v1/models/2/artifact"


def test_registry_candidate_and_promotion(store, sessions) -> None:
    published: list[ModelPublished] = []
    registry = ModelRegistry(store, sessions, RecordedSites(published))
    register(registry, b"model one")
    candidate = register(registry, b"model two", promote=False)
    assert candidate.stage == "candidate"
    assert registry.production().version == 1
    assert [m.version for m in published] == [1]

    promoted = registry.promote(candidate.version)
    assert promoted.stage == "production"
    assert registry.get(1).stage == "archived"
    assert [m.version for m in published] == [1, 2]

    back = registry.promote(1)  # a rollback is a promotion of an older version
    assert back.stage == "production"
    assert registry.get(2).stage == "archived"
    assert published[-1].version == 1
    assert published[-1].sha256 == hashlib.sha256(b"model one").hexdigest()


def test_registry_unknown_versions(store, sessions) -> None:
    published: list[ModelPublished] = []
    registry = ModelRegistry(store, sessions, RecordedSites(published))
    register(registry, b"model one")
    with pytest.raises(LookupError, match="model version 7 does not exist"):
        registry.get(7)
    with pytest.raises(LookupError, match="does not exist"):
        registry.promote(7)
    # The failed promotion changed nothing.
    assert registry.production().version == 1
    assert [m.version for m in published] == [1]


