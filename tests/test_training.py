"""Training end to end on CPU (the shipped CC BY images, tests/data): the loss goes down, resuming is bit-identical, and two
processes equal one process accumulating two minibatches (docs/detectron.md §5.1)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from convert.checkpoint import read_checkpoint
from convert.pickle_io import read_detectron_pkl, write_detectron_pkl
from rcnn.config import load_cfg
from rcnn.data.preprocess import read_image
from rcnn.modeling import build_model
from rcnn.naming import key_to_blob
from rcnn.synthetic import calibrate
from tests.conftest import REPO_ROOT
from tests.models import CALIBRATION_IMAGE, CONFIGS

TRAIN = str(REPO_ROOT / "tools" / "train_net_step.py")
# A tiny recipe: 1 "GPU" x 2 images, scale 256, a few iterations, a snapshot every iteration.
TINY = ["TRAIN.SCALES", "(256,)", "TRAIN.MAX_SIZE", "427", "SOLVER.BASE_LR", "0.005", "SOLVER.WARM_UP_ITERS", "1",
        "TRAIN.SNAPSHOT_ITERS", "1", "TRAIN.RPN_PRE_NMS_TOP_N", "500", "TRAIN.RPN_POST_NMS_TOP_N", "500",
        "TRAIN.BATCH_SIZE_PER_IM", "128"]


@pytest.fixture(scope="module")
def imagenet_pkl(test_data, tmp_path_factory):
    """An 'ImageNet' R-50.pkl: the calibrated body of a synthetic model (sane activations)."""
    cfg = load_cfg(CONFIGS["faster"], ["TEST.SCALE", "256", "TEST.MAX_SIZE", "427"])
    model = build_model(cfg)
    calibrate(model, cfg, read_image(test_data / CALIBRATION_IMAGE))
    path = tmp_path_factory.mktemp("imagenet") / "R-50.pkl"
    write_detectron_pkl(path, {key_to_blob("backbone." + k): v.numpy() for k, v in model.backbone.state_dict().items()},
                        None)
    return path


def _train(test_data, imagenet_pkl, out, kind="mask", opts=(), env=None, nproc=1, check=True):
    mini = test_data / "coco-cc-by"
    args = [TRAIN, "--cfg", str(CONFIGS[kind]), "--json", str(mini / "instances_val2017.json"),
            "--images", str(mini / "val2017"), "--imagenet_weights", str(imagenet_pkl), "--output_dir", str(out),
            "--nw", "0", "--device", "cpu", "--set", *TINY, *opts]
    if nproc > 1:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), *args]
    else:
        cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _stats(out):
    return [json.loads(line.split("json_stats: ", 1)[1]) for line in (out / "train.log").read_text().splitlines()
            if "json_stats: " in line]


def _weights(path):
    return read_checkpoint(path).state_dict


def test_training_run_logs_snapshots_and_exports(test_data, imagenet_pkl, tmp_path):
    out = tmp_path / "run"
    _train(test_data, imagenet_pkl, out, opts=["NUM_GPUS", "1", "SOLVER.MAX_ITER", "3"])
    stats = _stats(out)
    assert [s["iter"] for s in stats] == [0, 2]            # every 20 iterations and the last one
    keys = {"loss", "loss_cls", "loss_bbox", "loss_mask", "accuracy_cls", "lr", "eta", "time", "mem", "mb_qsize",
            *(f"loss_rpn_{t}_fpn{lvl}" for t in ("cls", "bbox") for lvl in range(2, 7))}
    assert set(stats[0]) == keys | {"iter"}
    assert stats[0]["lr"] == round(0.005 / 3, 6)          # linear warm-up starts at 1/3 (6 decimals logged)
    assert all(v == v for s in stats for k, v in s.items() if k != "eta")   # no NaN
    ckpt = out / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model_final.pkl", "model_final.pt", "model_iter1.pt",
                                                      "model_iter2.pt"]
    final = read_checkpoint(ckpt / "model_final.pt")
    assert final.meta["iter"] == 2 and final.meta["weights_source"] == "scratch"
    blobs = read_detectron_pkl(ckpt / "model_final.pkl").blobs
    assert len(blobs) == 201 + 84                            # params + momentum, like Detectron's files
    frozen = build_model(load_cfg(CONFIGS["mask"])).backbone.res2[0].branch2a.weight
    assert not frozen.requires_grad                         # TRAIN.FREEZE_AT = 2
    init = read_detectron_pkl(imagenet_pkl).blobs
    assert (torch.from_numpy(init["res2_0_branch2a_w"]) == final.state_dict["backbone.res2.0.branch2a.weight"]).all()
    assert not (torch.from_numpy(init["res3_0_branch2a_w"]) == final.state_dict["backbone.res3.0.branch2a.weight"]).all()


def test_loss_goes_down_on_a_fixed_batch(test_data, imagenet_pkl):
    """A few steps on the same minibatch lower its loss (the gradients are right)."""
    from rcnn.data.loader import build_train_loader
    from rcnn.data.roidb import open_datasets, roidb_from_cfg
    from rcnn.engine.solver import build_optimizer
    from rcnn.engine.weights import load_imagenet_backbone
    from rcnn.modeling.init import init_heads
    from rcnn.modeling.sampler import RandomSampler
    from rcnn.modeling.training import METRICS

    mini = test_data / "coco-cc-by"
    cfg = load_cfg(CONFIGS["faster"], TINY + ["NUM_GPUS", "1"])
    roidb = roidb_from_cfg(cfg, None, open_datasets([(mini / "instances_val2017.json", mini / "val2017")]))
    batch = next(iter(build_train_loader(roidb, cfg, num_workers=0)))
    model = build_model(cfg)
    init_heads(model, cfg)
    load_imagenet_backbone(model, imagenet_pkl)
    model.train()
    opt = build_optimizer(model, cfg)
    opt.set_lr(0.003)   # at 0.01 a step overshoots on this batch (loss 6.2 -> 9.8 -> 2.9 -> ...)
    totals = []
    for _ in range(6):
        opt.zero_grad()
        out = model(batch, RandomSampler(torch.Generator().manual_seed(0)))
        loss = sum(v for k, v in out.items() if k not in METRICS)
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert totals[-1] < 0.8 * totals[0], totals


def test_resume_is_bit_identical(test_data, imagenet_pkl, tmp_path):
    opts = ["NUM_GPUS", "1", "SOLVER.MAX_ITER", "3"]
    full = tmp_path / "full"
    _train(test_data, imagenet_pkl, full, kind="faster", opts=opts)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for name in ("model_final.pt", "model_final.pkl", "model_iter2.pt"):
        (resumed / "ckpt" / name).unlink()
    proc = _train(test_data, imagenet_pkl, resumed, kind="faster", opts=opts)
    assert "resuming from" in proc.stderr and "at iteration 2" in proc.stderr
    a, b = _weights(full / "ckpt" / "model_final.pt"), _weights(resumed / "ckpt" / "model_final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = read_checkpoint(full / "ckpt" / "model_final.pt").extra_blobs, \
        read_checkpoint(resumed / "ckpt" / "model_final.pt").extra_blobs
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_two_processes_equal_one_accumulating_two(test_data, imagenet_pkl, tmp_path):
    """NUM_GPUS 2 recipe: 2 gloo processes x 2 images == 1 process x iter_size 2 (one thread each:
    CPU conv rounding depends on the thread count)."""
    opts = ["NUM_GPUS", "2", "SOLVER.MAX_ITER", "2", "TRAIN.SNAPSHOT_ITERS", "2"]
    env = {"OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    proc = _train(test_data, imagenet_pkl, one, kind="faster", opts=opts, env=env)
    assert "x iter_size 2 = 4 images/iter" in proc.stderr
    two = tmp_path / "two"
    proc = _train(test_data, imagenet_pkl, two, kind="faster", opts=opts, env=env, nproc=2)
    assert "2 process(es) x 2 images x iter_size 1 = 4 images/iter" in proc.stderr
    a, b = _weights(one / "ckpt" / "model_final.pt"), _weights(two / "ckpt" / "model_final.pt")
    init = torch.from_numpy(read_detectron_pkl(imagenet_pkl).blobs["res3_0_branch2a_w"])
    assert not torch.equal(a["backbone.res3.0.branch2a.weight"], init)      # training moved the weights
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert _stats(one)[-1]["loss"] == pytest.approx(_stats(two)[-1]["loss"], rel=1e-4)


def test_bad_inputs_exit_2(test_data, imagenet_pkl, tmp_path):
    proc = _train(test_data, imagenet_pkl, tmp_path / "o", opts=["NUM_GPUS", "2"], check=False)
    assert proc.returncode == 2 and "snapshot period" in proc.stderr.strip().splitlines()[-1]
    proc = _train(test_data, tmp_path / "missing.pkl", tmp_path / "o", opts=["SOLVER.MAX_ITER", "1"], check=False)
    assert proc.returncode == 2 and "missing.pkl does not exist" in proc.stderr.strip().splitlines()[-1]
    proc = _train(test_data, tmp_path / "missing.pkl", tmp_path / "o", kind="keypoint", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "MODEL.NUM_CLASSES 2" in last      # instances json with the keypoint config


def test_retinanet_trains_through_the_loop_and_exports(test_data, imagenet_pkl, tmp_path):
    """RetinaNet (focal loss, prior init) runs through train_net_step like the R-CNN models: its
    per-level loss keys are logged and the final model is exported to a Detectron .pkl."""
    mini, out = test_data / "coco-cc-by", tmp_path / "retina"
    cfg = REPO_ROOT / "configs" / "12_2017_baselines" / "retinanet_R-50-FPN_1x.yaml"
    proc = subprocess.run(
        [sys.executable, TRAIN, "--cfg", str(cfg), "--json", str(mini / "instances_val2017.json"),
         "--images", str(mini / "val2017"), "--imagenet_weights", str(imagenet_pkl), "--output_dir", str(out),
         "--nw", "0", "--device", "cpu", "--set", "TRAIN.SCALES", "(160,)", "TRAIN.MAX_SIZE", "267",
         "SOLVER.BASE_LR", "0.005", "SOLVER.WARM_UP_ITERS", "1", "NUM_GPUS", "1", "SOLVER.MAX_ITER", "2"],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = _stats(out)
    assert [s["iter"] for s in stats] == [0, 1]
    levels = range(3, 8)
    assert {f"fl_fpn{lvl}" for lvl in levels} | {f"retnet_loss_bbox_fpn{lvl}" for lvl in levels} <= set(stats[0])
    assert all(v == v and v >= 0 for s in stats for k, v in s.items() if k not in ("eta", "iter"))
    blobs = read_detectron_pkl(out / "ckpt" / "model_final.pkl").blobs
    with torch.device("meta"):
        names = {key_to_blob(k) for k in build_model(load_cfg(cfg)).state_dict()}
    assert names <= set(blobs) and "retnet_cls_pred_fpn3_b_momentum" in blobs
