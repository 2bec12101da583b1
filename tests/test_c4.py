"""ResNet-C4 models (rcnn.modeling.c4): Detectron's blob names (the real Caffe2 graph), C4 anchors,
single-level proposals, unpadded blobs and mask RoIs against Detectron's own functions, Caffe2's
adaptive RoIAlign, and synthetic R-50-C4 Faster/Mask .pkl files run end to end on real images."""
import hashlib
import re

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from torchvision.ops import roi_align

from convert.kinds import cfg_for_file, detect_kind, orphan_group
from convert.pickle_io import read_detectron_pkl
from rcnn.config import load_cfg
from rcnn.data.im_info import ImInfo
from rcnn.data.preprocess import images_to_blob, read_image
from rcnn.engine.weights import load_model
from rcnn.inference.detector import Detector, _batches, rois_for_heads
from rcnn.modeling import build_model
from rcnn.modeling.c4 import C4_LEVEL, ResNetC4RCNN
from rcnn.modeling.proposals import ProposalParams, generate_proposals
from rcnn.naming import key_to_blob
from rcnn.ops.anchors import cell_anchors, grid_anchors
from rcnn.synthetic import write_synthetic_detectron_pkl
from tests.conftest import REPO_ROOT
from tests.golden import js, npz

CONFIGS = {kind: REPO_ROOT / f"configs/12_2017_baselines/e2e_{kind}_rcnn_R-50-C4_1x.yaml" for kind in ("faster", "mask")}
# Small scale and few RoIs: the res5 head runs per RoI (the real 800/1333 path runs once, below).
SMALL = ["TEST.SCALE", "224", "TEST.MAX_SIZE", "533", "TEST.RPN_PRE_NMS_TOP_N", "1000", "TEST.RPN_POST_NMS_TOP_N", "100"]
IMAGES = ["000000397133.jpg", "000000553664.jpg"]   # shipped, CC BY (tests/data)
GRAPH = "detectron-c2-e2e_faster_rcnn_R-50-C4_1x/predict_net.pbtxt"


def _image(data, name, folder="coco-cc-by"):
    return read_image(data / folder / "val2017" / name)


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------
def _graph_ops(text: str) -> list[tuple[str, list[str]]]:
    """(type, inputs) of every op of a predict_net.pbtxt."""
    ops = []
    for body in re.findall(r"^op \{\n(.*?)^\}", text, flags=re.DOTALL | re.MULTILINE):
        ops.append((re.search(r'^  type: "([^"]+)"', body, flags=re.MULTILINE).group(1),
                    re.findall(r'^  input: "([^"]+)"', body, flags=re.MULTILINE)))
    return ops


def test_names_equal_the_real_detectron_graph_up_to_bn_folding(test_data):
    """116 parameter blobs in the exported graph; ours are those plus the 53 ``*_bn_s``.

    The exporter folded each AffineChannel ``y = conv(x) * s + b`` into its (bias-free) conv:
    the weight blob keeps its name ``<conv>_w`` (now holding ``w * s``), ``<conv>_bn_b`` becomes
    the conv's bias input unchanged, and ``<conv>_bn_s`` and the AffineChannel op disappear.
    So the only difference is exactly one ``_bn_s`` per ResNet conv, and each ``_bn_b`` is the
    bias of the conv whose weight is ``<conv>_w``.
    """
    text = (test_data / GRAPH).read_text()
    ops = _graph_ops(text)
    outputs = set(re.findall(r'output: "([^"]+)"', text))
    graph = {name for _, inputs in ops for name in inputs} - outputs - {"data", "im_info", "anchor"}
    assert len(graph) == 116

    model = build_model(load_cfg(CONFIGS["faster"]))
    ours = {key_to_blob(k) for k in model.state_dict()}
    folded = ours - graph
    assert graph < ours and len(ours) == 169 and len(folded) == 53
    convs = {b[: -len("_w")] for b in ours if re.match(r"^(conv1|res\d_\d+_branch(1|2[abc]))_w$", b)}
    bn_prefix = {c: ("res_conv1" if c == "conv1" else c) + "_bn" for c in convs}
    assert folded == {bn_prefix[c] + "_s" for c in convs}
    assert "AffineChannel" not in {op for op, _ in ops}
    conv_bias = {inputs[1]: inputs[2] for op, inputs in ops if op == "Conv" and inputs[1][:-2] in convs}
    assert conv_bias == {c + "_w": bn_prefix[c] + "_b" for c in convs}
    # The single-level RPN and the res5 head carry no level suffix.
    assert {"conv_rpn_w", "rpn_cls_logits_w", "rpn_bbox_pred_w", "res5_2_branch2c_w", "cls_score_w"} <= graph
    sd = model.state_dict()
    assert tuple(sd["rpn.rpn_cls_logits.weight"].shape) == (15, 1024, 1, 1)
    assert tuple(sd["box_head.cls_score.weight"].shape) == (81, 2048)


