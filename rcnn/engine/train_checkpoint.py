"""Training snapshots: save, find the latest, resume, export the final model to Detectron.

Why this shape: a snapshot must be loadable without running code (``torch.load`` with
``weights_only=True``, always, through ``convert.checkpoint.read_checkpoint``), must be usable
directly for testing (``--load_ckpt``), and must carry what Detectron's own snapshots carry.

* File: ``<output_dir>/ckpt/model_iter{N}.pt`` (N = the 0-based iteration just finished) and
  ``model_final.pt``, written by ``convert.checkpoint.save_checkpoint`` (atomically: a
  temporary file in the same folder, renamed when complete). ``meta`` holds ``iter``, ``lr``
  (the float32 lr of iteration N) and ``weights_source: scratch``.
* Optimizer state = the momentum buffers, stored as the checkpoint's ``extra_blobs`` under
  Detectron's names ``<blob>_momentum`` (one per trainable parameter, as in Detectron's
  ``.pkl``), so ``export_detectron_pkl`` writes them back as Detectron does. Nothing else is
  needed: the rest of the solver state is a function of the iteration.
* When: Detectron snapshots after iteration N when ``(N + 1) % CHECKPOINT_PERIOD == 0`` and
  ``N > start_iter``, with ``CHECKPOINT_PERIOD = int(TRAIN.SNAPSHOT_ITERS / NUM_GPUS)``
  (``utils/train.py``). ``NUM_GPUS`` here is the config's value: it defines the recipe's batch
  (12_2017 configs: 8 -> every 10000 iterations), and the schedule (``MAX_ITER``, ``STEPS``) is
  counted in iterations of that batch however many processes run it.
* Resume: the highest N among files named exactly ``model_iter{N}.pt`` in ``ckpt/``
  (Detectron's ``(?<=model_iter)\\d+(?=\\.pkl)`` on ``.pt``, anchored so that temporary files
  never match), continuing at N + 1. One deliberate difference: the lr of iteration N is
  restored, so a resume exactly at a step (e.g. N = 59999) rescales the momentum as an
  uninterrupted run does; Detectron restarts its lr blob at 0 and skips that rescaling.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from convert.checkpoint import LoadReport, pt_to_pkl, read_checkpoint, save_checkpoint
from rcnn.config import CfgNode, ConfigError
from rcnn.engine.solver import MomentumSGD
from rcnn.engine.weights import WeightsError
from rcnn.naming import key_to_blob

logger = logging.getLogger(__name__)

CKPT_DIR = "ckpt"
FINAL_NAME = "model_final.pt"
MOMENTUM_SUFFIX = "_momentum"
_SNAPSHOT_NAME = re.compile(r"model_iter(\d+)\.pt")


@dataclass(frozen=True)
class ResumePoint:
    """The newest snapshot and the iteration to continue at."""

    path: Path
    start_iter: int


@dataclass(frozen=True)
class TrainingState:
    """What ``load_training_checkpoint`` restored besides the tensors."""

    iter: int | None
    lr: float | None
    meta: dict[str, Any]


def checkpoint_period(cfg: CfgNode) -> int:
    """``int(TRAIN.SNAPSHOT_ITERS / NUM_GPUS)`` iterations between snapshots."""
    period = int(cfg.TRAIN.SNAPSHOT_ITERS / cfg.NUM_GPUS)
    if period < 1:
        raise ConfigError(f"TRAIN.SNAPSHOT_ITERS {cfg.TRAIN.SNAPSHOT_ITERS} / NUM_GPUS {cfg.NUM_GPUS} "
                         "gives a snapshot period below one iteration")
    return period


def is_snapshot_iter(cfg: CfgNode, cur_iter: int, start_iter: int) -> bool:
    """Whether Detectron writes ``model_iter{cur_iter}`` after finishing ``cur_iter``."""
    return (cur_iter + 1) % checkpoint_period(cfg) == 0 and cur_iter > start_iter


def checkpoint_dir(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / CKPT_DIR


def snapshot_path(output_dir: str | os.PathLike[str], cur_iter: int) -> Path:
    return checkpoint_dir(output_dir) / f"model_iter{cur_iter}.pt"


def final_path(output_dir: str | os.PathLike[str]) -> Path:
    """``model_final.pt``; when it exists, training is finished (Detectron's AUTO_RESUME)."""
    return checkpoint_dir(output_dir) / FINAL_NAME


def find_resume_checkpoint(output_dir: str | os.PathLike[str]) -> ResumePoint | None:
    """The ``model_iter{N}.pt`` with the highest N in ``<output_dir>/ckpt``, or None."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return None
    snapshots = [(int(match.group(1)), entry) for entry in folder.iterdir()
                 if (match := _SNAPSHOT_NAME.fullmatch(entry.name)) and entry.is_file()]
    if not snapshots:
        return None
    last_iter, path = max(snapshots)
    logger.info("========> Resuming from checkpoint %s at start iter %d", path, last_iter + 1)
    return ResumePoint(path, last_iter + 1)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel (its keys are the blob names)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _trained_parameters(model: nn.Module, optimizer: MomentumSGD) -> dict[str, nn.Parameter]:
    """Momentum blob name -> parameter, for the parameters the optimizer updates."""
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {key_to_blob(name) + MOMENTUM_SUFFIX: p for name, p in model.named_parameters() if id(p) in updated}


def momentum_blobs(model: nn.Module, optimizer: MomentumSGD) -> dict[str, Tensor]:
    """``<blob>_momentum`` -> buffer (zeros before the first step, as Detectron initialises it)."""
    out = {}
    for blob, param in _trained_parameters(_unwrap(model), optimizer).items():
        buf = optimizer.state.get(param, {}).get("momentum_buffer")
        out[blob] = buf if buf is not None else torch.zeros_like(param)
    return out


def save_training_checkpoint(path: str | os.PathLike[str], model: nn.Module, optimizer: MomentumSGD, cfg: CfgNode,
                             cur_iter: int, extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Write weights, momentum and ``iter``/``lr`` after iteration ``cur_iter`` (call on one rank)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    momentum = momentum_blobs(model, optimizer)
    meta = {"writer": "detectron-parity train", "weights_source": "scratch", "iter": int(cur_iter),
            "lr": optimizer.lr, **(extra_meta or {})}
    save_checkpoint(path, _unwrap(model), cfg, meta, momentum)
    return path


def save_snapshot(output_dir: str | os.PathLike[str], model: nn.Module, optimizer: MomentumSGD, cfg: CfgNode,
                  cur_iter: int) -> Path:
    """``<output_dir>/ckpt/model_iter{cur_iter}.pt``."""
    return save_training_checkpoint(snapshot_path(output_dir, cur_iter), model, optimizer, cfg, cur_iter)


def save_final(output_dir: str | os.PathLike[str], model: nn.Module, optimizer: MomentumSGD, cfg: CfgNode) -> Path:
    """``<output_dir>/ckpt/model_final.pt`` after the last iteration (``MAX_ITER - 1``)."""
    return save_training_checkpoint(final_path(output_dir), model, optimizer, cfg, cfg.SOLVER.MAX_ITER - 1)


def load_training_checkpoint(path: str | os.PathLike[str], model: nn.Module, optimizer: MomentumSGD) -> TrainingState:
    """Load weights (strictly), momentum buffers and the lr of a snapshot (``weights_only``).

    Every parameter the optimizer updates needs its ``<blob>_momentum``; momentum for anything
    else (e.g. a different ``TRAIN.FREEZE_AT``) is refused. Other extra blobs are ignored."""
    name = os.fspath(path)
    ckpt = read_checkpoint(path)
    model = _unwrap(model)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise WeightsError(f"{name} does not fit the model: {detail[:500]}") from None
    trained = _trained_parameters(model, optimizer)
    saved = {b for b in ckpt.extra_blobs if b.endswith(MOMENTUM_SUFFIX)}
    missing, unexpected = sorted(set(trained) - saved), sorted(saved - set(trained))
    if missing or unexpected:
        raise WeightsError(f"{name}: momentum does not match the trained parameters: "
                           f"{len(missing)} missing {missing[:5]}, {len(unexpected)} not trained now {unexpected[:5]}")
    for blob, param in trained.items():
        buf = ckpt.extra_blobs[blob]
        if buf.shape != param.shape:
            raise WeightsError(f"{name}: {blob} has shape {tuple(buf.shape)}, the parameter {tuple(param.shape)}")
        optimizer.state[param]["momentum_buffer"] = buf.to(device=param.device, dtype=param.dtype).clone()
    lr = ckpt.meta.get("lr")
    if lr is not None:
        optimizer.restore_lr(float(lr))
    it = ckpt.meta.get("iter")
    logger.info("loaded %s: %d tensors, %d momentum buffers, iter %s, lr %s", name, len(ckpt.state_dict),
                len(trained), it, lr)
    return TrainingState(it if isinstance(it, int) else None, float(lr) if lr is not None else None, dict(ckpt.meta))


def export_detectron_pkl(ckpt_path: str | os.PathLike[str], pkl_path: str | os.PathLike[str], *,
                         style: str = "2017") -> LoadReport:
    """Write a training checkpoint as a Detectron ``.pkl`` (Python 2 pickle; ``blobs`` with the
    ``<blob>_momentum`` entries like Detectron's own files, and ``cfg``) via ``pt_to_pkl``."""
    report = pt_to_pkl(ckpt_path, pkl_path, style=style)
    logger.info("exported %s -> %s (%d parameter blobs + momentum)", os.fspath(ckpt_path), os.fspath(pkl_path),
                len(report.loaded))
    return report
