"""Models for bench/fleet.py: a tiny backbone and its heads in the project's ONNX format, and
their registration in a running core's registry as candidates.

The fleet bench measures delivery, not recognition: a real EfficientNet-Lite0 backbone (13 MB,
~0.5 s to compose and load per site) on 100 simulated sites sharing two cores would measure
the bench machine's CPU, not the fleet's path. So the backbone here is tiny (image ->
per-channel mean -> 16-wide embedding) but the files are the project's own format: heads built
by `core.train.onnx_export.head_onnx`'s layout, composed by `common.onnx_models.compose_onnx`,
signed and stored by the core's `ModelRegistry`, delivered head-only to sites that hold the
backbone, verified and loaded by the sites' `Recognizer` exactly as a trained model is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edge2core.common.onnx_models import (
    EMBEDDING_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    compose_onnx,
    set_metadata,
)
from edge2core.common.preprocess import IMAGE_SIZE, NORMALIZATION

BACKBONE_ID = "fleet-bench-tiny-backbone"
EMBEDDING_DIM = 16
OPSET = 18
CLASSES = ("fleet-model-a", "fleet-model-b")  # no capture uses these: the golden smoke test is idle


def _meta(role: str, classes: tuple[str, ...] | None, input_name: str) -> dict[str, str]:
    meta = {"backbone": BACKBONE_ID, "image_size": str(IMAGE_SIZE), "normalization": NORMALIZATION,
            "input_name": input_name, "output_name": OUTPUT_NAME, "format_version": "1", "role": role}
    if classes is not None:
        meta["classes"] = json.dumps(list(classes))
    return meta


def backbone_onnx() -> bytes:
    """``image`` [N,3,224,224] -> ``embedding`` [N,16]: a per-channel mean and a fixed matrix."""
    weight = np.random.default_rng(0).normal(size=(3, EMBEDDING_DIM)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [INPUT_NAME, "bb.axes"], ["bb.mean"], keepdims=0),
         helper.make_node("MatMul", ["bb.mean", "bb.weight"], [EMBEDDING_NAME])],
        "fleet_backbone",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info(EMBEDDING_NAME, TensorProto.FLOAT, ["batch", EMBEDDING_DIM])],
        initializer=[numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "bb.axes"),
                     numpy_helper.from_array(weight, "bb.weight")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 10
    set_metadata(proto, _meta("backbone", None, INPUT_NAME))
    return proto.SerializeToString()


def head_onnx(seed: int) -> bytes:
    """``embedding`` -> ``probabilities``: Gemm + Softmax, as the trainer's heads (kilobytes)."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(len(CLASSES), EMBEDDING_DIM)).astype(np.float32)
    bias = rng.normal(size=(len(CLASSES),)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", [EMBEDDING_NAME, "head.weight", "head.bias"], ["head.logits"], transB=1),
         helper.make_node("Softmax", ["head.logits"], [OUTPUT_NAME], axis=-1)],
        "fleet_head",
        [helper.make_tensor_value_info(EMBEDDING_NAME, TensorProto.FLOAT, ["batch", EMBEDDING_DIM])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(CLASSES)])],
        initializer=[numpy_helper.from_array(weight, "head.weight"), numpy_helper.from_array(bias, "head.bias")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 10
    set_metadata(proto, _meta("head", CLASSES, EMBEDDING_NAME))
    return proto.SerializeToString()


@dataclass(frozen=True)
class Registered:
    version: int
    full_bytes: int
    head_bytes: int
    backbone_bytes: int


def register_candidate(core_dir: Path, seed: int, dataset_version: int = 1) -> Registered:
    """A new candidate (head `seed` on the tiny backbone) in the registry of the core whose data
    folder is `core_dir`: the same database, object store and signing key the running core
    uses, as its trainer would register one (`dataset_version`: what it names as its training
    data; the bench's gate is off and reads none). Not promoted: the bench promotes it through the
    core's HTTP API, so the core itself tells the sites."""
    from edge2core.common.signing import Signer
    from edge2core.config import CoreSettings
    from edge2core.core.db import storage
    from edge2core.core.deliver.registry import ModelRegistry

    settings = CoreSettings(data_dir=core_dir)
    registry = ModelRegistry(storage.object_store(settings), storage.database(settings),
                             signer=Signer.load_or_create(core_dir / "keys"))
    backbone, head = backbone_onnx(), head_onnx(seed)
    full = compose_onnx(backbone, head)
    info = registry.register(full, dataset_version=dataset_version, classes=list(CLASSES), metrics={},
                             params={"bench": "fleet"}, promote=False,
                             extra_artifacts={"head": head, "backbone": backbone},
                             lineage={"backbone": BACKBONE_ID})
    return Registered(info.version, len(full), len(head), len(backbone))
