"""rcnn.engine.solver against Detectron's own lr_policy / UpdateWorkspaceLr and by hand.

Golden values: ``tests/fixtures/golden/lr_policy.json`` (see its PROVENANCE.md) and the tables
below, produced the same way: Detectron ``04155a0`` ``utils/lr_policy.py::get_lr_at_iter`` (NumPy
1.26.4) for each solver setting (the 12_2017 SOLVER section with the listed overrides), and
``modeling/detector.py::UpdateWorkspaceLr`` / ``_SetNewLr`` / ``_CorrectMomentum`` run unmodified
over whole schedules with a dict standing in for the Caffe2 workspace (``gpu_0/lr`` starting at
0.0 as ``param_init_net`` fills it). Each event: the iteration, Detectron's log lines, and the
float32 factor it passed to the ``Scale`` op on the momentum blobs (hex).
"""
from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from rcnn.config import get_default_cfg, load_cfg, merge_cfg_from_file
from rcnn.engine.solver import (
    MomentumSGD,
    build_optimizer,
    get_step_index,
    lr_at_iter,
    lr_change_ratio,
    param_groups,
)
from rcnn.modeling import build_model
from tests.conftest import FIXTURES, REPO_ROOT

CONFIGS = REPO_ROOT / "configs" / "12_2017_baselines"

