"""Diverging runs: the iteration-0 warning, the non-finite loss error naming the iteration, the
loss term and the last good snapshot, and resuming from that snapshot."""
import math

import pytest
import torch
from torch import nn

from convert.checkpoint import read_checkpoint
from rcnn.config import load_cfg
from rcnn.engine.train_engine import TrainingError, TrainSettings, train
from rcnn.engine.train_health import (
    first_nonfinite,
    nonfinite_message,
    parameters_finite,
    start_warning,
)
from tests.models import CONFIGS


def test_start_warning_only_far_above_log_k():
    assert start_warning({"loss_cls": 4.6, "loss_bbox": 0.1}, 81, 0.02) is None
    message = start_warning({"loss_cls": 8.0}, 81, 0.01)
    assert "loss_cls 8.00 at iteration 0" in message and "log(NUM_CLASSES) = 4.39" in message
    assert "SOLVER.BASE_LR (now 0.01" in message
    assert start_warning({"loss_cls": math.nan}, 81, 0.01) is None    # the NaN error reports that one


def test_nonfinite_message_names_term_and_checkpoint(tmp_path):
    losses = {"loss_rpn_cls_fpn2": 0.3, "loss_cls": math.inf, "loss_bbox": math.nan}
    assert first_nonfinite(losses) == "loss_cls"
    msg = nonfinite_message(11, losses, tmp_path / "model_iter9.pt", 0.01)
    assert msg.startswith("loss is NaN at iteration 11 (first non-finite term: loss_cls; last good checkpoint: ")
    assert "model_iter9.pt; rerunning the same command resumes from it" in msg
    assert "no snapshot was written" in nonfinite_message(0, {"loss_cls": math.inf}, None, 0.01)
    assert "loss is infinite" in nonfinite_message(0, {"loss_cls": math.inf}, None, 0.01)


class Batch:
    def __init__(self, x: float) -> None:
        self.x = torch.tensor([[x, 1.0]])

    def to(self, device):
        return self


class TinyModel(nn.Module):
    """A one-layer 'box head' with a loss_cls and an accuracy metric, blob names by the rule."""

    def __init__(self) -> None:
        super().__init__()
        self.box_head = nn.Module()
        self.box_head.cls_score = nn.Linear(2, 1)

    def forward(self, batch, sampler):
        y = self.box_head.cls_score(batch.x)
        return {"loss_cls": ((y - 1.0) ** 2).mean(), "accuracy_cls": torch.tensor(1.0)}


def _cfg():
    return load_cfg(CONFIGS["faster"], ["NUM_GPUS", "1", "SOLVER.MAX_ITER", "8", "TRAIN.SNAPSHOT_ITERS", "2",
                                        "SOLVER.BASE_LR", "0.01", "SOLVER.WARM_UP_ITERS", "0"])


def test_nan_names_iteration_term_and_last_good_checkpoint_and_resume_works(tmp_path, caplog):
    cfg = _cfg()
    bad_at = 6                                           # the minibatch of iteration 6 holds a NaN

    def batches(consumed, bad=True):
        return iter(Batch(math.nan if bad and i == bad_at else 0.5) for i in range(consumed, 100))

    torch.manual_seed(0)
    model = TinyModel()
    settings = TrainSettings(tmp_path, export_pkl=False)
    with pytest.raises(TrainingError) as err:
        train(cfg, model, batches, torch.device("cpu"), settings)
    last_good = tmp_path / "ckpt" / "model_iter5.pt"
    assert str(err.value).startswith(f"loss is NaN at iteration 6 (first non-finite term: loss_cls; last good "
                                     f"checkpoint: {last_good}")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model_iter1.pt", "model_iter3.pt",
                                                                     "model_iter5.pt"]
    # Rerunning (clean data) resumes from that checkpoint and finishes.
    with caplog.at_level("INFO", logger="rcnn.engine.train_engine"):
        final = train(cfg, TinyModel(), lambda n: batches(n, bad=False), torch.device("cpu"), settings)
    assert f"resuming from {last_good} at iteration 6" in caplog.text
    assert read_checkpoint(final).meta["iter"] == 7


def test_snapshot_of_non_finite_weights_is_refused(tmp_path, monkeypatch):
    """Weights that turn non-finite in the update of a snapshot iteration are not saved."""
    from rcnn.engine import solver

    model = TinyModel()
    real_step = solver.MomentumSGD.step
    calls = []

    def step_then_poison_the_second(opt, closure=None):
        real_step(opt, closure)
        calls.append(1)
        if len(calls) == 2:                                  # the update of iteration 1
            with torch.no_grad():
                model.box_head.cls_score.weight.fill_(math.nan)

    monkeypatch.setattr(solver.MomentumSGD, "step", step_then_poison_the_second)
    with pytest.raises(TrainingError, match=r"^weights is NaN at iteration 1 \(no snapshot was written"):
        train(_cfg(), model, lambda n: iter(Batch(0.5) for _ in range(100)), torch.device("cpu"),
              TrainSettings(tmp_path, export_pkl=False))
    assert not parameters_finite(model)
    assert not list((tmp_path / "ckpt").glob("model_iter*.pt"))