def test_mask_model_adds_only_the_v0upshare_outputs():
    faster = {key_to_blob(k) for k in build_model(load_cfg(CONFIGS["faster"])).state_dict()}
    model = build_model(load_cfg(CONFIGS["mask"]))
    blobs = {key_to_blob(k): tuple(v.shape) for k, v in model.state_dict().items()}
    # Detectron's test-time _[mask]_res5_* are filled from res5_*: one res5 here, shared.
    assert {b: s for b, s in blobs.items() if b not in faster} == {
        "conv5_mask_w": (2048, 256, 2, 2), "conv5_mask_b": (256,),
        "mask_fcn_logits_w": (81, 256, 1, 1), "mask_fcn_logits_b": (81,)}
    assert isinstance(model, ResNetC4RCNN) and not hasattr(model, "fpn")


def test_rpn_only_c4_builds_body_and_rpn():
    model = build_model(load_cfg(REPO_ROOT / "configs/12_2017_baselines/rpn_R-50-C4_1x.yaml"))
    blobs = {key_to_blob(k) for k in model.state_dict()}
    assert not hasattr(model, "box_head") and len(blobs) == 129 + 6   # stem + res2..res4, RPN
    assert not any(b.startswith("res5") for b in blobs)


# ---------------------------------------------------------------------------------------------
# Detectron's NumPy side, bit-exact
# ---------------------------------------------------------------------------------------------
def test_c4_anchors_equal_generate_anchors():
    g = npz("c4_proposals")
    model = build_model(load_cfg(CONFIGS["faster"]))
    sizes, = model.anchor_sizes
    assert sizes == tuple(g["sizes"]) and tuple(model.cfg.RPN.ASPECT_RATIOS) == tuple(g["aspect_ratios"])
    np.testing.assert_array_equal(cell_anchors(2**C4_LEVEL, sizes, (0.5, 1, 2)), g["cell_anchors"])
    grid = grid_anchors(2**C4_LEVEL, sizes, (0.5, 1, 2), 3, 5)
    assert grid.dtype == torch.float32
    np.testing.assert_array_equal(grid.numpy().astype(np.float64), g["shifted_anchors_3x5"])


@pytest.mark.parametrize("case", ["c4_test", "c4_small"])
def test_single_level_proposals_at_c4_test_settings(case):
    """GenerateProposalsOp with the C4 config (6000 / 1000); c4_test has 57000 anchors, c4_small 4200."""
    g = npz("c4_proposals")
    cfg = load_cfg(CONFIGS["faster"])
    params = ProposalParams.from_cfg(cfg, train=False)
    assert (params.pre_nms_top_n, params.post_nms_top_n, params.nms_thresh, params.min_size) == (6000, 1000, 0.7, 0)
    rois, probs = generate_proposals([torch.from_numpy(g[f"{case}_scores"])], [torch.from_numpy(g[f"{case}_deltas"])],
                                     ImInfo(torch.from_numpy(g[f"{case}_im_info"]), padded=True), [C4_LEVEL],
                                     [tuple(cfg.RPN.SIZES)], cfg.RPN.ASPECT_RATIOS, params)
    np.testing.assert_array_equal(rois.numpy(), g[f"{case}_rois"])
    np.testing.assert_array_equal(probs.numpy(), g[f"{case}_probs"][:, 0])