# name: (overrides of the 12_2017 SOLVER section, "iter:float32 lr as hex" from get_lr_at_iter)
LR_GOLDEN = {
    "steps_with_decay_12_2017": ({}, """
        0:0x1.b4e81cp-8 1:0x1.b6a780p-8 2:0x1.b866e4p-8 3:0x1.ba2648p-8 7:0x1.c123dap-8 100:0x1.31d5acp-7
        250:0x1.b4e81cp-7 333:0x1.fd6ee4p-7 498:0x1.46ce62p-6 499:0x1.473e3cp-6 500:0x1.47ae14p-6
        501:0x1.47ae14p-6 999:0x1.47ae14p-6 1000:0x1.47ae14p-6 1001:0x1.47ae14p-6 10137:0x1.47ae14p-6
        21584:0x1.47ae14p-6 29999:0x1.47ae14p-6 30000:0x1.47ae14p-6 30001:0x1.47ae14p-6 36543:0x1.47ae14p-6
        57676:0x1.47ae14p-6 59999:0x1.47ae14p-6 60000:0x1.0624dep-9 60001:0x1.0624dep-9 72795:0x1.0624dep-9
        79999:0x1.0624dep-9 80000:0x1.a36e2ep-13 80001:0x1.a36e2ep-13 83213:0x1.a36e2ep-13 89999:0x1.a36e2ep-13
        90000:0x1.a36e2ep-13 90005:0x1.a36e2ep-13"""),
    "tutorial_1gpu": ({"BASE_LR": 0.0025, "STEPS": [0, 30000, 40000], "MAX_ITER": 60000}, """
        0:0x1.b4e81cp-11 1:0x1.b6a780p-11 2:0x1.b866e4p-11 3:0x1.ba2648p-11 7:0x1.c123dap-11 100:0x1.31d5acp-10
        250:0x1.b4e81cp-10 333:0x1.fd6ee4p-10 498:0x1.46ce62p-9 499:0x1.473e3cp-9 500:0x1.47ae14p-9
        501:0x1.47ae14p-9 999:0x1.47ae14p-9 1000:0x1.47ae14p-9 1001:0x1.47ae14p-9 7259:0x1.47ae14p-9
        10137:0x1.47ae14p-9 21584:0x1.47ae14p-9 29999:0x1.47ae14p-9 30000:0x1.0624dep-12 30001:0x1.0624dep-12
        32081:0x1.0624dep-12 36543:0x1.0624dep-12 36791:0x1.0624dep-12 39999:0x1.0624dep-12 40000:0x1.a36e2ep-16
        40001:0x1.a36e2ep-16 59999:0x1.a36e2ep-16 60000:0x1.a36e2ep-16 60001:0x1.a36e2ep-16 60005:0x1.a36e2ep-16"""),
    "steps_with_lrs": ({"LR_POLICY": "steps_with_lrs", "STEPS": [0, 30000, 40000],
                        "LRS": [0.0025, 0.00025, 2.5e-05], "MAX_ITER": 45000}, """
        0:0x1.b4e81cp-11 1:0x1.b6a780p-11 2:0x1.b866e4p-11 3:0x1.ba2648p-11 7:0x1.c123dap-11 100:0x1.31d5acp-10
        250:0x1.b4e81cp-10 333:0x1.fd6ee4p-10 498:0x1.46ce62p-9 499:0x1.473e3cp-9 500:0x1.47ae14p-9
        501:0x1.47ae14p-9 999:0x1.47ae14p-9 1000:0x1.47ae14p-9 1001:0x1.47ae14p-9 7259:0x1.47ae14p-9
        10137:0x1.47ae14p-9 21584:0x1.47ae14p-9 29999:0x1.47ae14p-9 30000:0x1.0624dep-12 30001:0x1.0624dep-12
        32081:0x1.0624dep-12 36543:0x1.0624dep-12 36791:0x1.0624dep-12 39999:0x1.0624dep-12 40000:0x1.a36e2ep-16
        40001:0x1.a36e2ep-16 44999:0x1.a36e2ep-16 45000:0x1.a36e2ep-16 45005:0x1.a36e2ep-16"""),
    "step_constant_warmup": ({"LR_POLICY": "step", "BASE_LR": 0.01, "WARM_UP_ITERS": 1000, "WARM_UP_FACTOR": 0.1,
                              "WARM_UP_METHOD": "constant"}, """
        0:0x1.0624dep-10 1:0x1.0624dep-10 2:0x1.0624dep-10 3:0x1.0624dep-10 7:0x1.0624dep-10 100:0x1.0624dep-10
        250:0x1.0624dep-10 333:0x1.0624dep-10 498:0x1.0624dep-10 499:0x1.0624dep-10 500:0x1.0624dep-10
        501:0x1.0624dep-10 999:0x1.0624dep-10 1000:0x1.47ae14p-7 1001:0x1.47ae14p-7 10137:0x1.47ae14p-7
        21584:0x1.47ae14p-7 29999:0x1.47ae14p-7 30000:0x1.0624dep-10 30001:0x1.0624dep-10 36543:0x1.0624dep-10
        57676:0x1.0624dep-10 59999:0x1.0624dep-10 60000:0x1.a36e2ep-14 60001:0x1.a36e2ep-14 72795:0x1.a36e2ep-14
        79999:0x1.a36e2ep-14 80000:0x1.a36e2ep-14 80001:0x1.a36e2ep-14 83213:0x1.a36e2ep-14 89999:0x1.a36e2ep-14
        90000:0x1.4f8b58p-17 90005:0x1.4f8b58p-17"""),
    "cosine_decay": ({"LR_POLICY": "cosine_decay"}, """
        0:0x1.b4e81cp-8 1:0x1.b6a780p-8 2:0x1.b866e4p-8 3:0x1.ba2648p-8 7:0x1.c123dap-8 100:0x1.31d570p-7
        250:0x1.b4e5fap-7 333:0x1.fd6a7cp-7 498:0x1.46c810p-6 499:0x1.4737e0p-6 500:0x1.47a7b2p-6
        501:0x1.47a7aap-6 999:0x1.479494p-6 1000:0x1.479488p-6 1001:0x1.47947ap-6 10137:0x1.3d878ep-6
        21584:0x1.1b563cp-6 29999:0x1.eb87a8p-7 30000:0x1.eb851ep-7 30001:0x1.eb8296p-7 36543:0x1.a70390p-7
        57676:0x1.76bfc8p-8 59999:0x1.47b326p-8 60000:0x1.47ae14p-8 60001:0x1.47a902p-8 72795:0x1.cab686p-10
        79999:0x1.3c3f38p-11 80000:0x1.3c2f32p-11 80001:0x1.3c1f2cp-11 83213:0x1.24e474p-12 89999:0x1.acb600p-38
        90000:0x0.0p+0 90005:0x1.4eee2ep-33"""),
    "exp_decay_no_warmup": ({"LR_POLICY": "exp_decay", "GAMMA": 0.01, "WARM_UP_ITERS": 0}, """
        0:0x1.47ae14p-6 1:0x1.47a9cap-6 2:0x1.47a57ep-6 3:0x1.47a134p-6 7:0x1.47900ap-6 100:0x1.4601f2p-6
        250:0x1.4383d4p-6 333:0x1.4224d8p-6 498:0x1.3f6f82p-6 499:0x1.3f6b52p-6 500:0x1.3f6722p-6
        501:0x1.3f62f4p-6 999:0x1.3759ccp-6 1000:0x1.3755b8p-6 1001:0x1.3751a4p-6 10137:0x1.86222ep-7
        21584:0x1.b2602cp-8 29999:0x1.1a6688p-8 30000:0x1.1a62d6p-8 30001:0x1.1a5f22p-8 36543:0x1.9415e2p-9
        57676:0x1.121514p-10 59999:0x1.e6bb14p-11 60000:0x1.e6b4b4p-11 60001:0x1.e6ae54p-11 72795:0x1.f9c828p-12
        79999:0x1.5dd80cp-12 80000:0x1.5dd378p-12 80001:0x1.5dcee2p-12 83213:0x1.28cabep-12 89999:0x1.a373aep-13
        90000:0x1.a36e2ep-13 90005:0x1.a352b8p-13"""),
    "steps_with_decay_3_steps_warmup_7": ({"BASE_LR": 0.1, "GAMMA": 0.5, "STEPS": [0, 7, 13, 21], "MAX_ITER": 30,
                                           "WARM_UP_ITERS": 7, "WARM_UP_FACTOR": 0.001}, """
        0:0x1.a36e2ep-14 1:0x1.d6ec48p-7 2:0x1.d548dap-6 3:0x1.5f8dc8p-5 6:0x1.5f24ecp-4 7:0x1.99999ap-5
        8:0x1.99999ap-5 12:0x1.99999ap-5 13:0x1.99999ap-6 14:0x1.99999ap-6 16:0x1.99999ap-6 17:0x1.99999ap-6
        20:0x1.99999ap-6 21:0x1.99999ap-7 22:0x1.99999ap-7 23:0x1.99999ap-7 25:0x1.99999ap-7 27:0x1.99999ap-7
        29:0x1.99999ap-7 30:0x1.99999ap-7 35:0x1.99999ap-7"""),
}

