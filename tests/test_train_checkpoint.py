"""rcnn.engine.train_checkpoint: snapshots that load weights-only, resume exactly, export to Detectron."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convert.checkpoint import FORMAT, read_checkpoint
from convert.errors import ConvertError
from convert.pickle_io import read_detectron_pkl
from rcnn.config import get_default_cfg, load_cfg, merge_cfg_from_file
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
from rcnn.engine.weights import WeightsError, load_model
from rcnn.modeling import build_model
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs" / "12_2017_baselines"


class Tiny(nn.Module):
    """Parameters named like the real model's; conv1 frozen as TRAIN.FREEZE_AT freezes it."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict({"conv1": nn.Conv2d(2, 2, 1, bias=False)})
        self.box_head = nn.ModuleDict({"fc6": nn.Linear(3, 2), "fc7": nn.Linear(2, 2)})
        self.backbone.conv1.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.box_head.fc7(torch.relu(self.box_head.fc6(x))).square().sum()


def _cfg(**solver):
    cfg = get_default_cfg()
    merge_cfg_from_file(cfg, CONFIGS / "e2e_faster_rcnn_R-50-FPN_1x.yaml")
    cfg.SOLVER.WEIGHT_DECAY = 1e-2
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _train(model: Tiny, opt, cfg, iters: range) -> None:
    """Detectron's loop order: set_lr(lr_at_iter(it)), forward/backward, update."""
    for it in iters:
        opt.set_lr(lr_at_iter(cfg, it), it)
        opt.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(it)
        model(torch.randn(4, 3, generator=gen)).backward()
        opt.step()


