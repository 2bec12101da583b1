"""Losses against NumPy transcriptions of the Caffe2 operators Detectron uses.

Targets are real (the ``targets_*.npz`` golden fixtures), logits random. Each reference
below is written from the operator's source (float64): ``SigmoidCrossEntropyLoss`` and
``SmoothL1Loss`` (``modules/detectron/*_op.cu``), ``SoftmaxWithLoss`` and ``Accuracy``
(``caffe2/operators``), including their gradient kernels.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rcnn.modeling.keypoint_targets import KeypointTargets
from rcnn.modeling.losses import fast_rcnn_losses, keypoint_loss, mask_loss, rpn_losses
from rcnn.modeling.mask_targets import MaskTargets
from rcnn.modeling.roi_targets import RoITargets
from rcnn.modeling.rpn_targets import RPNTargets
from tests.golden import npz

LEVELS = [2, 3, 4, 5, 6]
RTOL = 2e-6


def sigmoid_ce(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-element loss and gradient of SigmoidCrossEntropyLoss (0 where t == -1)."""
    pos = (x >= 0).astype(np.float64)
    loss = -x * (t - pos) + np.log1p(np.exp(x - 2 * x * pos))
    grad = 1 / (1 + np.exp(-x)) - t
    ignore = t == -1
    return np.where(ignore, 0, loss), np.where(ignore, 0, grad)


def smooth_l1(pred, target, w_in, w_out, beta):
    """SmoothL1Loss numerator and its gradient before the scale / N."""
    x = w_in * (pred - target)
    loss = np.where(np.abs(x) < beta, 0.5 * x * x / beta, np.abs(x) - 0.5 * beta)
    grad = np.where(np.abs(x) < beta, x / beta, np.sign(x)) * w_in * w_out
    return (w_out * loss).sum(), grad


