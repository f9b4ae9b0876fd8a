"""ONNX model files as the edge runs them: names of the interface and composing a model from
its backbone and head.

Needs only the `onnx` package (no torch), so an edge site can rebuild a full model from a
backbone it already holds and a new head of a few kilobytes (delta delivery), and check the
result against the registry's sha256 of the full file.
"""

from __future__ import annotations

from typing import Any

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
EMBEDDING_NAME = "embedding"


def set_metadata(proto: Any, meta: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    proto.producer_name = "edge2core"


def compose_onnx(
    backbone_onnx: bytes | Any,
    head_bytes: bytes,
    *,
    extra_meta: dict[str, str] | None = None,
) -> bytes:
    """backbone (``image`` -> ``embedding``) + head (``embedding`` -> ``probabilities``) as
    ONE self-contained ONNX file in the edge's format (input ``image``, output
    ``probabilities``, ``classes`` metadata).  ``backbone_onnx`` may be bytes or a parsed
    ``ModelProto`` (parse once, compose many)."""
    import onnx
    from onnx import compose

    backbone = (onnx.load_from_string(bytes(backbone_onnx))
                if isinstance(backbone_onnx, bytes | bytearray) else backbone_onnx)
    head = onnx.load_from_string(head_bytes)
    head.ir_version = backbone.ir_version
    head_meta = {p.key: p.value for p in head.metadata_props}
    backbone_meta = {p.key: p.value for p in backbone.metadata_props}
    if head_meta.get("backbone") != backbone_meta.get("backbone"):
        raise ValueError(
            f"head was trained on backbone {head_meta.get('backbone')!r}, "
            f"not {backbone_meta.get('backbone')!r}"
        )
    # merge_models wants both sides on the same opset imports
    opsets = {o.domain: o.version for o in backbone.opset_import}
    for o in head.opset_import:
        if opsets.get(o.domain, o.version) != o.version:
            raise ValueError(f"opset mismatch for domain {o.domain!r}")
    # merge_models refuses differing metadata values: merge bare graphs, then set ours
    saved = list(backbone.metadata_props)
    del backbone.metadata_props[:]
    del head.metadata_props[:]
    try:
        merged = compose.merge_models(backbone, head, io_map=[(EMBEDDING_NAME, EMBEDDING_NAME)])
    finally:
        backbone.metadata_props.extend(saved)
    meta = {k: v for k, v in head_meta.items() if k not in ("role", "input_name")}
    meta.update(role="full", input_name=INPUT_NAME, **(extra_meta or {}))
    set_metadata(merged, meta)
    if [i.name for i in merged.graph.input] != [INPUT_NAME] or [o.name for o in merged.graph.output] != [OUTPUT_NAME]:
        raise RuntimeError("composed model does not have the image -> probabilities interface")
    return merged.SerializeToString()