def _fresh(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def test_snapshot_schedule_as_detectron():
    cfg = load_cfg(CONFIGS / "e2e_mask_rcnn_R-50-FPN_1x.yaml")
    assert (cfg.TRAIN.SNAPSHOT_ITERS, cfg.NUM_GPUS, checkpoint_period(cfg)) == (80000, 8, 10000)
    snaps = [it for it in range(cfg.SOLVER.MAX_ITER) if is_snapshot_iter(cfg, it, 0)]
    assert snaps == list(range(9999, 90000, 10000))
    assert not is_snapshot_iter(cfg, 19999, 19999)  # never the first iteration of a (resumed) run
    one = _cfg(MAX_ITER=3)
    one.TRAIN.SNAPSHOT_ITERS, one.NUM_GPUS = 1, 1
    assert [it for it in range(3) if is_snapshot_iter(one, it, 0)] == [1, 2]


def test_round_trip_and_resume_continue_exactly_across_a_step(tmp_path):
    """Stop after iteration 5, resume at 6 (where the lr drops 10x): same result, bit for bit,
    as the uninterrupted run: weights, momentum and the lr (so the rescaling at 6 happens) are restored."""
    cfg = _cfg(BASE_LR=0.1, STEPS=[0, 6], MAX_ITER=10, WARM_UP_ITERS=3)
    whole = _fresh()
    opt_whole = build_optimizer(whole, cfg)
    _train(whole, opt_whole, cfg, range(10))

    first = _fresh()
    opt_first = build_optimizer(first, cfg)
    _train(first, opt_first, cfg, range(6))
    path = save_snapshot(tmp_path, first, opt_first, cfg, 5)
    assert path == tmp_path / "ckpt" / "model_iter5.pt" == snapshot_path(tmp_path, 5)

    resume = find_resume_checkpoint(tmp_path)
    assert resume is not None and (resume.path, resume.start_iter) == (path, 6)
    second = _fresh(seed=1)
    opt_second = build_optimizer(second, cfg)
    state = load_training_checkpoint(resume.path, second, opt_second)
    assert (state.iter, state.lr) == (5, opt_first.lr)
    assert opt_second.lr == opt_first.lr == float(lr_at_iter(cfg, 5))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    for p, q in zip(first.parameters(), second.parameters()):
        if p.requires_grad:
            assert torch.equal(opt_first.state[p]["momentum_buffer"], opt_second.state[q]["momentum_buffer"])
        else:
            assert q not in opt_second.state
    _train(second, opt_second, cfg, range(6, 10))
    for a, b in zip(whole.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_is_weights_only_with_detectron_momentum_names(tmp_path):
    cfg = _cfg()
    model = _fresh()
    opt = build_optimizer(model, cfg)  # before any step: zero momentum, as Detectron initialises it
    path = save_final(tmp_path, model, opt, cfg)
    assert path == final_path(tmp_path) == tmp_path / "ckpt" / "model_final.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT
    assert sorted(raw["extra_blobs"]) == ["fc6_b_momentum", "fc6_w_momentum", "fc7_b_momentum", "fc7_w_momentum"]
    assert all(not t.any() for t in raw["extra_blobs"].values())
    for name, param in model.named_parameters():
        if param.requires_grad:
            blob = name.split(".")[1] + ("_w" if name.endswith("weight") else "_b") + "_momentum"
            assert raw["extra_blobs"][blob].shape == param.shape and raw["extra_blobs"][blob].dtype == param.dtype
    assert raw["meta"]["iter"] == cfg.SOLVER.MAX_ITER - 1 and raw["meta"]["weights_source"] == "scratch"
    assert raw["meta"]["lr"] == 0.0
    assert set(raw["state_dict"]) == set(model.state_dict())


def test_latest_checkpoint_discovery(tmp_path):
    assert find_resume_checkpoint(tmp_path) is None
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert find_resume_checkpoint(tmp_path) is None
    for name in ("model_iter9999.pt", "model_iter19999.pt", "model_iter100.pt", "model_final.pt",
                 ".model_iter99999.pt.x1y2.part", "model_iter59999.pt.tmp", "model_iter69999.optim.pt",
                 "model_iter79999.pkl", "old_model_iter89999.pt"):
        (ckpt / name).write_bytes(b"")
    (ckpt / "model_iter99999.pt").mkdir()
    found = find_resume_checkpoint(tmp_path)
    assert found is not None and (found.path.name, found.start_iter) == ("model_iter19999.pt", 20000)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    cfg = _cfg()
    model = _fresh()
    opt = build_optimizer(model, cfg)
    good = save_snapshot(tmp_path, model, opt, cfg, 9999)
    before = good.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with torch.no_grad():
        model.box_head.fc6.weight.add_(1.0)
    with pytest.raises(ConvertError, match="No space left on device"):
        save_snapshot(tmp_path, model, opt, cfg, 9999)
    with pytest.raises(ConvertError):
        save_snapshot(tmp_path, model, opt, cfg, 19999)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model_iter9999.pt"]
    assert good.read_bytes() == before
    assert find_resume_checkpoint(tmp_path).start_iter == 10000


class NotATensor:
    """Stands for any Python object a foreign pickle could carry."""


def test_foreign_pickles_are_refused(tmp_path):
    model = _fresh()
    opt = build_optimizer(model, _cfg())
    evil = tmp_path / "ckpt" / "model_iter9.pt"
    evil.parent.mkdir()
    torch.save({"format": FORMAT, "format_version": 1, "payload": NotATensor()}, evil)
    with pytest.raises(ConvertError, match="refusing to load .*NotATensor"):
        load_training_checkpoint(evil, model, opt)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(ConvertError, match="not a detectron-parity checkpoint"):
        load_training_checkpoint(plain, model, opt)


def test_momentum_must_match_the_trained_parameters(tmp_path):
    cfg = _cfg()
    model = _fresh()
    opt = build_optimizer(model, cfg)
    path = save_snapshot(tmp_path, model, opt, cfg, 19)
    frozen_more = _fresh()
    frozen_more.box_head.fc6.weight.requires_grad_(False)
    with pytest.raises(WeightsError, match=r"1 not trained now \['fc6_w_momentum'\]"):
        load_training_checkpoint(path, frozen_more, build_optimizer(frozen_more, cfg))
    frozen_less = _fresh()
    frozen_less.backbone.conv1.weight.requires_grad_(True)
    with pytest.raises(WeightsError, match=r"1 missing \['conv1_w_momentum'\], 0 not trained now"):
        load_training_checkpoint(path, frozen_less, build_optimizer(frozen_less, cfg))
    other = nn.Module()
    other.box_head = nn.ModuleDict({"fc6": nn.Linear(3, 2)})
    with pytest.raises(WeightsError, match="does not fit the model"):
        load_training_checkpoint(path, other, build_optimizer(other, cfg))


def test_final_model_exports_to_detectron_pkl_and_tests(tmp_path):
    """The real Faster R-CNN: model_final.pt -> .pkl with Detectron's 72 ``*_momentum`` blobs;
    the .pt itself loads for testing (``--load_ckpt``)."""
    cfg = load_cfg(CONFIGS / "e2e_faster_rcnn_R-50-FPN_1x.yaml")
    model = build_model(cfg)
    opt = build_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p]["momentum_buffer"] = torch.randn(p.shape, generator=gen)
    opt.set_lr(lr_at_iter(cfg, 89999), 89999)
    ckpt = save_final(tmp_path, model, opt, cfg)
    report = export_detectron_pkl(ckpt, tmp_path / "model_final.pkl")
    assert report.ok
    pkl = read_detectron_pkl(tmp_path / "model_final.pkl")
    momentum = sorted(b for b in pkl.blobs if b.endswith("_momentum"))
    assert len(momentum) == 72 and len(pkl.blobs) == len(model.state_dict()) + 72
    saved = read_checkpoint(ckpt)
    for blob in momentum:
        np.testing.assert_array_equal(pkl.blobs[blob], saved.extra_blobs[blob].numpy())
    assert "conv1_w_momentum" not in pkl.blobs and "res2_0_branch2a_w_momentum" not in pkl.blobs
    assert pkl.cfg_yaml is not None and "steps_with_decay" in pkl.cfg_yaml
    loaded, info = load_model(cfg, load_ckpt=str(ckpt))
    assert info.source == "scratch" and info.format == "checkpoint"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
