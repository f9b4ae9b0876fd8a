"""The full path's optimiser and learning-rate schedule: which parameters learn, and how fast.

AdamW (Loshchilov & Hutter 2019) over the trainable parameters in two groups, the pretrained
backbone and the new classifier, each with its own peak learning rate; the schedule is
one-cycle (Smith & Topin 2019: warm-up to the peak, then cosine annealing towards zero) or
plain cosine annealing, stepped once per training step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["SCHEDULES", "adamw", "lr_scheduler"]

SCHEDULES = ("onecycle", "cosine")


def adamw(backbone: nn.Module, head: nn.Module, lr: float, head_lr_mult: float,
          weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the backbone's trainable parameters at ``lr`` and the classifier's at
    ``lr * head_lr_mult``: a new layer starts at random and may learn faster than the
    pretrained ones it sits on. Frozen parameters (``requires_grad`` False) are left out.
    Raises ValueError if ``head_lr_mult`` is not positive."""
    if head_lr_mult <= 0:
        raise ValueError(f"head_lr_mult must be > 0, not {head_lr_mult}")
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad], "lr": lr},
              {"params": list(head.parameters()), "lr": lr * head_lr_mult}]
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def lr_scheduler(opt: torch.optim.Optimizer, schedule: str, pct_start: float, total: int) -> Any:
    """A per-step schedule over ``total`` steps that peaks at each group's own ``lr``.

    One-cycle needs at least 4 steps (both phases get one); shorter runs anneal by cosine.
    Raises ValueError on an unknown ``schedule``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; one of {', '.join(SCHEDULES)}")
    if schedule == "onecycle" and total >= 4:
        pct = min(0.5, max(pct_start, 2.0 / total))  # both phases need >= 1 step
        peaks = [group["lr"] for group in opt.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=total, pct_start=pct)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
