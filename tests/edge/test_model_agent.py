from __future__ import annotations

import os
from pathlib import Path

from edge2core.edge.model_agent import prune_models


def test_prune_keeps_the_live_model_and_the_newest_others(tmp_path: Path) -> None:
    paths = []
    for version in range(1, 7):
        path = tmp_path / f"{version}-abc.onnx"
        path.write_bytes(b"x")
        os.utime(path, (version, version))
        paths.append(path)
    live = paths[1]  # rolled back to version 2: it must survive although it is old
    removed = prune_models(tmp_path, live=live, keep=3)
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == [
        "2-abc.onnx", "4-abc.onnx", "5-abc.onnx", "6-abc.onnx"]
    assert sorted(p.name for p in removed) == ["1-abc.onnx", "3-abc.onnx"]
