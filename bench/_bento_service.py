"""The peer for bench/inference.py: the same ONNX model served by BentoML, as a user would.

Runs in its own virtual environment (`.venv-bench-peer/`, made by bench/inference.py), so it
imports nothing from edge2core: the preprocessing below copies the steps of
`edge2core.common.preprocess` (EXIF orientation, RGB, shorter side 256 bilinear, centre crop
224, (x - 127) / 128, HWC -> CHW float32).

    E2C_PEER_MODEL=model.onnx E2C_PEER_THREADS=1 \
        bentoml serve _bento_service:PeerRecognizer --host 127.0.0.1 --port 3000

POST /recognize with the photo as the raw body; answers {"top_k": [{"sku", "confidence"}], ...}.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
import onnxruntime as ort
from bentoml.validators import ContentType
from PIL import Image, ImageOps

RESIZE_SHORTER = 256
IMAGE_SIZE = 224


def preprocess(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    short = min(w, h)
    if w <= h:
        new_w, new_h = RESIZE_SHORTER, max(RESIZE_SHORTER, round(h * RESIZE_SHORTER / short))
    else:
        new_w, new_h = max(RESIZE_SHORTER, round(w * RESIZE_SHORTER / short)), RESIZE_SHORTER
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample=Image.Resampling.BILINEAR)
    left, top = (new_w - IMAGE_SIZE) // 2, (new_h - IMAGE_SIZE) // 2
    image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    x = (np.asarray(image, dtype=np.float32) - np.float32(127.0)) / np.float32(128.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


@bentoml.service(workers=int(os.environ.get("E2C_PEER_WORKERS", "1")))
class PeerRecognizer:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("E2C_PEER_THREADS", "1"))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            os.environ["E2C_PEER_MODEL"], options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.classes = json.loads(self.session.get_modelmeta().custom_metadata_map["classes"])
        self.top_k = int(os.environ.get("E2C_PEER_TOPK", "3"))

    @bentoml.api
    def recognize(self, photo: Annotated[Path, ContentType("image/jpeg")], /) -> dict:
        start = time.perf_counter()
        with Image.open(photo) as image:
            image.load()
            tensor = preprocess(image)
        probs = self.session.run(None, {self.input_name: tensor})[0][0]
        order = np.argsort(-probs)[: self.top_k]
        return {
            "top_k": [{"sku": self.classes[i], "confidence": float(probs[i])} for i in order],
            "latency_ms": (time.perf_counter() - start) * 1000,
        }

    @bentoml.api
    def ping(self) -> str:
        return "ok"
