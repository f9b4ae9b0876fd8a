"""Export backbone + linear head as ONE self-contained ONNX file for the edge.

Graph: input ``image`` float32 [N, 3, 224, 224] (dynamic batch ``N``, already
preprocessed with ``edge2core.common.preprocess``) -> output ``probabilities`` float32
[N, C] = softmax(head(backbone(image))).

Exporter: ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based exporter, the
default in torch >= 2.9; needs onnxscript).  Gotchas handled here:

* ``external_data`` defaults to True in torch 2.13, which writes weights to a ``.data``
  sidecar; we never let torch write the file: we take the in-memory ``ModelProto``
  (``f=None``), add the metadata and serialise it ourselves as one protobuf (the model is
  ~13 MB, far from the 2 GB protobuf limit), so the file can be loaded from bytes;
* dynamic batch needs ``dynamic_shapes`` with a ``torch.export.Dim`` and an example batch
  of size >= 2 (size-1 dims get specialised);
* opset: the dynamo exporter implements opset >= 18 only.  Asking it for 17 makes it
  export 18 and try to down-convert, which fails for ``Pad`` ("No Adapter To Version $17
  for Pad"; the same-padding convolutions of EfficientNet use Pad), prints a traceback
  and silently leaves opset 18.  So the default here is 18 and lower values are refused.
  ONNX Runtime supports opset 18 since 1.14 (the edge requires >= 1.17).  The legacy
  TorchScript exporter (``dynamo=False``) can still write opset 17 but is deprecated
  ("will be removed") and gives a 449-node graph instead of 94 nodes;
* the exporter logs warnings about torchvision ops not being registered (torchvision is
  deliberately not installed): harmless, silenced during the export.

Metadata (``metadata_props``): ``classes`` (JSON list of class names, index = output
column), ``backbone`` (``BACKBONE_ID``), plus ``image_size``, ``normalization``,
``input_name``, ``output_name`` and ``format_version``.  ``read_onnx_metadata`` reads them
back with onnxruntime only (the edge has no ``onnx`` package).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edge2core.common.onnx_models import (  # noqa: F401 (compose_onnx is part of this API)
    EMBEDDING_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    compose_onnx,
)
from edge2core.common.onnx_models import (
    set_metadata as _set_metadata,
)
from edge2core.common.preprocess import IMAGE_SIZE, NORMALIZATION
from edge2core.core.train.backbone import BACKBONE_ID
from edge2core.core.train.head import HeadModel

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "export_onnx",
    "read_onnx_metadata",
]

FORMAT_VERSION = "1"
MIN_OPSET = 18


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: HeadModel) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(head.embedding_dim, head.num_classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(head.weight))
            self.head.bias.copy_(torch.from_numpy(head.bias))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.backbone(image)), dim=-1)


def _to_model_proto(model: nn.Module, opset: int, output_name: str = OUTPUT_NAME) -> Any:
    example = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=4096)
    onnx_logger = logging.getLogger("torch.onnx")
    old_level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"image": {0: batch}},
                optimize=True,
                verbose=False,
            )
    finally:
        onnx_logger.setLevel(old_level)
    if program is None:  # only without dynamo=True
        raise RuntimeError("the ONNX exporter returned no program")
    proto = program.model_proto
    got = {o.domain: o.version for o in proto.opset_import}.get("", None)
    if got != opset:
        raise RuntimeError(f"exporter produced opset {got}, asked for {opset}")
    return proto


def export_onnx(
    backbone: nn.Module, head: HeadModel, path: Path, opset: int = MIN_OPSET
) -> None:
    """Write ``softmax(head(backbone(image)))`` to ``path`` as one self-contained ONNX file.

    ``opset`` must be >= 18 (see the module docstring).  Written atomically (temporary file
    + rename).  Raises if the graph does not have the expected input / output or if the
    file would need external data.
    """
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} < {MIN_OPSET}: the torch.export-based ONNX exporter cannot target it "
            "(no Pad down-conversion); ONNX Runtime >= 1.14 runs opset 18"
        )

    path = Path(path)
    backbone.eval()
    model = _Classifier(backbone, head).eval()
    proto = _to_model_proto(model, opset)

    _check_classifier_graph(proto)
    meta = {
        "classes": json.dumps(list(head.classes)),
        "backbone": BACKBONE_ID,
        "image_size": str(IMAGE_SIZE),
        "normalization": NORMALIZATION,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "format_version": FORMAT_VERSION,
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "edge2core"

    _write_file(path, proto.SerializeToString())


def _check_classifier_graph(proto: Any) -> None:
    """The edge looks the tensors up by name and loads the file from bytes: refuse anything else."""
    if [i.name for i in proto.graph.input] != [INPUT_NAME]:
        raise RuntimeError(
            f"unexpected ONNX inputs {[i.name for i in proto.graph.input]}"
        )
    if [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise RuntimeError(
            f"unexpected ONNX outputs {[o.name for o in proto.graph.output]}"
        )
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"initializer {init.name} uses external data")


def _write_file(path: Path, data: bytes) -> None:
    """Temporary file + rename: a reader never sees half a model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_onnx_metadata(path_or_bytes: Path | str | bytes) -> dict[str, Any]:
    """Metadata of an exported model, via onnxruntime only.

    Returns the custom metadata map with ``classes`` decoded to a ``list[str]``; the other
    values are strings.
    """
    source: str | bytes = (
        bytes(path_or_bytes)
        if isinstance(path_or_bytes, (bytes, bytearray))
        else str(path_or_bytes)
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return decode_metadata(session.get_modelmeta().custom_metadata_map)


def decode_metadata(custom_metadata_map: dict[str, str]) -> dict[str, Any]:
    """Decode an ``InferenceSession.get_modelmeta().custom_metadata_map``."""
    meta: dict[str, Any] = dict(custom_metadata_map)
    if "classes" in meta:
        meta["classes"] = [str(c) for c in json.loads(meta["classes"])]
    return meta


# --------------------------------------------------------------------------- split artefacts
#
# The fast path never re-exports through torch: the backbone is exported ONCE per backbone
# version (input ``image`` -> output ``embedding``), the head is written directly as a tiny
# ONNX graph (input ``embedding`` -> output ``probabilities``: Gemm + Softmax), and the model
# the edge runs is the two composed with ``onnx.compose.merge_models``.  Composition copies
# protobufs (well under a second); a torch export takes tens of seconds on 2 cores.



class _Embedder(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(image)


def _metadata(classes: list[str] | None, backbone_version: str, extra: dict[str, str] | None) -> dict[str, str]:
    meta = {
        "backbone": backbone_version,
        "image_size": str(IMAGE_SIZE),
        "normalization": NORMALIZATION,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "format_version": FORMAT_VERSION,
    }
    if classes is not None:
        meta["classes"] = json.dumps(list(classes))
    meta.update(extra or {})
    return meta


def export_backbone_onnx(
    backbone: nn.Module, backbone_version: str = BACKBONE_ID, opset: int = MIN_OPSET
) -> bytes:
    """The backbone alone as ONNX bytes: ``image`` [N,3,224,224] -> ``embedding`` [N,1280].

    Done once per backbone version (tens of seconds on 2 cores); the result is cached in the
    object store by the trainer and reused for embeddings and for every composed model.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}")
    backbone.eval()
    proto = _to_model_proto(_Embedder(backbone).eval(), opset, EMBEDDING_NAME)
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"initializer {init.name} uses external data")
    _set_metadata(proto, _metadata(None, backbone_version, {"role": "backbone"}))
    return proto.SerializeToString()


def head_onnx(
    head: HeadModel,
    backbone_version: str = BACKBONE_ID,
    *,
    ir_version: int | None = None,
    opset: int = MIN_OPSET,
    extra_meta: dict[str, str] | None = None,
) -> bytes:
    """The head alone: ``embedding`` [N,D] float32 -> ``probabilities`` [N,C] (a few kB per
    class).  Built directly with ``onnx.helper``: no torch, milliseconds."""
    weight = numpy_helper.from_array(head.weight, name="head.weight")
    bias = numpy_helper.from_array(head.bias, name="head.bias")
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", [EMBEDDING_NAME, "head.weight", "head.bias"], ["head.logits"],
                             transB=1, name="head_gemm"),
            helper.make_node("Softmax", ["head.logits"], [OUTPUT_NAME], axis=-1, name="head_softmax"),
        ],
        "edge2core_head",
        [helper.make_tensor_value_info(EMBEDDING_NAME, TensorProto.FLOAT, ["batch", head.embedding_dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", head.num_classes])],
        initializer=[weight, bias],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = ir_version if ir_version is not None else min(proto.ir_version, 10)
    meta = _metadata(head.classes, backbone_version, {"role": "head", **(extra_meta or {})})
    meta["input_name"] = EMBEDDING_NAME
    _set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def quantize_backbone_int8(
    backbone_onnx: bytes,
    calibration: Any,
    *,
    method: str = "static",
) -> bytes:
    """INT8 backbone with ONNX Runtime's quantiser.

    ``static`` (default): QDQ, per-channel weights, activations calibrated (MinMax) on
    ``calibration`` (float32 [N,3,224,224] preprocessed train photos);  ``dynamic``:
    ``quantize_dynamic`` (weights only, no calibration).  The output ``embedding`` stays
    float32, so an INT8 backbone composes with the same float head.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        pre = Path(tmp) / "pre.onnx"
        dst = Path(tmp) / "int8.onnx"
        src.write_bytes(backbone_onnx)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation only
            pre = src
        if method == "dynamic":
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        elif method == "static":
            _quantize_static(pre, dst, calibration)
        else:
            raise ValueError(f"unknown quantisation method {method!r}")
        proto = onnx.load(str(dst))
    original = onnx.load_from_string(backbone_onnx)
    meta = {p.key: p.value for p in original.metadata_props}
    meta["quantization"] = f"int8-{method}"
    _set_metadata(proto, meta)
    return proto.SerializeToString()


def _quantize_static(src: Path, dst: Path, calibration: Any) -> None:
    """QDQ, per-channel INT8 weights, UINT8 activations whose ranges are measured on the
    calibration photos, fed 8 at a time."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    data = np.asarray(calibration, dtype=np.float32)
    if data.ndim != 4 or data.shape[0] == 0:
        raise ValueError("static quantisation needs a calibration batch [N,3,224,224]")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(range(0, data.shape[0], 8))

        def get_next(self) -> dict[str, Any] | None:
            start = next(self._it, None)
            return None if start is None else {INPUT_NAME: data[start : start + 8]}

    quantize_static(
        str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
        per_channel=True, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def ort_session(model: bytes | str | Path, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session (``threads`` 0 = ORT's default)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
