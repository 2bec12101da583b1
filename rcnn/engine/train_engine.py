"""Detectron's training loop (``utils/train.py::train_model``) on one process or many.

One iteration = ``iter_size`` minibatches of ``TRAIN.IMS_PER_BATCH`` images on each of
the ``world_size`` processes, losses divided by ``iter_size``, gradients averaged over
processes (DDP), then one Caffe2-style momentum SGD step at ``lr_at_iter``. Because
Detectron normalises every loss per GPU minibatch and uses no batch statistics,
``world_size * iter_size == NUM_GPUS`` reproduces the recipe's 8-GPU gradient exactly
(docs/detectron.md §5.1); other batch sizes use the linear scaling rule (``scaled_schedule``).

Logs Detectron's ``json_stats`` lines, snapshots ``ckpt/model_iter{N}.pt`` and
``ckpt/model_final.pt`` (+ ``model_final.pkl`` for Detectron), and resumes from the
newest snapshot (``TRAIN.AUTO_RESUME``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron_parity.errors import UserError
from rcnn.data.train_batch import TrainBatch
from rcnn.engine.devices import rank_and_world
from rcnn.engine.solver import build_optimizer, lr_at_iter
from rcnn.engine.train_checkpoint import (
    checkpoint_period,
    export_detectron_pkl,
    final_path,
    find_resume_checkpoint,
    is_snapshot_iter,
    load_training_checkpoint,
    save_final,
    save_snapshot,
    snapshot_path,
)
from rcnn.engine.train_health import nonfinite_message, parameters_finite, start_warning
from rcnn.engine.training_stats import TrainingStats, mean_over_ranks, open_tb_writer
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN
from rcnn.modeling.sampler import RandomSampler
from rcnn.modeling.training import METRICS

logger = logging.getLogger(__name__)


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (a NaN loss, as Detectron's ``handle_critical_error``): a failed
    run, not bad input, hence exit status 1."""

    exit_status = 1


@dataclass
class TrainSettings:
    output_dir: Path
    iter_size: int = 1
    seed: int = 3
    use_tfboard: bool = False
    export_pkl: bool = True
    fresh_heads: bool = False      # heads from init_heads: warn when loss_cls starts far above log(K)
    progress: Callable[[int], None] | None = None   # called with each finished iteration
    precision: str = "fp32"        # "bf16": backbone and FPN under bf16 autocast (opt-in, not exact)


def scaled_schedule(cfg, batch: int) -> list[str]:
    """Config overrides for a total batch other than the recipe's ``NUM_GPUS * IMS_PER_BATCH``:
    the linear scaling rule (Detectron's GETTING_STARTED; Detectron.pytorch's ``--bs``): lr x
    batch/recipe, ``STEPS`` and ``MAX_ITER`` x recipe/batch (rounded), warm-up unchanged."""
    recipe = cfg.NUM_GPUS * cfg.TRAIN.IMS_PER_BATCH
    if batch == recipe:
        return []
    scale = recipe / batch
    steps = tuple(int(s * scale + 0.5) for s in cfg.SOLVER.STEPS)
    return ["SOLVER.BASE_LR", repr(cfg.SOLVER.BASE_LR * batch / recipe), "SOLVER.STEPS", repr(steps),
            "SOLVER.MAX_ITER", str(int(cfg.SOLVER.MAX_ITER * scale + 0.5))]


