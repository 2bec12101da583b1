"""Diverging training runs: an early warning, and an error that says where to go back to.

Why: Detectron stops at a NaN loss with only the iteration (``utils/train.py``,
``handle_critical_error``). Its start is also unforgiving of a body other than the ImageNet
``R-50.pkl``: ``cls_score`` is filled with std 0.01, so at iteration 0 the class logits have
std ``0.01 * ||fc7||`` and ``loss_cls ~= log(NUM_CLASSES)`` (4.39 for COCO) only when the
box-head features are as small as an ImageNet body gives. The SGD step on the logits grows
with ``||fc7||^2`` (the features of a minibatch's RoIs are all positive and strongly
correlated), so a body whose features are much larger -- a random or badly calibrated
AffineChannel body, a body converted with the wrong statistics -- starts well above
``log(K)`` and diverges within a few iterations at the recipe's learning rate, in Detectron
too (same fills, same update, no gradient clipping). See ``docs/training.md``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# loss_cls at iteration 0 this far above log(K) means logits with std >~ 1.5 (||fc7|| >~ 150)
START_MARGIN = 1.0


def start_warning(losses: Mapping[str, float], num_classes: int, base_lr: float) -> str | None:
    """The warning for an iteration-0 ``loss_cls`` far above ``log(num_classes)`` (fresh heads)."""
    loss_cls = losses.get("loss_cls")
    if loss_cls is None or not math.isfinite(loss_cls) or loss_cls <= math.log(num_classes) + START_MARGIN:
        return None
    return (f"loss_cls {loss_cls:.2f} at iteration 0 is far above log(NUM_CLASSES) = {math.log(num_classes):.2f}, "
            "what Detectron's cls_score init (std 0.01) gives on the features of an ImageNet-trained body: "
            "this body's features are much larger (is it a trained ImageNet body with its own AffineChannel "
            "statistics?), each SGD step moves the class logits too far, and the run is likely to diverge. "
            f"Start from Detectron's R-50.pkl or a torchvision ResNet-50 (--torchvision_weights), or lower "
            f"SOLVER.BASE_LR (now {base_lr:g}; the linear scaling rule gives 0.02 x images per iteration / 16).")


def first_nonfinite(losses: Mapping[str, float]) -> str | None:
    """The first loss term (in the model's order) that is NaN or infinite."""
    return next((k for k, v in losses.items() if not math.isfinite(float(v))), None)


def nonfinite_message(cur_iter: int, losses: Mapping[str, float], last_good: Path | None, base_lr: float,
                      what: str = "loss") -> str:
    """Detectron's 'Loss is NaN' with the loss term, the last good snapshot and what to do
    (``what="weights"``: the model became non-finite after the update of ``cur_iter``)."""
    term = first_nonfinite(losses) or "loss"
    total = sum(float(v) for v in losses.values())
    detail = f"first non-finite term: {term}; " if what == "loss" else ""
    where = (f"last good checkpoint: {last_good}; rerunning the same command resumes from it"
             if last_good is not None else "no snapshot was written before it")
    return (f"{what} is {'NaN' if math.isnan(total) else 'infinite'} at iteration {cur_iter} ({detail}{where}). "
            f"Lower SOLVER.BASE_LR (now {base_lr:g}) or lengthen SOLVER.WARM_UP_ITERS, "
            "or start from a trained body (see the warning at iteration 0, if any)")


@torch.no_grad()
def parameters_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer is finite (a snapshot must not save a diverged model)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True