def test_mask_rois_from_c4_boxes():
    """im_detect_bbox's ``rois / im_scale`` then ``_get_rois_blob`` (single level: no FPN split)."""
    g = npz("c4_proposals")
    rois = torch.from_numpy(g["c4_test_rois"])
    scale = float(g["im_scale"])
    boxes = rois[:, 1:5] / torch.tensor([scale], dtype=torch.float32)   # as Detector._forward_batch
    np.testing.assert_array_equal(boxes.numpy(), g["orig_boxes"])
    out = rois_for_heads(boxes, torch.zeros(len(boxes), dtype=torch.long), [scale])
    np.testing.assert_array_equal(out.numpy(), g["mask_rois"])


@pytest.mark.parametrize("run", js("c4_preprocess_cc_by")["runs"], ids=lambda r: f"{r['file']}@{r['target_scale']}")
def test_c4_blob_is_not_padded(test_data, run):
    check_c4_blob(_image(test_data, run["file"]), run)


def test_c4_blob_is_not_padded_on_coco_mini(shared_data):
    """c4_preprocess's 3 runs on coco-mini, one test: it needs ../shared."""
    for run in js("c4_preprocess")["runs"]:
        check_c4_blob(_image(shared_data, run["file"], "coco-mini-val2017"), run)


def check_c4_blob(im, run):
    cfg = load_cfg(CONFIGS["faster"], ["TEST.SCALE", str(run["target_scale"]), "TEST.MAX_SIZE", str(run["max_size"])])
    det = Detector(torch.nn.Identity(), cfg)   # only its preprocessing is used
    p = det.prepare(im)
    assert det.blob_stride == 1
    blob = images_to_blob([p.data], det.blob_stride)
    assert list(blob.shape) == run["blob_shape"]
    assert hashlib.sha256(blob.tobytes()).hexdigest() == run["blob_sha256"]
    assert float(p.scale).hex() == run["im_scale_hex"]
    im_info = np.array([blob.shape[2], blob.shape[3], p.scale], np.float32)
    assert [float(v).hex() for v in im_info] == run["im_info_float32_hex"]


def test_batches_group_c4_images_by_exact_size():
    """Without padding, images whose /32-padded sizes agree still differ: never batched together."""
    class P:
        def __init__(self, h, w):
            self.data = np.zeros((h, w, 3), np.float32)
    prepared = [P(224, 337), P(224, 330), P(224, 337)]
    assert list(_batches(prepared, 4, 1)) == [[0, 2], [1]]
    assert list(_batches(prepared, 4, 32)) == [[0, 1, 2]]


def _caffe2_roi_align(feat: np.ndarray, roi: np.ndarray, pooled: int, scale: float, sampling_ratio: int) -> np.ndarray:
    """Caffe2's CPU ``RoIAlign`` (roi_align_op.cc, legacy unaligned) for one RoI, written out in float32."""
    f32 = np.float32
    _, h, w = feat.shape
    x1, y1, x2, y2 = (f32(v) * f32(scale) for v in roi[1:])
    rw, rh = max(x2 - x1, f32(1)), max(y2 - y1, f32(1))
    bw, bh = rw / f32(pooled), rh / f32(pooled)
    gh = sampling_ratio if sampling_ratio > 0 else int(np.ceil(rh / f32(pooled)))
    gw = sampling_ratio if sampling_ratio > 0 else int(np.ceil(rw / f32(pooled)))
    out = np.zeros((feat.shape[0], pooled, pooled), np.float32)
    for ph in range(pooled):
        for pw in range(pooled):
            acc = np.zeros(feat.shape[0], np.float32)
            for iy in range(gh):
                y = y1 + f32(ph) * bh + f32(iy + 0.5) * bh / f32(gh)
                for ix in range(gw):
                    x = x1 + f32(pw) * bw + f32(ix + 0.5) * bw / f32(gw)
                    if y < -1 or y > h or x < -1 or x > w:
                        continue
                    y, x = max(y, f32(0)), max(x, f32(0))
                    yl, xl = int(y), int(x)
                    yh, xh = min(yl + 1, h - 1), min(xl + 1, w - 1)
                    if yl >= h - 1:
                        yl = yh = h - 1
                        y = f32(yl)
                    if xl >= w - 1:
                        xl = xh = w - 1
                        x = f32(xl)
                    ly, lx = y - f32(yl), x - f32(xl)
                    hy, hx = f32(1) - ly, f32(1) - lx
                    acc += (hy * hx * feat[:, yl, xl] + hy * lx * feat[:, yl, xh]
                            + ly * hx * feat[:, yh, xl] + ly * lx * feat[:, yh, xh])
            out[:, ph, pw] = acc / f32(gh * gw)
    return out