def softmax_ce(x: np.ndarray, labels: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """SoftmaxWithLoss (spatial=0, weighted) and its gradient."""
    z = x - x.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    total = w.sum()
    rows = np.arange(len(labels))
    loss = -(logp[rows, labels] * w).sum() / total if total != 0 else 0.0
    grad = np.exp(logp)
    grad[rows, labels] -= 1
    grad *= w[:, None] / total if total > 0 else 0
    return loss, grad


def caffe2_accuracy(prob: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy: a row is right when no class beats the label's probability, nor equals it
    at a lower index."""
    rows = np.arange(len(labels))
    p_label = prob[rows, labels][:, None]
    cols = np.arange(prob.shape[1])[None, :]
    beaten = (prob > p_label) | ((prob == p_label) & (cols < labels[:, None]))
    return float(np.float32((beaten.sum(axis=1) == 0).sum()) / np.float32(len(labels)))   # float(correct) / N


def leaf(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32)).requires_grad_(True)


def check(ours: torch.Tensor, ref: float, grad: torch.Tensor | None = None, ref_grad: np.ndarray | None = None):
    np.testing.assert_allclose(float(ours.detach()), ref, rtol=RTOL, atol=1e-9)
    if grad is not None:
        np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-5, atol=1e-9)


def test_rpn_losses_match_caffe2_ops():
    g = npz("targets_mask")
    rng = np.random.RandomState(0)
    def f32(name: str) -> torch.Tensor:
        return torch.from_numpy(g[name])

    targets = RPNTargets([f32(f"rpn_labels_int32_fpn{lv}").long() for lv in LEVELS],
                         [f32(f"rpn_bbox_targets_fpn{lv}") for lv in LEVELS],
                         [f32(f"rpn_bbox_inside_weights_fpn{lv}") for lv in LEVELS],
                         [f32(f"rpn_bbox_outside_weights_fpn{lv}") for lv in LEVELS])
    logits = [leaf(rng.normal(0, 2, t.shape)) for t in targets.labels]
    deltas = [leaf(rng.normal(0, 0.3, t.shape)) for t in targets.bbox_targets]
    out = rpn_losses(logits, deltas, targets, LEVELS, batch_size_per_im=256, ims_per_batch=2)
    assert sorted(out) == sorted([f"loss_rpn_cls_fpn{lv}" for lv in LEVELS] + [f"loss_rpn_bbox_fpn{lv}" for lv in LEVELS])
    sum(out.values()).backward()
    for k, lvl in enumerate(LEVELS):
        x = logits[k].detach().numpy().astype(np.float64)
        loss, grad = sigmoid_ce(x, g[f"rpn_labels_int32_fpn{lvl}"].astype(np.float64))
        check(out[f"loss_rpn_cls_fpn{lvl}"], loss.sum() / 512, logits[k].grad, grad / 512)
        n = deltas[k].shape[0]
        loss, grad = smooth_l1(deltas[k].detach().numpy().astype(np.float64), g[f"rpn_bbox_targets_fpn{lvl}"],
                               g[f"rpn_bbox_inside_weights_fpn{lvl}"], g[f"rpn_bbox_outside_weights_fpn{lvl}"], 1 / 9)
        check(out[f"loss_rpn_bbox_fpn{lvl}"], loss / n, deltas[k].grad, grad / n)
    # Sanity of the normalisation: with all-zero logits each labelled anchor costs log 2.
    labelled = sum(int((t >= 0).sum()) for t in targets.labels)
    zero = rpn_losses([torch.zeros(t.shape) for t in targets.labels], deltas, targets, LEVELS)
    np.testing.assert_allclose(sum(float(zero[f"loss_rpn_cls_fpn{lv}"]) for lv in LEVELS), labelled * np.log(2) / 512,
                               rtol=1e-6)


def _roi_targets(g: dict) -> RoITargets:
    def f32(name: str) -> torch.Tensor:
        return torch.from_numpy(g[name])

    return RoITargets(f32("rois"), f32("labels_int32").long(), f32("bbox_targets"), f32("bbox_inside_weights"),
                      f32("bbox_outside_weights"), torch.zeros(len(g["labels_int32"]), dtype=torch.int64))


def test_fast_rcnn_losses_match_caffe2_ops():
    g = npz("targets_mask")
    rng = np.random.RandomState(1)
    targets = _roi_targets(g)
    n = targets.labels.shape[0]
    cls = leaf(rng.normal(0, 2, (n, 81)))
    box = leaf(rng.normal(0, 1, (n, 324)))
    out = fast_rcnn_losses(cls, box, targets)
    (out["loss_cls"] + out["loss_bbox"]).backward()
    labels = g["labels_int32"].astype(np.int64)
    loss, grad = softmax_ce(cls.detach().numpy().astype(np.float64), labels, np.ones(n))
    check(out["loss_cls"], loss, cls.grad, grad)
    loss, grad = smooth_l1(box.detach().numpy().astype(np.float64), g["bbox_targets"], g["bbox_inside_weights"],
                           g["bbox_outside_weights"], 1.0)
    check(out["loss_bbox"], loss / n, box.grad, grad / n)
    assert float(out["accuracy_cls"]) == caffe2_accuracy(torch.softmax(cls.detach(), 1).numpy(), labels)
    assert not out["accuracy_cls"].requires_grad


def test_accuracy_ties_go_to_the_lower_class_like_caffe2():
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    targets = RoITargets(torch.zeros((3, 5)), torch.tensor([0, 1, 1]), torch.zeros((3, 12)), torch.zeros((3, 12)),
                         torch.zeros((3, 12)), torch.zeros(3, dtype=torch.int64))
    assert float(fast_rcnn_losses(logits, torch.zeros((3, 12)), targets)["accuracy_cls"]) == pytest.approx(2 / 3)


def test_mask_loss_equals_caffe2_on_detectrons_class_specific_blob():
    g = npz("targets_mask")
    rng = np.random.RandomState(2)
    m, k, r = 48, 81, 28
    classes = g["masks_class"][:m].astype(np.int64)
    chan = g["masks_int32_class_channel"][:m].copy()   # the fixture dict is shared
    chan[5] = -1                                      # an all-ignored row, like the bg placeholder
    logits = leaf(rng.normal(0, 3, (m, k, r, r)))
    targets = MaskTargets(torch.zeros((m, 5)), torch.from_numpy(chan.reshape(m, r, r)), torch.from_numpy(classes))
    out = mask_loss(logits, targets, weight=1.0)
    out["loss_mask"].backward()
    # Detectron's masks_int32: (M, K * R * R), -1 outside the class channel
    blob = np.full((m, k, r * r), -1.0)
    blob[np.arange(m), classes] = chan
    loss, grad = sigmoid_ce(logits.detach().numpy().astype(np.float64).reshape(m, k, r * r), blob)
    count = max((blob != -1).sum(), 1e-5)
    check(out["loss_mask"], loss.sum() / count, logits.grad, (grad / count).reshape(m, k, r, r))


def test_keypoint_loss_matches_caffe2_softmax_with_loss():
    g = npz("targets_keypoint")
    rng = np.random.RandomState(3)
    n, j, s = 24, 17, 56
    loc = g["keypoint_locations_int32"][: n * j, 0].astype(np.int64)
    w = g["keypoint_weights"][: n * j, 0].astype(np.float64)
    assert 0 < w.sum() < n * j
    logits = leaf(rng.normal(0, 2, (n, j, s, s)))
    targets = KeypointTargets(torch.zeros((n, 5)), torch.from_numpy(loc.reshape(n, j)),
                              torch.from_numpy(w.reshape(n, j).astype(np.float32)))
    out = keypoint_loss(logits, targets)
    out["loss_kps"].backward()
    loss, grad = softmax_ce(logits.detach().numpy().astype(np.float64).reshape(n * j, s * s), loc, w)
    check(out["loss_kps"], loss, logits.grad, grad.reshape(n, j, s, s))
    # NORMALIZE_BY_VISIBLE_KEYPOINTS off: loss * (#visible / (2 * 512 * 0.25 * 17)), the fixture's
    # keypoint_loss_normalizer (finalize_keypoint_minibatch) for the whole minibatch
    all_visible = float(g["keypoint_weights"].sum())
    assert np.float32(all_visible / (2 * 512 * 0.25 * 17)) == g["keypoint_loss_normalizer"]
    fixed = keypoint_loss(logits, targets, fixed_normalizer=2 * 512 * 0.25 * 17)["loss_kps"]
    np.testing.assert_allclose(float(fixed.detach()), loss * w.sum() / (2 * 512 * 0.25 * 17), rtol=RTOL)


def test_losses_without_examples_are_zero_with_zero_gradients():
    x = torch.randn(2, 17, 56, 56, requires_grad=True)
    none_visible = KeypointTargets(torch.zeros((2, 5)), torch.zeros((2, 17), dtype=torch.int64), torch.zeros((2, 17)))
    loss = keypoint_loss(x, none_visible)["loss_kps"]
    loss.backward()
    assert float(loss.detach()) == 0 and torch.equal(x.grad, torch.zeros_like(x))
    empty = KeypointTargets(torch.zeros((0, 5)), torch.zeros((0, 17), dtype=torch.int64), torch.zeros((0, 17)))
    assert float(keypoint_loss(torch.zeros((0, 17, 56, 56)), empty)["loss_kps"]) == 0
    y = torch.randn(1, 81, 28, 28, requires_grad=True)
    placeholder = MaskTargets(torch.zeros((1, 5)), torch.full((1, 28, 28), -1, dtype=torch.int32),
                              torch.zeros(1, dtype=torch.int64))
    loss = mask_loss(y, placeholder)["loss_mask"]
    loss.backward()
    assert float(loss.detach()) == 0 and torch.equal(y.grad, torch.zeros_like(y))
    no_rois = RoITargets(torch.zeros((0, 5)), torch.zeros(0, dtype=torch.int64), torch.zeros((0, 324)),
                         torch.zeros((0, 324)), torch.zeros((0, 324)), torch.zeros(0, dtype=torch.int64))
    out = fast_rcnn_losses(torch.zeros((0, 81), requires_grad=True), torch.zeros((0, 324)), no_rois)
    assert all(float(v.detach()) == 0 for v in out.values())
