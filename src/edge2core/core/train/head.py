"""The thin training loop: frozen-backbone embeddings + a linear (softmax) head.

* ``embed``: PIL images -> (N, 1280) float32 embeddings with the frozen backbone;
* ``train_head``: multinomial logistic regression on the embeddings (full-batch L-BFGS in
  torch, deterministic), with the feature standardisation folded into the returned weights;
* ``evaluate`` / ``predict_proba``: numpy only, on a ``HeadModel``.

The head computes ``logits = embeddings @ weight.T + bias`` on *raw* embeddings, so the
edge model is simply ``softmax(head(backbone(preprocess(image))))``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from edge2core.common.preprocess import preprocess_batch
from edge2core.core.train.backbone import EMBEDDING_DIM

__all__ = [
    "HeadModel",
    "embed",
    "evaluate",
    "predict_proba",
    "train_head",
]


# --------------------------------------------------------------------------- embeddings


def embed(
    backbone: torch.nn.Module,
    images: Sequence[Image.Image],
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed images with the (frozen, eval-mode) backbone.

    Returns a C-contiguous float32 array (N, D).  ``progress`` is called after each batch
    with the number of images embedded so far (cumulative).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
    except StopIteration:  # pragma: no cover - a backbone always has parameters
        device = torch.device("cpu")
    chunks: list[np.ndarray] = []
    done = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = preprocess_batch(images[start : start + batch_size])
            out = backbone(torch.from_numpy(batch).to(device))
            chunks.append(out.float().cpu().numpy())
            done += batch.shape[0]
            if progress is not None:
                progress(done)
    if not chunks:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


# --------------------------------------------------------------------------- the head


@dataclass
class HeadModel:
    """Linear softmax head on raw embeddings: ``softmax(x @ weight.T + bias)``."""

    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray  # (C,) float32
    classes: list[str]
    info: dict[str, Any] = field(
        default_factory=dict
    )  # training hyper-parameters, losses

    def __post_init__(self) -> None:
        self.weight = np.ascontiguousarray(self.weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(self.bias, dtype=np.float32)
        self.classes = [str(c) for c in self.classes]
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(
                f"bad head shapes: weight {self.weight.shape}, bias {self.bias.shape}"
            )
        if len(self.classes) != self.weight.shape[0]:
            raise ValueError(
                f"{len(self.classes)} class names for {self.weight.shape[0]} outputs"
            )

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.weight.shape[1])

    def save(self, path: Path | str) -> None:
        """Save as .npz (weight, bias, classes and info as JSON)."""
        with open(path, "wb") as f:
            np.savez(
                f,
                weight=self.weight,
                bias=self.bias,
                classes=np.array(json.dumps(self.classes)),
                info=np.array(json.dumps(self.info, default=str)),
            )

    @classmethod
    def load(cls, path: Path | str) -> HeadModel:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                weight=z["weight"],
                bias=z["bias"],
                classes=json.loads(str(z["classes"])),
                info=json.loads(str(z["info"])) if "info" in z else {},
            )


def train_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    *,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-3,
    seed: int = 0,
    standardize: bool = True,
) -> HeadModel:
    """Fit a multinomial logistic regression head on frozen embeddings.

    Full-batch L-BFGS (strong Wolfe line search) on the mean cross-entropy plus
    ``weight_decay / 2 * ||W||^2`` (L2 on the weights of the *standardised* features, not on
    the bias).  ``epochs`` is the maximum number of L-BFGS iterations (each is >= 1 full
    pass over the data), ``lr`` the L-BFGS step size.  The problem is convex; the weights
    start at zero, so the result is deterministic for a given input and thread count
    (``seed`` seeds torch's RNG in a local fork for any stochastic part, kept for API
    stability).  If ``standardize``, features are scaled with the training mean / std and
    that affine map is folded into the returned ``weight`` / ``bias``.
    """
    x_np = np.asarray(embeddings, dtype=np.float32)
    y_np = np.asarray(labels)
    _check_head_inputs(x_np, y_np, len(classes), epochs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        w_raw, b_raw, n_iter, final_loss = _fit_lbfgs(x_np, y_np, len(classes), epochs=epochs, lr=lr,
                                                      weight_decay=weight_decay, standardize=standardize)
    info = {
        "method": "lbfgs-logreg",
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "standardize": standardize,
        "n_train": int(x_np.shape[0]),
        "iterations": n_iter,
        "train_loss": final_loss,
    }
    return HeadModel(
        weight=w_raw.float().numpy(),
        bias=b_raw.float().numpy(),
        classes=list(classes),
        info=info,
    )


def _check_head_inputs(x_np: np.ndarray, y_np: np.ndarray, n_classes: int, epochs: int) -> None:
    """Refuse inputs L-BFGS would fit silently into nonsense (wrong shapes, labels out of range)."""
    if x_np.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got {x_np.shape}")
    if y_np.shape != (x_np.shape[0],):
        raise ValueError(
            f"labels must be (N,), got {y_np.shape} for {x_np.shape[0]} embeddings"
        )
    if x_np.shape[0] == 0:
        raise ValueError("no training examples")
    if not np.issubdtype(y_np.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {y_np.dtype}")
    if n_classes < 2:
        raise ValueError("need at least 2 classes")
    if y_np.min() < 0 or y_np.max() >= n_classes:
        raise ValueError(
            f"labels must be in [0, {n_classes}), got [{y_np.min()}, {y_np.max()}]"
        )
    if epochs < 1:
        raise ValueError("epochs must be >= 1")


def _fit_lbfgs(
    x_np: np.ndarray, y_np: np.ndarray, n_classes: int, *, epochs: int, lr: float,
    weight_decay: float, standardize: bool,
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """(weight, bias) on raw embeddings (float64), L-BFGS iterations, final train loss.

    In float64 from zero weights: the problem is convex, so the result depends only on the
    data and the thread count."""
    x = torch.from_numpy(x_np).double()
    y = torch.from_numpy(y_np.astype(np.int64))
    if standardize:
        mu = x.mean(dim=0)
        sigma = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    else:
        mu = torch.zeros(x.shape[1], dtype=torch.float64)
        sigma = torch.ones(x.shape[1], dtype=torch.float64)
    xs = (x - mu) / sigma

    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=lr,
        max_iter=epochs,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w.T + b, y)
        loss = loss + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final_loss = float(torch.nn.functional.cross_entropy(xs @ w.T + b, y))
        # fold the standardisation: (x - mu) / sigma @ w.T + b == x @ (w / sigma).T + b'
        w_raw = w / sigma
        b_raw = b - w_raw @ mu
    return w_raw, b_raw, int(opt.state[w].get("n_iter", 0)), final_loss


# --------------------------------------------------------------------------- inference / metrics


def predict_logits(head: HeadModel, embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != head.embedding_dim:
        raise ValueError(f"embeddings must be (N, {head.embedding_dim}), got {x.shape}")
    return x @ head.weight.T + head.bias


def predict_proba(head: HeadModel, embeddings: np.ndarray) -> np.ndarray:
    """Class probabilities (N, C) float32 (softmax of the head's logits)."""
    z = predict_logits(head, embeddings).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


def evaluate(
    head: HeadModel, embeddings: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Metrics on labelled embeddings: ``n``, ``top1``, ``top5`` (when C >= 5), ``nll``
    (mean negative log-likelihood) and ``mean_class_top1`` (top-1 averaged over the
    classes present in ``labels``)."""
    y = np.asarray(labels).astype(np.int64)
    n = int(y.shape[0])
    out: dict[str, Any] = {"n": n}
    if n == 0:
        out.update(top1=float("nan"), nll=float("nan"), mean_class_top1=float("nan"))
        if head.num_classes >= 5:
            out["top5"] = float("nan")
        return out
    p = predict_proba(head, embeddings)
    if p.shape[0] != n:
        raise ValueError(f"{p.shape[0]} embeddings for {n} labels")
    pred = p.argmax(axis=1)
    correct = pred == y
    out["top1"] = float(correct.mean())
    if head.num_classes >= 5:
        top5 = np.argpartition(-p, 4, axis=1)[:, :5]
        out["top5"] = float((top5 == y[:, None]).any(axis=1).mean())
    out["nll"] = float(-np.log(np.clip(p[np.arange(n), y], 1e-12, None)).mean())
    out["mean_class_top1"] = float(
        np.mean([correct[y == c].mean() for c in np.unique(y)])
    )
    return out
