"""RetinaNet training: targets bit-exact against Detectron's roi_data/retinanet.py."""
import numpy as np
import torch

from rcnn.config import load_cfg
from rcnn.data.im_info import ImInfo
from rcnn.data.train_batch import ImageTargets
from rcnn.modeling.retinanet_targets import RetinaNetTargetParams, retinanet_targets
from tests.golden import npz

CONFIG = "configs/12_2017_baselines/retinanet_R-50-FPN_1x.yaml"


def _golden_targets():
    g = npz("retinanet_targets")
    targets = [ImageTargets(0, 0, torch.from_numpy(g[f"im{i}_boxes"]), torch.from_numpy(g[f"im{i}_gt_classes"]).long(),
                            torch.from_numpy(g[f"im{i}_is_crowd"])) for i in (0, 1)]
    scales = [float(g[f"im{i}_scale"]) for i in (0, 1)]
    im_info = ImInfo.of_images(torch.tensor([[0.0, 0.0, s] for s in scales], dtype=torch.float32))
    h, w = (int(v) for v in g["blob_hw"])
    sizes = [(h // 2**lvl, w // 2**lvl) for lvl in range(3, 8)]
    return g, retinanet_targets(sizes, im_info, targets, RetinaNetTargetParams.from_cfg(load_cfg(CONFIG)))


def test_targets_equal_add_retinanet_blobs():
    g, out = _golden_targets()
    assert out.fg_num.dtype == torch.float32 and out.fg_num.item() == g["retnet_fg_num"][0] == 153
    for i, lvl in enumerate(range(3, 8)):
        np.testing.assert_array_equal(out.labels[i].numpy(), g[f"retnet_cls_labels_fpn{lvl}"])
        locs = g[f"retnet_roi_fg_bbox_locs_fpn{lvl}"]
        # Detectron's rows are [image, 4 * anchor (the channel), y, x], as float32.
        ours = out.fg_locs[i].numpy().astype(np.float32) * np.array([1, 4, 1, 1], np.float32)
        np.testing.assert_array_equal(ours, locs)
        np.testing.assert_array_equal(out.fg_targets[i].numpy(), g[f"retnet_roi_bbox_targets_fpn{lvl}"])
    # fg_num counts over the whole field (and best anchors below NEGATIVE_OVERLAP, labelled 0),
    # not only the positives on the feature maps: 133 positives, 153 = 133 + 2 + 18.
    assert sum(int((lb > 0).sum()) for lb in out.labels) == 133


def _focal_oracle(x, t, fg_num, gamma, alpha):
    """``SigmoidFocalLossKernel`` / ``SigmoidFocalLossGradientKernel`` transcribed element by
    element (float64), loss and d loss / d x."""
    n, d_all, h, w = x.shape
    num_anchors = t.shape[1]
    c = d_all // num_anchors
    loss, grad = 0.0, np.zeros(x.shape)
    norm = max(fg_num, 1.0)
    zn, zp = (1 - alpha) / norm, alpha / norm
    for i in np.ndindex(x.shape):
        b, ch, yy, xx = i
        a, d = ch // c, ch % c
        lab = t[b, a, yy, xx]
        c1 = float(lab == d + 1)
        c2 = float(lab != -1 and lab != d + 1)
        v = float(x[i])
        p = 1 / (1 + np.exp(-v))
        log1mp = -v * (v >= 0) - np.log(1 + np.exp(v - 2 * v * (v >= 0)))
        loss += -c1 * (1 - p) ** gamma * np.log(max(p, 1.17549435e-38)) * zp - c2 * p ** gamma * log1mp * zn
        t1 = (1 - p) ** gamma * (1 - p - p * gamma * np.log(max(p, 1.17549435e-38)))
        t2 = p ** gamma * (log1mp * (1 - p) * gamma - p)
        grad[i] = -c1 * zp * t1 - c2 * zn * t2
    return loss, grad


def test_focal_loss_and_gradient_equal_the_caffe2_kernels():
    from rcnn.modeling.retinanet_losses import sigmoid_focal_loss

    rs = np.random.RandomState(0)
    x = rs.normal(0, 3, size=(2, 3 * 4, 3, 5)).astype(np.float32)     # A = 3 anchors, 4 classes
    t = rs.randint(-1, 5, size=(2, 3, 3, 5)).astype(np.int64)
    xt = torch.from_numpy(x).requires_grad_(True)
    loss = sigmoid_focal_loss(xt, torch.from_numpy(t), torch.tensor(7.0), 2.0, 0.25)
    loss.backward()
    ref_loss, ref_grad = _focal_oracle(x, t, 7.0, 2.0, 0.25)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=2e-6)
    np.testing.assert_allclose(xt.grad.numpy(), ref_grad, rtol=2e-5, atol=1e-9)


def test_select_smooth_l1_loss():
    from rcnn.modeling.retinanet_losses import select_smooth_l1_loss

    rs = np.random.RandomState(1)
    deltas = rs.normal(0, 0.3, size=(2, 4 * 3, 4, 6)).astype(np.float32)
    locs = np.array([[0, 1, 2, 3], [1, 2, 0, 5], [1, 0, 3, 0]])
    targets = rs.normal(0, 0.3, size=(3, 4)).astype(np.float32)
    ref = 0.0
    for (b, a, y, x), tg in zip(locs, targets):
        for j in range(4):
            v = abs(float(deltas[b, 4 * a + j, y, x]) - float(tg[j]))
            ref += (0.5 * v * v / 0.11 if v < 0.11 else v - 0.5 * 0.11) / 5.0
    out = select_smooth_l1_loss(torch.from_numpy(deltas), torch.from_numpy(locs), torch.from_numpy(targets),
                                torch.tensor(5.0), 0.11)
    np.testing.assert_allclose(out.item(), ref, rtol=1e-6)
    empty = select_smooth_l1_loss(torch.from_numpy(deltas), torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4),
                                  torch.tensor(5.0), 0.11)
    assert empty.item() == 0.0


def test_training_step_and_prior_init():
    from rcnn.data.train_batch import TrainBatch
    from rcnn.modeling import build_model
    from rcnn.modeling.retinanet import init_retinanet

    cfg = load_cfg(CONFIG)
    model = build_model(cfg).train()
    init_retinanet(model, cfg)
    head = model.retinanet
    bias = getattr(head, head.cls_pred).bias
    assert torch.all(bias == torch.tensor(-np.log(0.99 / 0.01), dtype=torch.float32))
    assert abs(getattr(head, head.cls_convs[0]).weight.std().item() - 0.01) < 1e-3
    gt = ImageTargets(128, 128, torch.tensor([[20.0, 25.0, 90.0, 100.0], [0, 0, 20, 20]]), torch.tensor([3, 7]),
                      torch.tensor([False, False]))
    batch = TrainBatch(torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)),
                       torch.tensor([[128.0, 128.0, 1.0]]), [gt])
    losses = model(batch, None)
    assert sorted(losses) == sorted([f"fl_fpn{lvl}" for lvl in range(3, 8)]
                                    + [f"retnet_loss_bbox_fpn{lvl}" for lvl in range(3, 8)])
    total = sum(losses.values())
    # At the prior, the focal loss is ~ (1 - alpha) * pi^2 * -log(1 - pi) * #negatives / fg_num.
    assert 0.05 < sum(v.item() for k, v in losses.items() if k.startswith("fl_")) < 5
    total.backward()
    assert getattr(head, head.cls_pred).weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad is None           # frozen stem (TRAIN.FREEZE_AT 2)
