"""Calibrated random weights: meaningful detections without a trained model.

Plain random weights are useless for checking a detection pipeline: the residual
stream grows block after block, RPN sigmoids saturate to exactly 1.0 (hundreds
of ties) and no class passes the score threshold (docs/detectron.md §4.14). Here every
layer is calibrated, in network order, on the activations of a real image:
AffineChannels and GroupNorms normalise their conv's output (like a BN fitted to that image),
other layers are rescaled to a target output mean/std per channel, and
``cls_score`` is biased towards a few classes. The result gives ~100 detections
per image over a handful of classes, scores spread over 0.05-0.9, unsaturated
RPN probabilities, and masks/keypoints that depend on the image.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rcnn.inference.detector import Detector
from rcnn.modeling.generalized_rcnn import GeneralizedRCNN
from rcnn.modeling.group_norm import GroupNorm
from rcnn.modeling.resnet import AffineChannel

logger = logging.getLogger(__name__)


def _channel_stats(y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (dim 1) mean and std over every other dimension."""
    y = y.transpose(0, 1).reshape(y.shape[1], -1).double()
    return y.mean(1), y.std(1).clamp(min=1e-6)


def _calibrate_once(module: nn.Module, fit: Callable[[nn.Module, Tensor], None]) -> None:
    """Before the module's first forward, let ``fit`` adjust it to its input."""
    def hook(mod: nn.Module, args: tuple) -> None:
        handle.remove()
        with torch.no_grad():
            fit(mod, args[0])
    handle = module.register_forward_pre_hook(hook)


def _fit_affine(gain: float) -> Callable[[nn.Module, Tensor], None]:
    def fit(mod: nn.Module, x: Tensor) -> None:
        mean, std = _channel_stats(x)
        mod.scale.copy_((gain / std).float())
        mod.bias.copy_((-mean * gain / std).float())
    return fit


def _fit_group_norm(gain: float) -> Callable[[nn.Module, Tensor], None]:
    """Like ``_fit_affine``, on the group-normalised input: each output channel gets std ``gain``."""
    def fit(mod: nn.Module, x: Tensor) -> None:
        mean, std = _channel_stats(F.group_norm(x, mod.num_groups, eps=mod.eps))
        mod.scale.copy_((gain / std).float())
        mod.bias.copy_((-mean * gain / std).float())
    return fit


def _calibrate_hidden(layers) -> None:
    """Unit-std hidden layers: a conv/linear with a bias is rescaled, a ``ConvGN`` conv (no bias)
    is left to its GroupNorm, which is fitted instead."""
    for layer in layers:
        if isinstance(layer, GroupNorm):
            _calibrate_once(layer, _fit_group_norm(1.0))
        elif layer.bias is not None:
            _calibrate_once(layer, _fit_layer(0.0, 1.0))