# UpdateWorkspaceLr over iterations 0..MAX_ITER-1 (the last case starts at 60000 with the lr blob at 0,
# as after Detectron's resume): (iter, log lines, Scale factors). No other iteration logs or rescales.
SCHEDULE_GOLDEN = {
    "steps_with_decay_12_2017": (0, [
        (0, ["Changing learning rate 0.000000 -> 0.006667 at iter 0"], []),
        (60000, ["Changing learning rate 0.020000 -> 0.002000 at iter 60000",
                 "Scaling update history by 0.100000 (new lr / old lr)"], ["0x1.99999cp-4"]),
        (80000, ["Changing learning rate 0.002000 -> 0.000200 at iter 80000",
                 "Scaling update history by 0.100000 (new lr / old lr)"], ["0x1.999998p-4"]),
    ]),
    "step_constant_warmup": (0, [
        (0, ["Changing learning rate 0.000000 -> 0.001000 at iter 0"], []),
        (1000, ["Changing learning rate 0.001000 -> 0.010000 at iter 1000",
                "Scaling update history by 9.999999 (new lr / old lr)"], ["0x1.3ffffep+3"]),
        (30000, ["Changing learning rate 0.010000 -> 0.001000 at iter 30000",
                 "Scaling update history by 0.100000 (new lr / old lr)"], ["0x1.99999cp-4"]),
        (60000, ["Changing learning rate 0.001000 -> 0.000100 at iter 60000",
                 "Scaling update history by 0.100000 (new lr / old lr)"], ["0x1.999998p-4"]),
    ]),
    "steps_with_decay_3_steps_warmup_7": (0, [
        (0, ["Changing learning rate 0.000000 -> 0.000100 at iter 0"], []),
        (1, ["Changing learning rate 0.000100 -> 0.014371 at iter 1",
             "Scaling update history by 143.714294 (new lr / old lr)"], ["0x1.1f6db8p+7"]),
        (2, ["Changing learning rate 0.014371 -> 0.028643 at iter 2",
             "Scaling update history by 1.993042 (new lr / old lr)"], ["0x1.fe37fcp+0"]),
        (3, ["Changing learning rate 0.028643 -> 0.042914 at iter 3",
             "Scaling update history by 1.498254 (new lr / old lr)"], ["0x1.7f8d9ap+0"]),
        (4, ["Changing learning rate 0.042914 -> 0.057186 at iter 4",
             "Scaling update history by 1.332557 (new lr / old lr)"], ["0x1.55226ep+0"]),
        (5, ["Changing learning rate 0.057186 -> 0.071457 at iter 5",
             "Scaling update history by 1.249563 (new lr / old lr)"], ["0x1.3fe35ap+0"]),
        (6, ["Changing learning rate 0.071457 -> 0.085729 at iter 6",
             "Scaling update history by 1.199720 (new lr / old lr)"], ["0x1.3320dcp+0"]),
        (7, ["Changing learning rate 0.085729 -> 0.050000 at iter 7",
             "Scaling update history by 0.583236 (new lr / old lr)"], ["0x1.2a9deep-1"]),
        (13, ["Changing learning rate 0.050000 -> 0.025000 at iter 13",
              "Scaling update history by 0.500000 (new lr / old lr)"], ["0x1.0p-1"]),
        (21, ["Changing learning rate 0.025000 -> 0.012500 at iter 21",
              "Scaling update history by 0.500000 (new lr / old lr)"], ["0x1.0p-1"]),
    ]),
    "steps_with_decay_12_2017_resume_at_60000": (60000, [
        (60000, ["Changing learning rate 0.000000 -> 0.002000 at iter 60000"], []),
        (80000, ["Changing learning rate 0.002000 -> 0.000200 at iter 80000",
                 "Scaling update history by 0.100000 (new lr / old lr)"], ["0x1.999998p-4"]),
    ]),
}