def test_roialign_sampling_ratio_0_is_caffe2s_adaptive_grid():
    """FAST_RCNN/MRCNN.ROI_XFORM_SAMPLING_RATIO 0 (the C4 configs; the real graph's RoIAlign has
    sampling_ratio 0): ceil(roi size / 14) samples per bin, per RoI. torchvision's
    ``sampling_ratio=0`` is the same rule; a fixed 2 (the FPN configs) gives other values."""
    cfg = load_cfg(CONFIGS["mask"])
    assert cfg.FAST_RCNN.ROI_XFORM_SAMPLING_RATIO == 0 and cfg.MRCNN.ROI_XFORM_SAMPLING_RATIO == 0
    rng = np.random.default_rng(0)
    feat = rng.standard_normal((1, 3, 20, 30)).astype(np.float32)
    # Small (grid 1), large (grid 3x2), sub-pixel, partly outside and border-touching RoIs, at 1/16.
    rois = np.array([[0, 17.3, 9.9, 100.2, 60.1], [0, 3.5, 2.25, 400.7, 280.4], [0, 50.0, 50.0, 50.5, 50.2],
                     [0, -40.0, -30.0, 120.0, 90.0], [0, 300.0, 200.0, 479.0, 319.0]], np.float32)
    ours = roi_align(torch.from_numpy(feat), torch.from_numpy(rois), 14, spatial_scale=1.0 / 16,
                     sampling_ratio=0, aligned=False).numpy()
    ref = np.stack([_caffe2_roi_align(feat[0], r, 14, 1.0 / 16, 0) for r in rois])
    np.testing.assert_array_equal(ours, ref)
    fixed = roi_align(torch.from_numpy(feat), torch.from_numpy(rois[:1]), 14, spatial_scale=1.0 / 16,
                      sampling_ratio=2, aligned=False).numpy()
    assert np.abs(fixed - ref[:1]).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# End to end with calibrated synthetic weights
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def c4_pkls(test_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("c4_pkls")
    paths = {}
    for kind, cfg_path in CONFIGS.items():
        paths[kind] = out / f"c4_{kind}.pkl"
        write_synthetic_detectron_pkl(load_cfg(cfg_path, SMALL), _image(test_data, IMAGES[0]), str(paths[kind]),
                                      with_extras=(kind == "mask"))
    return paths


@pytest.fixture(scope="module")
def c4_models(c4_pkls):
    """The synthetic files loaded strictly, as the tools do: {kind: (model, WeightsInfo)}."""
    return {kind: load_model(load_cfg(CONFIGS[kind], SMALL), load_detectron=str(path)) for kind, path in c4_pkls.items()}


@pytest.mark.parametrize("kind", ["faster", "mask"])
def test_c4_runs_end_to_end(kind, test_data, c4_pkls, c4_models):
    pkl = read_detectron_pkl(c4_pkls[kind])
    file_kind = detect_kind(pkl.shapes)
    assert file_kind.family == f"e2e_{kind}_rcnn_R-50-C4"
    assert cfg_for_file(file_kind, "x.pkl").MODEL.CONV_BODY == "ResNet.add_ResNet50_conv4_body"
    cfg = load_cfg(CONFIGS[kind], SMALL)
    model, info = c4_models[kind]
    assert info.format == "detectron-pkl" and isinstance(model, ResNetC4RCNN)
    params = {b for b in pkl.blobs if orphan_group(b) is None}
    assert params == {key_to_blob(k) for k in model.state_dict()} and len(params) == (173 if kind == "mask" else 169)
    images = [_image(test_data, f) for f in IMAGES]
    results = Detector(model, cfg)(images)
    for im, d in zip(images, results):
        assert (d.height, d.width) == im.shape[:2]
        assert 60 <= len(d) <= 110
        assert d.scores.dtype == np.float32 and d.scores.min() > 0.05 and d.scores.max() < 1
        assert len(np.unique(d.scores)) == len(d)
        assert len(np.unique(d.classes)) >= 5 and np.all(np.diff(d.classes) >= 0)
        assert np.all(d.boxes[:, :2] >= 0) and np.all(d.boxes[:, 2] <= d.width - 1)
        assert np.all(d.boxes[:, 3] <= d.height - 1)
        if kind == "mask":
            areas = mask_util.area(d.masks)
            assert len(d.masks) == len(d) and (areas > 0).mean() > 0.9
            # 14x14 masks: a pasted mask stays inside its box expanded by 16/14 (+1 px of rounding).
            x, y, _, h = mask_util.toBbox(d.masks).T
            bw, bh = d.boxes[:, 2] - d.boxes[:, 0], d.boxes[:, 3] - d.boxes[:, 1]
            nz = areas > 0
            assert np.all(x[nz] >= d.boxes[nz, 0] - bw[nz] / 14 - 2)
            assert np.all(y[nz] + h[nz] <= d.boxes[nz, 3] + bh[nz] / 14 + 2)
        else:
            assert d.masks is None


def test_c4_mask_head_recomputes_the_shared_res5(c4_models):
    model, _ = c4_models["mask"]
    assert not any(k.startswith("mask_head.res5") for k in model.state_dict())
    feats = [torch.randn(1, 1024, 14, 21, generator=torch.Generator().manual_seed(0))]
    rois = torch.tensor([[0, 10.0, 20.0, 150.0, 200.0], [0, 0.0, 0.0, 300.0, 220.0]])
    with torch.no_grad():
        logits = model.mask_logits(feats, rois)
        pooled = roi_align(feats[0], rois, 14, 1 / 16, 0, False)
        x = pooled
        for block in model.box_head.res5:
            x = block(x)
        manual = model.mask_head.mask_fcn_logits(torch.relu(model.mask_head.conv5_mask(x)))
    assert logits.shape == (2, 81, 14, 14)
    torch.testing.assert_close(logits, manual, rtol=0, atol=0)


def test_c4_mask_full_scale_800_1333(test_data, c4_models):
    """Detectron's real C4 test settings once: 800/1333, RPN 6000/1000, unpadded 800x1199 blob.
    (The loaded model is reused: the test settings are the Detector's, the layers are the same.)"""
    cfg = load_cfg(CONFIGS["mask"])
    assert (cfg.TEST.SCALE, cfg.TEST.MAX_SIZE, cfg.TEST.RPN_PRE_NMS_TOP_N, cfg.TEST.RPN_POST_NMS_TOP_N) == \
        (800, 1333, 6000, 1000)
    model, _ = c4_models["mask"]
    det = Detector(model, cfg)
    im = _image(test_data, IMAGES[0])
    assert det.prepare(im).data.shape[:2] == (800, 1199)
    d = det([im])[0]
    assert 60 <= len(d) <= 110 and len(d.masks) == len(d) and len(np.unique(d.scores)) == len(d)


def test_c4_training_is_refused_with_a_clear_error():
    from rcnn.modeling import UnsupportedModelError
    from rcnn.modeling.init import init_heads

    cfg = load_cfg(CONFIGS["faster"])
    model = build_model(cfg)
    with pytest.raises(UnsupportedModelError, match="training C4 models is not implemented"):
        init_heads(model, cfg)
    with pytest.raises(UnsupportedModelError, match="training C4 models is not implemented"):
        model(None, None)