def train(cfg, model: GeneralizedRCNN, make_batches: Callable[[int], Iterator[TrainBatch]],
          device: torch.device, settings: TrainSettings) -> Path:
    """Train ``model`` (already initialised) up to ``SOLVER.MAX_ITER``; returns the final
    checkpoint's path (rank 0 writes it).

    ``make_batches(n)`` gives this process's minibatches after the first ``n`` (so that a
    resumed run continues the data order where the snapshot left it).
    """
    rank, world = rank_and_world()
    checkpoint_period(cfg)   # a bad snapshot period fails now, not after the first iterations
    model.to(device).train()
    if settings.precision == "bf16":  # backbone/FPN only: heads, losses and box arithmetic stay float32
        from rcnn.engine.benchmark import bf16_features

        bf16_features(model, device)
    elif settings.precision != "fp32":
        raise ValueError(f"training precision must be fp32 or bf16, not {settings.precision!r}")
    optimizer = build_optimizer(model, cfg)
    output_dir = Path(settings.output_dir)
    if final_path(output_dir).exists() and cfg.TRAIN.AUTO_RESUME:
        logger.info("%s exists; nothing to train", final_path(output_dir))
        return final_path(output_dir)
    resume = find_resume_checkpoint(output_dir) if cfg.TRAIN.AUTO_RESUME else None
    start_iter = 0
    last_good = None
    if resume is not None:
        last_good = resume.path
        load_training_checkpoint(resume.path, model, optimizer)
        start_iter = resume.start_iter
        logger.info("resuming from %s at iteration %d", resume.path, start_iter)
    batches = make_batches(start_iter * settings.iter_size)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    # RoI/anchor sampling is seeded per global minibatch: a resumed run, and one process
    # accumulating k minibatches versus k processes, draw exactly the same samples.
    generator = torch.Generator()
    sampler = RandomSampler(generator)
    tb = open_tb_writer(output_dir / "tb") if settings.use_tfboard and rank == 0 else None
    stats = TrainingStats(cfg.SOLVER.MAX_ITER, start_iter, device=device, tb_writer=tb, emit=logger.info)

    for cur_iter in range(start_iter, cfg.SOLVER.MAX_ITER):
        stats.iter_tic()
        lr = optimizer.set_lr(float(lr_at_iter(cfg, cur_iter)), cur_iter)
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for micro in range(settings.iter_size):
            global_minibatch = (cur_iter * settings.iter_size + micro) * world + rank
            generator.manual_seed(settings.seed * 1_000_003 + global_minibatch)
            batch = next(batches).to(device)
            last = micro == settings.iter_size - 1
            with net.no_sync() if world > 1 and not last else nullcontext():
                out = net(batch, sampler)
                loss = sum(v for k, v in out.items() if k not in METRICS) / settings.iter_size
                loss.backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0) + v.detach() / settings.iter_size
        optimizer.step()
        stats.iter_toc()
        averaged = mean_over_ranks(sums, device)
        stats.update_iter_stats({k: v for k, v in averaged.items() if k not in METRICS},
                                {k: v for k, v in averaged.items() if k in METRICS})
        stats.log_iter_stats(cur_iter, lr)
        losses = {k: float(v) for k, v in averaged.items() if k not in METRICS}
        if cur_iter == 0 and settings.fresh_heads and (warning := start_warning(losses, cfg.MODEL.NUM_CLASSES,
                                                                                 cfg.SOLVER.BASE_LR)):
            logger.warning(warning)
        if not math.isfinite(stats.iter_total_loss):
            raise TrainingError(nonfinite_message(cur_iter, losses, last_good, cfg.SOLVER.BASE_LR))
        if is_snapshot_iter(cfg, cur_iter, start_iter):
            if not parameters_finite(model):
                raise TrainingError(nonfinite_message(cur_iter, {"weights": math.nan}, last_good, cfg.SOLVER.BASE_LR,
                                                      what="weights"))
            if rank == 0:
                save_snapshot(output_dir, model, optimizer, cfg, cur_iter)
            last_good = snapshot_path(output_dir, cur_iter)
        if settings.progress is not None:
            settings.progress(cur_iter)
    final = final_path(output_dir)
    if rank == 0:
        save_final(output_dir, model, optimizer, cfg)
        if settings.export_pkl:
            export_detectron_pkl(final, final.with_suffix(".pkl"))
    if tb is not None:
        tb.close()
    return final