def _solver_cfg(overrides: dict | None = None):
    """The 12_2017 config (mutable) with SOLVER overrides."""
    cfg = get_default_cfg()
    merge_cfg_from_file(cfg, CONFIGS / "e2e_mask_rcnn_R-50-FPN_1x.yaml")
    for key, value in (overrides or {}).items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _golden_lrs(table: str) -> list[tuple[int, float]]:
    return [(int(it), float.fromhex(h)) for it, h in (item.split(":") for item in table.split())]


def test_lr_policy_fixture_exact():
    """lr_policy.json (Detectron's get_lr_at_iter under the 12_2017 solver), to the last bit."""
    golden = json.loads((FIXTURES / "golden" / "lr_policy.json").read_text())
    cfg = load_cfg(CONFIGS / "e2e_mask_rcnn_R-50-FPN_1x.yaml")
    for key, value in golden["solver"].items():
        assert cfg.SOLVER[key] == value, key
    for row in golden["values"]:
        lr = lr_at_iter(cfg, row["iter"])
        assert type(lr) is np.float32
        assert float(lr).hex() == float.fromhex(row["lr_float32_hex"]).hex() == float(row["lr"]).hex()
        assert get_step_index(cfg, row["iter"]) == row["step_index"]


@pytest.mark.parametrize("name", list(LR_GOLDEN))
def test_lr_policies_match_detectron(name):
    overrides, table = LR_GOLDEN[name]
    cfg = _solver_cfg(overrides)
    for it, expected in _golden_lrs(table):
        lr = lr_at_iter(cfg, it)
        assert type(lr) is np.float32
        assert float(lr).hex() == expected.hex(), (name, it)