def _fit_layer(target_mean: Tensor | float, target_std: Tensor | float,
               centre: bool = False) -> Callable[[nn.Module, Tensor], None]:
    """Rescale a conv/linear so each output channel has the target mean and std.

    ``centre`` (convs and linear layers): first remove from each filter its component
    along the mean input, so the output mean is the bias alone. Images with more contrast
    than the calibration image then widen the output's spread around the target mean
    instead of shifting it: RPN and class logits stay unsaturated on other images.
    """
    def fit(mod: nn.Module, x: Tensor) -> None:
        mod.bias.zero_()
        if centre:
            mu, _ = _channel_stats(x)
            w = mod.weight.view(mod.weight.shape[0], -1).double()
            mu = mu.repeat_interleave(w.shape[1] // mu.numel())   # a conv's taps see the same mean
            w -= (w @ mu)[:, None] * mu[None, :] / (mu @ mu)
            mod.weight.copy_(w.view_as(mod.weight).float())
        mean, std = _channel_stats(mod(x))
        gain = torch.as_tensor(target_std, dtype=torch.float64) / std
        shape = (-1,) + (1,) * (mod.weight.dim() - 1)
        if isinstance(mod, nn.ConvTranspose2d):
            mod.weight.mul_(gain.float().view(1, -1, *([1] * (mod.weight.dim() - 2))))
        else:
            mod.weight.mul_(gain.float().view(shape))
        mod.bias.copy_((torch.as_tensor(target_mean, dtype=torch.float64) - mean * gain).float())
    return fit


def calibrate(model: GeneralizedRCNN, cfg, image: np.ndarray, seed: int = 0, num_favoured: int = 10) -> None:
    """Randomise ``model``'s weights from ``seed`` and calibrate them on one BGR image."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                fan_in = mod.weight[0].numel() if not isinstance(mod, nn.ConvTranspose2d) else mod.weight[:, 0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if mod.bias is not None:
                    mod.bias.zero_()

    # C4 models (rcnn.modeling.c4) have no FPN and their res5 is the box head's.
    resnet = [model.backbone] + ([model.box_head.res5] if hasattr(getattr(model, "box_head", None), "res5") else [])
    for name, mod in (item for part in resnet for item in part.named_modules()):
        # Damp the residual branches so the stream stays O(1) through 16 (or 50) blocks.
        gain = 0.4 if name.endswith(("branch2c_bn", "branch2c_gn")) else 1.0
        if isinstance(mod, AffineChannel):
            _calibrate_once(mod, _fit_affine(gain))
        elif isinstance(mod, GroupNorm):
            _calibrate_once(mod, _fit_group_norm(gain))
    _calibrate_hidden(model.fpn.children() if hasattr(model, "fpn") else ())
    if cfg.RETINANET.RETINANET_ON:
        _calibrate_retinanet_head(model.retinanet, cfg.MODEL.NUM_CLASSES, gen, num_favoured)
        dets = Detector(model, cfg)([image])[0]
        logger.info("calibrated on one image: %d detections over %d classes", len(dets), len(np.unique(dets.classes)))
        return
    conv, cls, bbox = (getattr(model.rpn, n) for n in model.rpn.names)
    _calibrate_once(conv, _fit_layer(0.0, 1.0))
    _calibrate_once(cls, _fit_layer(-3.0, 0.5, centre=True))   # probabilities well inside (0, 1)
    _calibrate_once(bbox, _fit_layer(0.0, 0.15))

    num_classes = cfg.MODEL.NUM_CLASSES
    favoured = torch.randperm(num_classes - 1, generator=gen)[: min(num_favoured, num_classes - 1)] + 1
    cls_mean = torch.full((num_classes,), -4.0, dtype=torch.float64)
    cls_mean[0] = 3.5
    # Fewer favoured classes (e.g. the keypoint model's person) each need more RoIs
    # over the 0.05 threshold for ~100 detections per image after NMS; so do fewer
    # RoIs than the 1000 of the zoo configs (e.g. C4 tests, whose res5 head is costly).
    post_nms = cfg.TEST.RPN_POST_NMS_TOP_N
    fewer_rois = max(1.0, 1000 / post_nms) if post_nms > 0 else 1.0
    cls_mean[favoured] = -1.0 + 0.5 * math.log(num_favoured / len(favoured)) + 0.5 * math.log(fewer_rois)
    box = model.box_head
    # The C4 box head's hidden layers are its res5 blocks, calibrated with the body above.
    _calibrate_hidden(m for m in box.children() if m not in (box.cls_score, box.bbox_pred)
                      and not isinstance(m, nn.ModuleList))
    _calibrate_once(box.cls_score, _fit_layer(cls_mean, 0.7, centre=True))
    _calibrate_once(box.bbox_pred, _fit_layer(0.0, 1.0))
    # Mask/keypoint heads: unit-std hidden layers, logits with std 2 (masks and
    # heatmap maxima well defined, no ties).
    heads = []
    if cfg.MODEL.MASK_ON:
        m = model.mask_head
        heads.append(([c for c in m.children() if c is not m.mask_fcn_logits], m.mask_fcn_logits))
    if cfg.MODEL.KEYPOINTS_ON:
        k = model.keypoint_head
        heads.append(([getattr(k, n) for n in k.conv_names], k.kps_score_lowres))
    for hidden, logits in heads:
        _calibrate_hidden(hidden)
        _calibrate_once(logits, _fit_layer(0.0, 2.0))

    dets = Detector(model, cfg)([image])[0]
    logger.info("calibrated on one image: %d detections over %d classes", len(dets), len(np.unique(dets.classes)))


def _calibrate_retinanet_head(head: nn.Module, num_classes: int, gen: torch.Generator, num_favoured: int) -> None:
    """Unit-std towers; class logits around -7 (probability ~0.001) except a few favoured
    classes around -5, so that a few hundred anchors per image pass the 0.05 threshold."""
    for name in head.cls_convs + head.bbox_convs:
        _calibrate_once(getattr(head, name), _fit_layer(0.0, 1.0))
    favoured = torch.randperm(num_classes - 1, generator=gen)[: min(num_favoured, num_classes - 1)]
    class_mean = torch.full((num_classes - 1,), -7.0, dtype=torch.float64)
    class_mean[favoured] = -5.0
    cls_pred = getattr(head, head.cls_pred)
    num_anchors = cls_pred.out_channels // (num_classes - 1)
    # Channel a * (K - 1) + c; centred like cls_score, so brighter images do not shift every logit up.
    _calibrate_once(cls_pred, _fit_layer(class_mean.repeat(num_anchors), 0.7, centre=True))
    _calibrate_once(getattr(head, head.bbox_pred), _fit_layer(0.0, 0.1))


def synthetic_detectron_blobs(model: GeneralizedRCNN, seed: int = 0) -> tuple[dict[str, np.ndarray], set[str]]:
    """Every blob a real Detectron checkpoint of this model holds, from ``model``'s weights.

    Parameters as Python-2 ``str`` keys; ``<param>_momentum`` for the trained parameters
    and the 55 preserved ImageNet blobs (zero conv biases, ``fc1000_*``) as ``unicode``
    keys, as Detectron wrote them (docs/detectron.md §1.4, §1.6). Returns (blobs, unicode keys).
    """
    from convert.checkpoint import momentum_blob_names, preserved_imagenet_shapes
    from rcnn.naming import key_to_blob

    blobs = {key_to_blob(k): v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    rng = np.random.default_rng(seed)
    extra: dict[str, np.ndarray] = {}
    for name in momentum_blob_names(model):
        extra[name] = (rng.standard_normal(blobs[name[: -len("_momentum")]].shape) * 1e-4).astype(np.float32)
    for name, shape in preserved_imagenet_shapes({b: a.shape for b, a in blobs.items()}).items():
        extra[name] = (np.zeros(shape, np.float32) if not name.startswith("fc1000")
                       else (rng.standard_normal(shape) * 0.01).astype(np.float32))
    blobs.update(extra)
    return blobs, set(extra)


def write_synthetic_detectron_pkl(cfg, image: np.ndarray, path: str, seed: int = 0,
                                  with_extras: bool = True) -> GeneralizedRCNN:
    """Calibrate a model on ``image`` and save it as a Detectron ``model_final.pkl`` would be.

    Written with the project's Python-2-compatible pickle writer, embedding a Detectron-style
    tagged cfg YAML (the December-2017 layout of the model-zoo files). ``with_extras``
    adds the momentum and preserved ImageNet blobs real files carry (about doubling the
    size). Returns the model.
    """
    from convert.detectron_cfg import dump_detectron_cfg
    from convert.pickle_io import write_detectron_pkl
    from rcnn.modeling import build_model
    from rcnn.naming import key_to_blob

    model = build_model(cfg)
    calibrate(model, cfg, image, seed)
    if with_extras:
        blobs, unicode_keys = synthetic_detectron_blobs(model, seed)
    else:
        blobs = {key_to_blob(k): v.numpy() for k, v in model.state_dict().items()}
        unicode_keys = set()
    write_detectron_pkl(path, blobs, dump_detectron_cfg(cfg), unicode_keys=unicode_keys)
    return model


def write_related_detectron_pkl(source_pkl: str, cfg, path: str) -> None:
    """From an end-to-end synthetic ``.pkl``, the file of a model that shares its blobs: an
    RPN-only model (body, FPN, RPN) or one on precomputed proposals (body, FPN, RoI heads).

    Calibration needs RoIs from an RPN, so such models are derived from a calibrated
    end-to-end file rather than calibrated themselves; the embedded cfg is ``cfg``'s.
    """
    from convert.detectron_cfg import dump_detectron_cfg
    from convert.pickle_io import read_detectron_pkl, write_detectron_pkl
    from rcnn.modeling import build_model
    from rcnn.naming import key_to_blob

    names = {key_to_blob(k) for k in build_model(cfg).state_dict()}
    blobs = read_detectron_pkl(source_pkl).blobs
    write_detectron_pkl(path, {b: a for b, a in blobs.items() if b in names}, dump_detectron_cfg(cfg))
