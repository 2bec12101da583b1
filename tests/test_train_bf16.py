"""``--precision bf16`` training (opt-in, ``TrainSettings.precision``): ``train`` runs the
backbone and FPN under bf16 autocast (``rcnn.engine.benchmark.bf16_features``), the heads, losses
and parameters stay float32, and a training step's loss stays close to float32's (same
weights, minibatch and samples). The loss curve of a short run is in docs/speed.md."""
import copy
import math

import cv2
import pytest
import torch

from rcnn.config import load_cfg
from rcnn.data.datasets import COCODataset
from rcnn.data.loader import build_train_loader
from rcnn.data.roidb import roidb_from_cfg
from rcnn.engine.benchmark import bf16_features
from rcnn.engine.train_engine import TrainSettings, train
from rcnn.modeling import build_model
from rcnn.modeling.init import init_heads
from rcnn.modeling.rpn_targets import RandomSampler
from rcnn.modeling.training import METRICS
from rcnn.toy import config_path, make_shapes_dataset, recipe_opts, toy_body

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    img_dir, instances, _ = make_shapes_dataset(tmp_path_factory.mktemp("shapes"), 1)
    cfg = load_cfg(config_path("faster"), [*recipe_opts("faster", 1), "TRAIN.SCALES", "(96,)", "TRAIN.MAX_SIZE", "128",
                                                "TEST.SCALE", "96", "TEST.MAX_SIZE", "128"])
    model = build_model(cfg)
    toy_body(model, cfg, cv2.imread(str(min(img_dir.iterdir()))))
    init_heads(model, cfg, cfg.RNG_SEED)
    roidb = roidb_from_cfg(cfg, None, [COCODataset(instances, img_dir)])
    return cfg, model, roidb


class _Stop(Exception):
    pass


def test_train_applies_bf16_to_the_features_only(toy, tmp_path):
    cfg, model, _ = toy
    seen = {}

    def batches(start):
        seen["features"] = m.features
        raise _Stop

    for precision in ("fp32", "bf16"):
        m = copy.deepcopy(model)
        with pytest.raises(_Stop):
            train(cfg, m, batches, CPU, TrainSettings(tmp_path / precision, precision=precision))
        assert (seen["features"].__name__ == "run") == (precision == "bf16")  # bf16_features' wrapper
    with pytest.raises(ValueError, match="fp32 or bf16"):
        train(cfg, copy.deepcopy(model), batches, CPU, TrainSettings(tmp_path, precision="fp16"))


def _step(model, batch, precision):
    model = copy.deepcopy(model).train()
    if precision == "bf16":
        bf16_features(model, CPU)
    out = model(batch, RandomSampler(torch.Generator().manual_seed(0)))
    loss = sum(v for k, v in out.items() if k not in METRICS)
    loss.backward()
    assert all(p.dtype == torch.float32 and (p.grad is None or bool(p.grad.isfinite().all()))
               for p in model.parameters())
    return {k: float(v.detach()) for k, v in out.items() if k not in METRICS}


def test_bf16_step_stays_close_to_fp32(toy):
    cfg, model, roidb = toy
    batch = next(iter(build_train_loader(roidb, cfg, num_workers=0)))
    fp32, bf16 = _step(model, batch, "fp32"), _step(model, batch, "bf16")
    assert fp32 != bf16  # the features really were rounded to bf16
    for name, value in fp32.items():
        assert math.isfinite(bf16[name]) and abs(bf16[name] - value) <= 0.05 * abs(value) + 1e-3, (fp32, bf16)