def test_lr_policy_errors_as_detectron():
    with pytest.raises(NotImplementedError, match="Unknown LR policy: steps_with_relative_lrs"):
        lr_at_iter(_solver_cfg({"LR_POLICY": "steps_with_relative_lrs"}), 1000)
    cfg = _solver_cfg({"WARM_UP_METHOD": "cubic"})
    with pytest.raises(KeyError, match="Unknown SOLVER.WARM_UP_METHOD: cubic"):
        lr_at_iter(cfg, 499)
    assert lr_at_iter(cfg, 500) == np.float32(0.02)  # like Detectron, only read during warm-up
    with pytest.raises(ValueError, match="must start at 0"):
        lr_at_iter(_solver_cfg({"STEPS": [10, 60000]}), 1000)


def test_lr_change_ratio():
    assert lr_change_ratio(0.02, 0.002) == pytest.approx(10.0)
    assert lr_change_ratio(0.002, 0.02) == pytest.approx(10.0)
    assert lr_change_ratio(0.0, 0.006666) == pytest.approx(0.006666 / 1e-10)


def _one_param_optimizer(cfg) -> tuple[MomentumSGD, torch.Tensor]:
    param = nn.Parameter(torch.ones(3))
    opt = MomentumSGD([param], momentum=0.9, scale_momentum=cfg.SOLVER.SCALE_MOMENTUM,
                      scale_momentum_threshold=cfg.SOLVER.SCALE_MOMENTUM_THRESHOLD,
                      log_lr_change_threshold=cfg.SOLVER.LOG_LR_CHANGE_THRESHOLD)
    opt.state[param]["momentum_buffer"] = torch.ones(3)
    return opt, param


@pytest.mark.parametrize("name", list(SCHEDULE_GOLDEN))
def test_set_lr_over_whole_schedules_matches_detectron(name, caplog):
    """Every log line and every momentum rescaling of Detectron's UpdateWorkspaceLr, over whole runs."""
    start_iter, expected = SCHEDULE_GOLDEN[name]
    cfg = _solver_cfg(LR_GOLDEN[name.replace("_resume_at_60000", "")][0])
    opt, param = _one_param_optimizer(cfg)
    scales: list[float] = []
    correct = opt._correct_momentum
    opt._correct_momentum = lambda factor: (scales.append(factor), correct(factor))
    events = []
    caplog.set_level(logging.INFO, logger="rcnn.engine.solver")
    for it in range(start_iter, cfg.SOLVER.MAX_ITER):
        caplog.clear()
        n_before = len(scales)
        lr = opt.set_lr(lr_at_iter(cfg, it), it)
        assert lr == float(lr_at_iter(cfg, it)) == opt.lr
        messages = [r.getMessage() for r in caplog.records]
        if messages or len(scales) > n_before:
            events.append((it, messages, [float(s).hex() for s in scales[n_before:]]))
    assert events == [(it, msgs, [float.fromhex(h).hex() for h in hs]) for it, msgs, hs in expected]
    assert all(type(s) is np.float32 for s in scales)
    product = torch.ones(3)
    for s in scales:
        product *= float(s)  # the buffer was multiplied in float32, factor by factor
    assert torch.equal(opt.state[param]["momentum_buffer"], product)


