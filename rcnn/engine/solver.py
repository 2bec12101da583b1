"""Detectron's solver: learning-rate schedule, parameter groups and Caffe2's momentum SGD.

Why not ``torch.optim.SGD``: Detectron's update is Caffe2's ``MomentumSGDUpdate``
(``modeling/optimizer.py``), which keeps the learning rate *inside* the momentum buffer::

    g = grad + wd * p        (weights; biases instead get g = 2 * grad and no weight decay)
    v = momentum * v + lr * g
    p = p - v

PyTorch's SGD keeps ``v = momentum * v + g`` and steps ``p -= lr * v``. The two agree while the
learning rate is constant, and after a step change only because Detectron rescales the buffers
by ``new_lr / old_lr`` (``detector.py::_CorrectMomentum``); during the linear warm-up the lr
changes by less than ``SCALE_MOMENTUM_THRESHOLD`` per iteration, nothing is rescaled, and the two
forms differ slightly. ``MomentumSGD`` reproduces Detectron's form, its rescaling rule and its
log lines.

Biases: Detectron scales the bias *gradient* by 2 (``Scale(grad, 2.0)``) and skips weight decay
for every blob in ``model.biases`` (conv/FC ``*_b``); it does not change the learning rate. With
the lr inside the buffer this is the same as a 2x learning rate, and it also doubles what the
buffer holds, exactly as in Caffe2.

Parameters without a gradient in an iteration are still updated with a zero gradient (weight
decay and momentum keep acting), because in Detectron every trainable blob has a gradient blob
every iteration.

``lr_at_iter`` is ``utils/lr_policy.py::get_lr_at_iter``: the same Python/NumPy float64
arithmetic, returned as ``np.float32``. Detectron has no ``steps_with_relative_lrs`` policy; an
unknown policy raises ``NotImplementedError`` as there.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rcnn.config import CfgNode
from rcnn.naming import key_to_blob

logger = logging.getLogger(__name__)

_LR_EPS = 1e-10  # detector.py::_get_lr_change_ratio
_MIN_LR_TO_SCALE = 1e-7  # detector.py::_SetNewLr: no rescaling from a zero (initial) lr


# ---------------------------------------------------------------------------------------------
# Learning-rate policies (utils/lr_policy.py)
# ---------------------------------------------------------------------------------------------
def get_step_index(cfg: CfgNode, cur_iter: int) -> int:
    """Index of the ``SOLVER.STEPS`` interval that contains ``cur_iter``."""
    steps = list(cfg.SOLVER.STEPS)
    if not steps or steps[0] != 0:
        raise ValueError(f"SOLVER.STEPS must start at 0 (got {steps}); Detectron asserts this")
    bounds = steps + [cfg.SOLVER.MAX_ITER]
    for ind, step in enumerate(bounds):
        if cur_iter < step:
            return ind - 1
    return len(bounds) - 2  # at or past MAX_ITER: the last step, as Detectron's loop ends there


def _steps_with_decay(cfg: CfgNode, cur_iter: int) -> float:
    return cfg.SOLVER.BASE_LR * cfg.SOLVER.GAMMA ** get_step_index(cfg, cur_iter)


def _steps_with_lrs(cfg: CfgNode, cur_iter: int) -> float:
    return cfg.SOLVER.LRS[get_step_index(cfg, cur_iter)]


def _step(cfg: CfgNode, cur_iter: int) -> float:
    return cfg.SOLVER.BASE_LR * cfg.SOLVER.GAMMA ** (cur_iter // cfg.SOLVER.STEP_SIZE)


def _cosine_decay(cfg: CfgNode, cur_iter: int) -> float:
    iter_frac = float(cur_iter) / cfg.SOLVER.MAX_ITER
    return cfg.SOLVER.BASE_LR * (0.5 * (np.cos(np.pi * iter_frac) + 1))


def _exp_decay(cfg: CfgNode, cur_iter: int) -> float:
    iter_frac = float(cur_iter) / cfg.SOLVER.MAX_ITER
    return cfg.SOLVER.BASE_LR * np.exp(iter_frac * np.log(cfg.SOLVER.GAMMA))


LR_POLICIES: dict[str, Callable[[CfgNode, int], float]] = {
    "steps_with_decay": _steps_with_decay,
    "steps_with_lrs": _steps_with_lrs,
    "step": _step,
    "cosine_decay": _cosine_decay,
    "exp_decay": _exp_decay,
}


def lr_at_iter(cfg: CfgNode, cur_iter: int) -> np.float32:
    """Detectron's learning rate at 0-based iteration ``cur_iter``, warm-up included."""
    policy = LR_POLICIES.get(cfg.SOLVER.LR_POLICY)
    if policy is None:
        raise NotImplementedError(f"Unknown LR policy: {cfg.SOLVER.LR_POLICY}")
    lr = policy(cfg, cur_iter)
    if cur_iter < cfg.SOLVER.WARM_UP_ITERS:
        method = cfg.SOLVER.WARM_UP_METHOD
        if method == "constant":
            warmup_factor = cfg.SOLVER.WARM_UP_FACTOR
        elif method == "linear":
            alpha = cur_iter / cfg.SOLVER.WARM_UP_ITERS
            warmup_factor = cfg.SOLVER.WARM_UP_FACTOR * (1 - alpha) + alpha
        else:
            raise KeyError(f"Unknown SOLVER.WARM_UP_METHOD: {method}")
        lr *= warmup_factor
    return np.float32(lr)


