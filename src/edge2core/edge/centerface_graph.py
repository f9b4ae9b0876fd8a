"""CenterFace's published ONNX graph made usable at any image size, without the `onnx` package.

The graph declares a fixed 10x3x32x32 input. `dynamic_centerface` makes batch, height and
width symbolic (what ``onnx.tools.update_model_dims`` would do) by rewriting the protobuf wire
format directly, so an edge install needs only ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Iterable


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: memoryview) -> Iterable[tuple[int, int, memoryview, memoryview]]:
    """Protobuf wire-format fields: (number, wire type, raw tag+value bytes, value bytes)."""
    pos, n = 0, len(buf)
    while pos < n:
        start = pos
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            vstart = pos
            _, pos = _varint(buf, pos)
        elif wt == 1:
            vstart, pos = pos, pos + 8
        elif wt == 2:
            length, vstart = _varint(buf, pos)
            pos = vstart + length
        elif wt == 5:
            vstart, pos = pos, pos + 4
        else:  # groups are not used by ONNX
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, buf[start:pos], buf[vstart:pos]


def _len_field(num: int, payload: bytes) -> bytes:
    return _enc_varint(num << 3 | 2) + _enc_varint(len(payload)) + payload


def _field_str(buf: memoryview, num: int) -> str | None:
    for n, wt, _, val in _fields(buf):
        if n == num and wt == 2:
            return bytes(val).decode()
    return None


def _symbolic_value_info(vi: memoryview, names: dict[int, str]) -> bytes:
    """ValueInfoProto with the tensor dims at the given indices made symbolic (dim_param)."""

    def rewrite(buf: memoryview, path: tuple[int, ...]) -> bytes:
        out = bytearray()
        dim_index = 0
        for num, wt, raw, val in _fields(buf):
            if wt == 2 and path and num == path[0]:
                out += _len_field(num, rewrite(val, path[1:]))
            elif wt == 2 and not path and num == 1:  # TensorShapeProto.dim
                if dim_index in names:
                    out += _len_field(1, _len_field(2, names[dim_index].encode()))
                else:
                    out += raw
                dim_index += 1
            else:
                out += raw
        return bytes(out)

    # ValueInfoProto.type(2) -> TypeProto.tensor_type(1) -> Tensor.shape(2) -> dims
    return rewrite(vi, (2, 1, 2))


def dynamic_centerface(model: bytes) -> bytes:
    """The published CenterFace graph declares a fixed 10x3x32x32 input: make batch, height and
    width symbolic (what ``onnx.tools.update_model_dims`` would do, without needing ``onnx``),
    drop initializers listed as graph inputs (lets ONNX Runtime fold them) and stale shape
    hints (value_info)."""
    buf = memoryview(model)
    out = bytearray()
    for num, wt, raw, val in _fields(buf):
        if num != 7 or wt != 2:  # ModelProto.graph
            out += raw
            continue
        graph_fields = list(_fields(val))
        inits = {_field_str(v, 8) for n, w, _, v in graph_fields if n == 5 and w == 2}
        graph = bytearray()
        for gnum, gwt, graw, gval in graph_fields:
            if gnum == 11 and gwt == 2:  # input
                name = _field_str(gval, 1)
                if name in inits:
                    continue
                graph += _len_field(11, _symbolic_value_info(gval, {0: "B", 2: "H", 3: "W"}))
            elif gnum == 12 and gwt == 2:  # output
                graph += _len_field(12, _symbolic_value_info(gval, {0: "B", 2: "h", 3: "w"}))
            elif gnum == 13:  # value_info: optional hints, fixed to 32x32 here
                continue
            else:
                graph += graw
        out += _len_field(7, bytes(graph))
    return bytes(out)