class Tiny(nn.Module):
    """Parameters named like the real model's (``<component>.<op>.<tensor>``)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict({"conv1": nn.Conv2d(2, 2, 1, bias=False)})
        self.box_head = nn.ModuleDict({"fc6": nn.Linear(3, 2), "fc7": nn.Linear(2, 2)})
        self.backbone.conv1.weight.requires_grad_(False)  # frozen, as TRAIN.FREEZE_AT does


def _tiny_cfg(wd: float = 0.125):
    return _solver_cfg({"WEIGHT_DECAY": wd, "MOMENTUM": 0.5})


def test_param_groups_biases_get_twice_the_gradient_and_no_weight_decay():
    model = Tiny()
    weights, biases = param_groups(model, _tiny_cfg())
    assert weights["params"] == [model.box_head.fc6.weight, model.box_head.fc7.weight]
    assert biases["params"] == [model.box_head.fc6.bias, model.box_head.fc7.bias]
    assert (weights["weight_decay"], weights["grad_scale"]) == (0.125, 1.0)
    assert (biases["weight_decay"], biases["grad_scale"]) == (0.0, 2.0)


def test_hand_computed_updates():
    """Dyadic numbers, so every float32 operation is exact. lr 0.25, momentum 0.5, wd 0.125.

    weight: g = 0.5 + 0.125 * 1 = 0.625; v = 0.25 * 0.625 = 0.15625; p = 0.84375.
            g = 0.5 + 0.125 * 0.84375 = 0.60546875; v = 0.5 * 0.15625 + 0.25 * g = 0.2294921875;
            p = 0.6142578125.
    bias:   g = 2 * 0.5 (no decay); v = 0.25; p = 0.75; then v = 0.125 + 0.25 = 0.375; p = 0.375.
    no grad (weight): g = 0 + 0.125 * 1; v = 0.03125; p = 0.96875 (Detectron updates every blob).
    """
    model = Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    opt = build_optimizer(model, _tiny_cfg())
    assert opt.lr == 0.0
    opt.set_lr(0.25, 0)
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        model.box_head.fc6.weight.grad = torch.full_like(model.box_head.fc6.weight, 0.5)
        model.box_head.fc6.bias.grad = torch.full_like(model.box_head.fc6.bias, 0.5)
        model.backbone.conv1.weight.grad = torch.full_like(model.backbone.conv1.weight, 0.5)  # frozen: ignored
        opt.step()
        if step == 0:
            assert torch.all(model.box_head.fc7.weight == 0.96875)
            assert torch.all(model.box_head.fc7.bias == 1.0)
    assert torch.all(model.box_head.fc6.weight == 0.6142578125)
    assert torch.all(opt.state[model.box_head.fc6.weight]["momentum_buffer"] == 0.2294921875)
    assert torch.all(model.box_head.fc6.bias == 0.375)
    assert torch.all(opt.state[model.box_head.fc6.bias]["momentum_buffer"] == 0.375)
    assert torch.all(model.box_head.fc6.bias.grad == 0.5)  # gradients are left as they were
    assert torch.all(model.backbone.conv1.weight == 1.0)
    assert model.backbone.conv1.weight not in opt.state


def test_mixed_dtypes_update_in_their_own_buckets_and_sparse_gradients_are_refused():
    """Parameters of several dtypes in one group: each gets the hand-computed update (as in
    test_hand_computed_updates: lr 0.25, momentum 0.5, wd 0.125) in its own dtype, and a
    rescaling reaches every buffer."""
    params = [nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3, dtype=torch.float64)),
              nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(2, dtype=torch.float16))]
    opt = MomentumSGD(params, momentum=0.5, weight_decay=0.125)
    opt.set_lr(0.25)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    for p, dtype in zip(params, (torch.float32, torch.float64, torch.float32, torch.float16)):
        buf = opt.state[p]["momentum_buffer"]
        assert p.dtype == buf.dtype == dtype
        assert torch.all(p == 0.84375) and torch.all(buf == 0.15625)
    opt.set_lr(2.5)  # 10x: every buffer rescaled (exactly: 0.15625 * 10 = 1.5625)
    assert all(torch.all(opt.state[p]["momentum_buffer"] == 1.5625) for p in params)
    params[2].grad = torch.zeros(1).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


def test_frozen_parameters_are_refused():
    model = Tiny()
    with pytest.raises(ValueError, match="without requires_grad"):
        MomentumSGD(model.parameters())


def test_momentum_correction_at_the_60000_step(caplog):
    cfg = _solver_cfg()
    opt, param = _one_param_optimizer(cfg)
    opt.state[param]["momentum_buffer"] = torch.tensor([1.0, -3.0, 0.1])
    opt.set_lr(lr_at_iter(cfg, 59999), 59999)  # from 0: logged, not rescaled
    before = opt.state[param]["momentum_buffer"].clone()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="rcnn.engine.solver")
    opt.set_lr(lr_at_iter(cfg, 60000), 60000)
    factor = np.float32(0.002) / np.float32(0.02)
    assert float(factor).hex() == "0x1.99999c0000000p-4"
    assert torch.equal(opt.state[param]["momentum_buffer"], before * float(factor))
    assert [r.getMessage() for r in caplog.records] == [
        "Changing learning rate 0.020000 -> 0.002000 at iter 60000",
        "Scaling update history by 0.100000 (new lr / old lr)"]
    opt.scale_momentum = False
    opt.set_lr(lr_at_iter(cfg, 80000), 80000)
    assert torch.equal(opt.state[param]["momentum_buffer"], before * float(factor))


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    model = Tiny().double()
    twin = Tiny().double()
    twin.load_state_dict(model.state_dict())
    return model, twin


def _random_grads(models, gen):
    for name, p in models[0].named_parameters():
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        for m in models:
            m.get_parameter(name).grad = g.clone()


def test_equivalent_to_pytorch_sgd_with_constant_lr_and_after_corrected_steps():
    """v_caffe2 = lr * v_torch while the lr is constant, and still after a rescaled step change;
    biases: 2x gradient = 2x lr; weight decay added to the gradient in both."""
    model, twin = _pair()
    cfg = _solver_cfg({"WEIGHT_DECAY": 1e-2, "MOMENTUM": 0.9})
    ours = build_optimizer(model, cfg)
    weights, biases = (g["params"] for g in param_groups(twin, cfg))
    lr = float(np.float32(0.02))
    theirs = torch.optim.SGD([{"params": weights, "weight_decay": 1e-2, "lr": lr},
                              {"params": biases, "weight_decay": 0.0, "lr": 2 * lr}], lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    ours.set_lr(lr, 0)
    for it in range(12):
        if it == 6:  # a Detectron step: 0.1x, momentum rescaled on our side
            lr = ours.set_lr(lr * 0.1, it)
            for group, scale in zip(theirs.param_groups, (1, 2)):
                group["lr"] = scale * lr
        _random_grads((model, twin), gen)
        ours.step()
        theirs.step()
        # after the step: the factor is a float32 quotient (Caffe2 computes it so), exact to ~6e-8
        rtol = 1e-12 if it < 6 else 1e-7
        for (name, a), b in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=rtol, atol=0.0, msg=f"{name} at iteration {it}")


def test_not_equivalent_during_warm_up():
    """Small lr changes (ratio <= 1.1) are not rescaled, so the forms differ (Detectron's too)."""
    model, twin = _pair()
    cfg = _solver_cfg({"WEIGHT_DECAY": 0.0})
    ours = build_optimizer(model, cfg)
    theirs = torch.optim.SGD(param_groups(twin, cfg)[0]["params"], lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(2)
    for it in range(3):
        lr = ours.set_lr(lr_at_iter(cfg, it), it)
        theirs.param_groups[0]["lr"] = lr
        _random_grads((model, twin), gen)
        ours.step()
        theirs.step()
    assert not torch.allclose(model.box_head.fc6.weight, twin.box_head.fc6.weight, rtol=1e-12, atol=0)


def test_state_dict_round_trip_weights_only():
    model, twin = _pair()
    cfg = _solver_cfg()
    opt = build_optimizer(model, cfg)
    opt.set_lr(0.01, 0)
    gen = torch.Generator().manual_seed(3)
    _random_grads((model, twin), gen)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    twin.load_state_dict(model.state_dict())
    opt2 = build_optimizer(twin, cfg)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.lr == opt.lr == float(np.float32(0.01))
    _random_grads((model, twin), gen)
    opt.step()
    opt2.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_real_model_groups_match_detectron_momentum_blobs():
    """Faster R-CNN: 72 trainable blobs (Detectron's 72 ``*_momentum``), no AffineChannel, no res2."""
    cfg = load_cfg(CONFIGS / "e2e_faster_rcnn_R-50-FPN_1x.yaml")
    with torch.device("meta"):
        model = build_model(cfg)
    weights, biases = param_groups(model, cfg)
    names = {p: n for n, p in model.named_parameters()}
    trained = [names[p] for p in weights["params"] + biases["params"]]
    assert len(trained) == 72
    assert not any(n.startswith(("backbone.conv1", "backbone.res2")) or "_bn" in n for n in trained)
    assert all(names[p].endswith(".bias") for p in biases["params"])
    assert weights["weight_decay"] == 1e-4 and biases["weight_decay"] == 0.0