def lr_change_ratio(cur_lr: float, new_lr: float) -> float:
    """``detector.py::_get_lr_change_ratio``: the factor of change, in either direction."""
    return max(new_lr / max(cur_lr, _LR_EPS), cur_lr / max(new_lr, _LR_EPS))


# ---------------------------------------------------------------------------------------------
# Parameter groups (modeling/optimizer.py::add_single_gpu_param_update_ops)
# ---------------------------------------------------------------------------------------------
def param_groups(model: nn.Module, cfg: CfgNode) -> list[dict[str, Any]]:
    """Trainable parameters split as Detectron updates them.

    Only parameters with ``requires_grad`` (frozen stages are already excluded by
    ``TRAIN.FREEZE_AT``; AffineChannel and ``kps_score`` are buffers). A blob named ``*_b`` is a
    bias: gradient x2, no weight decay (GroupNorm's ``*_gn_b`` too: Detectron tests ``model.biases``
    before ``model.gn_params``); GroupNorm's ``*_gn_s`` gets ``SOLVER.WEIGHT_DECAY_GN``; ``*_w`` gets
    ``SOLVER.WEIGHT_DECAY``. Any other trainable blob is refused.
    """
    weights: list[Tensor] = []
    biases: list[Tensor] = []
    gn_scales: list[Tensor] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        blob = key_to_blob(name)
        if blob.endswith("_b"):
            biases.append(param)
        elif blob.endswith("_gn_s"):
            gn_scales.append(param)
        elif blob.endswith("_w"):
            weights.append(param)
        else:
            raise ValueError(f"{name} ({blob}) is neither a weight (_w) nor a bias (_b); "
                             "Detectron's update rule for it is not implemented")
    groups = [{"params": weights, "weight_decay": float(cfg.SOLVER.WEIGHT_DECAY), "grad_scale": 1.0},
              {"params": biases, "weight_decay": 0.0, "grad_scale": 2.0}]
    if gn_scales:
        groups.append({"params": gn_scales, "weight_decay": float(cfg.SOLVER.WEIGHT_DECAY_GN), "grad_scale": 1.0})
    return groups


# ---------------------------------------------------------------------------------------------
# Caffe2 MomentumSGDUpdate with Detectron's learning-rate handling
# ---------------------------------------------------------------------------------------------
class MomentumSGD(torch.optim.Optimizer):
    """``v = momentum * v + lr * (grad_scale * grad + weight_decay * p); p -= v`` per group.

    The learning rate is shared by all groups and changed only through ``set_lr`` (Detectron's
    ``UpdateWorkspaceLr``), which rescales the buffers on large changes. It starts at 0, like
    Detectron's ``lr`` blob, so the first ``set_lr`` never rescales. Buffers start at zero.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 0.0,
                 momentum: float = 0.9, weight_decay: float = 0.0, grad_scale: float = 1.0, *,
                 scale_momentum: bool = True, scale_momentum_threshold: float = 1.1,
                 log_lr_change_threshold: float = 1.1) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0 (got {lr}, {momentum}, {weight_decay})")
        defaults = {"lr": float(np.float32(lr)), "momentum": momentum, "weight_decay": weight_decay,
                    "grad_scale": grad_scale}
        super().__init__(params, defaults)
        for group in self.param_groups:
            frozen = sum(not p.requires_grad for p in group["params"])
            if frozen:
                raise ValueError(f"{frozen} parameter(s) without requires_grad given to the optimizer; "
                                 "frozen parameters must not be updated")
        self.scale_momentum = scale_momentum
        self.scale_momentum_threshold = scale_momentum_threshold
        self.log_lr_change_threshold = log_lr_change_threshold

    @property
    def lr(self) -> float:
        """The current learning rate (a float32 value, as Detectron's ``lr`` blob)."""
        return self.param_groups[0]["lr"]

    def restore_lr(self, lr: float) -> None:
        """Put back the learning rate of a saved state, without logging or rescaling."""
        for group in self.param_groups:
            group["lr"] = float(np.float32(lr))

    def set_lr(self, new_lr: float, cur_iter: int | None = None) -> float:
        """Detectron's ``UpdateWorkspaceLr``: set the lr; when it changes by more than
        ``scale_momentum_threshold`` (either direction) from a nonzero lr, multiply every
        momentum buffer by ``float32(new_lr) / float32(old_lr)``. Returns the float32 lr."""
        cur = np.float32(self.lr)
        new = np.float32(new_lr)
        if cur == new:
            return float(new)
        ratio = lr_change_ratio(float(cur), float(new))
        if ratio > self.log_lr_change_threshold:
            at = f" at iter {cur_iter:d}" if cur_iter is not None else ""
            logger.info("Changing learning rate %.6f -> %.6f%s", cur, new, at)
        self.restore_lr(new)
        if self.scale_momentum and cur > _MIN_LR_TO_SCALE and ratio > self.scale_momentum_threshold:
            self._correct_momentum(new / cur)
        return float(new)

    @torch.no_grad()
    def _correct_momentum(self, correction: np.float32) -> None:
        """``_CorrectMomentum``: keep ``v`` (which holds lr * grad) in scale with the new lr."""
        logger.info("Scaling update history by %.6f (new lr / old lr)", correction)
        buffers = [s["momentum_buffer"] for s in self.state.values() if "momentum_buffer" in s]
        for (bucket,) in _by_device_and_dtype(buffers):
            torch._foreach_mul_(bucket, float(correction))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Caffe2 ``MomentumSGDUpdate`` for every parameter (missing gradients count as 0)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            grads: list[Tensor] = []
            bufs: list[Tensor] = []
            for p in params:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                if grad.is_sparse:
                    raise RuntimeError("MomentumSGD does not support sparse gradients")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                grads.append(grad)
                bufs.append(state["momentum_buffer"])
            for ps, gs, vs in _by_device_and_dtype(params, grads, bufs):
                self._update(ps, gs, vs, group)
        return loss

    @staticmethod
    def _update(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], group: dict[str, Any]) -> None:
        # Detectron: Scale(grad, 2) for biases, WeightedSum(grad, 1, p, wd) for weights, then
        # MomentumSGDUpdate: v = lr * g + momentum * v; p -= v. New tensors keep .grad intact.
        if group["grad_scale"] != 1.0:
            grads = torch._foreach_mul(grads, group["grad_scale"])
        if group["weight_decay"] != 0.0:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        torch._foreach_mul_(bufs, group["momentum"])
        torch._foreach_add_(bufs, grads, alpha=group["lr"])
        torch._foreach_sub_(params, bufs)


def _by_device_and_dtype(*lists: list[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Parallel lists split by the device and dtype of the first (``_foreach`` kernels take
    one device and dtype per call), order kept within each bucket."""
    buckets: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], ...]] = {}
    for items in zip(*lists):
        key = (items[0].device, items[0].dtype)
        if key not in buckets:
            buckets[key] = tuple([] for _ in lists)
        for bucket, t in zip(buckets[key], items):
            bucket.append(t)
    return list(buckets.values())


def build_optimizer(model: nn.Module, cfg: CfgNode) -> MomentumSGD:
    """Detectron's optimizer for ``model`` from ``cfg.SOLVER`` (lr 0 until the first ``set_lr``)."""
    solver = cfg.SOLVER
    groups = param_groups(model, cfg)
    optimizer = MomentumSGD(groups, lr=0.0, momentum=solver.MOMENTUM, scale_momentum=solver.SCALE_MOMENTUM,
                            scale_momentum_threshold=solver.SCALE_MOMENTUM_THRESHOLD,
                            log_lr_change_threshold=solver.LOG_LR_CHANGE_THRESHOLD)
    n_weights, n_biases = (sum(p.numel() for p in g["params"]) for g in groups)
    logger.info("optimizer: %d weight blobs (%d values, weight decay %g), %d bias blobs (%d values, "
                "gradient x2, no weight decay), momentum %g", len(groups[0]["params"]), n_weights,
                solver.WEIGHT_DECAY, len(groups[1]["params"]), n_biases, solver.MOMENTUM)
    return optimizer

