"""Detectron .pkl <-> .pt conversion end to end, on realistic Detectron-format files.

The files are written the way Detectron wrote its checkpoints (Python 2 protocol 2, the cfg
YAML of the 12_2017 code, every parameter of the model plus ``*_momentum`` for the trained
ones and the 55 blobs preserved from the ImageNet init), with random float32 values and a few
special bit patterns (-0, infinities, NaN payloads, denormals) to make "bit-exact" mean it.
"""
from __future__ import annotations

import configparser
import hashlib
import importlib
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from convert import checkpoint
from convert.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    load_detectron_weights,
    momentum_blob_names,
    pkl_to_pt,
    preserved_imagenet_shapes,
    pt_to_pkl,
    read_checkpoint,
    save_checkpoint,
)
from convert.detectron_cfg import dump_detectron_cfg, parse_detectron_cfg
from convert.errors import CfgMismatchError, ConvertError, WeightsMismatchError
from convert.kinds import cfg_for_file, detect_kind
from convert.pickle_io import read_detectron_pkl, write_detectron_pkl
from rcnn.config import cfg_from_yaml_text, load_cfg
from rcnn.modeling import build_model
from rcnn.naming import key_to_blob

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "12_2017_baselines"
PYTHON = sys.executable
FAMILIES = ("faster", "mask", "keypoint")
COUNTS = {"faster": (189, 72), "mask": (201, 84), "keypoint": (209, 90)}  # params, momentum (docs/detectron.md §1.4)
DESCRIBE = {"faster": "Faster R-CNN detector, R-50-FPN, 81 classes",
            "mask": "Mask R-CNN detector, R-50-FPN, 81 classes",
            "keypoint": "Keypoint R-CNN detector, R-50-FPN, 2 classes, 17 keypoints"}
SPECIAL_BITS = np.array([0x80000000, 0x7F800000, 0xFF800000, 0x7FC00001, 0x7F800001, 0xFFFFFFFF, 0x00000001,
                         0x807FFFFF, 0x7F7FFFFF], dtype=np.uint32)


def config(family: str):
    return load_cfg(CONFIGS / f"e2e_{family}_rcnn_R-50-FPN_1x.yaml")


@dataclass
class DetectronFile:
    family: str
    cfg: object
    path: Path
    params: dict
    momentum: dict
    preserved: dict

    @property
    def blobs(self) -> dict:
        return {**self.params, **self.momentum, **self.preserved}


def make_params(cfg, rng) -> tuple[dict, list]:
    """Random float32 values for every parameter blob of the model ``cfg`` builds (the fixed
    kps_score kernel keeps Detectron's values), and the model's momentum blob names."""
    model = build_model(cfg)
    params = {}
    for key, tensor in model.state_dict().items():
        blob = key_to_blob(key)
        fixed = blob in ("kps_score_w", "kps_score_b")
        params[blob] = tensor.numpy().copy() if fixed else rng.standard_normal(tuple(tensor.shape), dtype=np.float32)
    for blob in ("fpn_res2_2_sum_b", "res_conv1_bn_s", "bbox_pred_w"):
        params[blob].reshape(-1)[:len(SPECIAL_BITS)] = SPECIAL_BITS.view(np.float32)
    return params, momentum_blob_names(model)


def write_detectron_file(path: Path, family: str, cfg, params: dict, momentum_names, rng) -> DetectronFile:
    shapes = {name: array.shape for name, array in params.items()}
    momentum = {name: rng.standard_normal(shapes[name[:-len("_momentum")]], dtype=np.float32)
                for name in momentum_names}
    preserved = {name: np.zeros(shape, np.float32) for name, shape in preserved_imagenet_shapes(shapes).items()}
    preserved["fc1000_w"] = rng.standard_normal(preserved["fc1000_w"].shape, dtype=np.float32)
    preserved["fc1000_b"] = rng.standard_normal(1000, dtype=np.float32)
    out = DetectronFile(family, cfg, path, params, momentum, preserved)
    write_detectron_pkl(path, out.blobs, dump_detectron_cfg(cfg), unicode_keys=set(momentum) | set(preserved))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, DetectronFile]:
    """One realistic model_final.pkl per family."""
    directory = tmp_path_factory.mktemp("detectron")
    rng = np.random.default_rng(2017)
    out = {}
    for family in FAMILIES:
        cfg = config(family)
        params, momentum_names = make_params(cfg, rng)
        out[family] = write_detectron_file(directory / f"{family}.pkl", family, cfg, params, momentum_names, rng)
    return out


@pytest.fixture(scope="module")
def two_class_faster(files, tmp_path_factory) -> Path:
    """A Faster R-CNN file trained on 2 classes (no momentum), with one non-zero preserved bias."""
    params = dict(files["faster"].params)
    rng = np.random.default_rng(2)
    for blob, rows in (("cls_score", 2), ("bbox_pred", 8)):
        params[f"{blob}_w"] = rng.standard_normal((rows, 1024), dtype=np.float32)
        params[f"{blob}_b"] = rng.standard_normal(rows, dtype=np.float32)
    preserved = dict(files["faster"].preserved, res3_0_branch2a_b=np.ones(128, np.float32))
    path = tmp_path_factory.mktemp("two") / "two_class.pkl"
    cfg = load_cfg(CONFIGS / "e2e_faster_rcnn_R-50-FPN_1x.yaml", ["MODEL.NUM_CLASSES", 2])
    write_detectron_pkl(path, {**params, **preserved}, dump_detectron_cfg(cfg))
    return path


@pytest.fixture(scope="module")
def imagenet(files, tmp_path_factory) -> Path:
    """A flat ImageNet R-50.pkl: backbone blobs, zero conv biases, fc1000."""
    source = files["faster"]
    backbone = {b: a for b, a in source.params.items() if re.match(r"^(conv1|res_conv1|res\d)_", b)}
    path = tmp_path_factory.mktemp("imagenet") / "R-50.pkl"
    blobs = {**backbone, **source.preserved}
    write_detectron_pkl(path, blobs, None, unicode_keys=set(blobs))
    return path


def c4_blob_shapes(num_classes: int = 81) -> dict[str, tuple[int, ...]]:
    """The blobs of a Detectron R-50-C4 Faster R-CNN (res5 is the box head; no FPN)."""
    shapes = {"conv1_w": (64, 3, 7, 7), "res_conv1_bn_s": (64,), "res_conv1_bn_b": (64,)}
    for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3)):
        for i in range(blocks):
            for branch in ("branch2a", "branch2b", "branch2c") + (("branch1",) if i == 0 else ()):
                for suffix in ("w", "bn_s", "bn_b"):
                    shapes[f"res{stage}_{i}_{branch}_{suffix}"] = (4,)
    shapes["res2_0_branch2b_w"] = (64, 64, 3, 3)
    for name, out in (("conv_rpn", 1024), ("rpn_cls_logits", 15), ("rpn_bbox_pred", 60)):
        shapes[f"{name}_w"], shapes[f"{name}_b"] = (out, 1024, 1, 1), (out,)
    shapes.update(cls_score_w=(num_classes, 2048), cls_score_b=(num_classes,),
                  bbox_pred_w=(4 * num_classes, 2048), bbox_pred_b=(4 * num_classes,))
    return shapes


@pytest.fixture(scope="module")
def c4_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("c4") / "c4.pkl"
    write_detectron_pkl(path, {b: np.zeros(s, np.float32) for b, s in c4_blob_shapes().items()}, None)
    return path


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def sha256(path: Path) -> str:
    """Independent of ``detectron_parity.fileio.file_sha256``, which the converter uses."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------------------------------------
# The files are what Detectron writes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_realistic_files_have_detectrons_blob_counts(files, family):
    f = files[family]
    assert (len(f.params), len(f.momentum)) == COUNTS[family]
    assert len(f.preserved) == 55 and sum(name.endswith("_b") for name in f.preserved) == 54  # 53 + fc1000_b
    assert f.preserved["fc1000_w"].shape == (1000, 2048)
    pkl = read_detectron_pkl(f.path)
    assert pkl.wrapped and list(pkl.blobs) == list(f.blobs)
    for name, array in f.blobs.items():
        assert same_bits(pkl.blobs[name], array), name
    assert parse_detectron_cfg(pkl.cfg_yaml)["MODEL"]["NUM_CLASSES"] == f.cfg.MODEL.NUM_CLASSES


@pytest.mark.parametrize("family", FAMILIES)
def test_kind_detection(files, family):
    kind = detect_kind({name: a.shape for name, a in files[family].blobs.items()})
    assert kind.describe() == DESCRIBE[family]
    assert kind.family == f"e2e_{family}_rcnn_R-50-FPN"
    assert kind.baseline_config == CONFIGS / f"e2e_{family}_rcnn_R-50-FPN_1x.yaml"


def test_kind_detection_c4_and_others():
    kind = detect_kind(c4_blob_shapes())
    assert (kind.kind, kind.fpn, kind.backbone, kind.num_classes) == ("detector", False, "R-50", 81)
    assert kind.family == "e2e_faster_rcnn_R-50-C4" and kind.baseline_config == CONFIGS / "e2e_faster_rcnn_R-50-C4_1x.yaml"
    assert kind.describe() == "Faster R-CNN detector, R-50-C4, 81 classes"
    shapes = dict(c4_blob_shapes(), res2_0_branch2b_w=(256, 8, 3, 3))
    for i in range(6, 23):
        shapes[f"res4_{i}_branch2a_w"] = (4,)
    assert detect_kind(shapes).backbone == "X-101-32x8d"
    rpn = {b: s for b, s in c4_blob_shapes().items() if not b.startswith(("cls_score", "bbox_pred"))}
    assert detect_kind(rpn).family == "rpn_R-50-C4"
    assert detect_kind({"retnet_cls_pred_fpn3_w": (1,), "res4_5_branch2a_w": (1,)}).family == "retinanet_R-50-FPN"
    assert detect_kind({"foo_w": (1,)}).describe() == "set of blobs of no known Detectron model"


def test_kind_detection_real_c4_graph(test_data):
    """The blob names of the real Detectron e2e_faster_rcnn_R-50-C4_1x graph."""
    text = (test_data / "detectron-c2-e2e_faster_rcnn_R-50-C4_1x" / "predict_net.pbtxt").read_text()
    names = set(re.findall(r'input: "([^"]+_[wbs])"', text))
    assert len(names) == 116 and "conv_rpn_w" in names and not any(n.startswith("fpn") for n in names)
    shapes = {name: (1,) for name in names}
    shapes["cls_score_w"] = (81, 2048)
    kind = detect_kind(shapes)
    assert kind.family == "e2e_faster_rcnn_R-50-C4" and kind.describe() == "Faster R-CNN detector, R-50-C4, 81 classes"


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bit_exact(files, family, tmp_path):
    f = files[family]
    pt = tmp_path / "model.pt"
    report = pkl_to_pt(f.path, pt, keep_momentum=True, keep_preserved=True)
    assert report.ok and (len(report.loaded), len(report.ignored_momentum)) == COUNTS[family]
    assert sorted(report.ignored_preserved) == sorted(f.preserved)

    ckpt = read_checkpoint(pt)
    assert len(ckpt.state_dict) == COUNTS[family][0]
    for key, tensor in ckpt.state_dict.items():
        assert same_bits(tensor.numpy(), f.params[key_to_blob(key)]), key
    assert set(ckpt.extra_blobs) == set(f.momentum) | set(f.preserved)
    assert cfg_from_yaml_text(ckpt.cfg_yaml) == f.cfg

    back = tmp_path / "model.pkl"
    pt_to_pkl(pt, back)
    # The very same bytes as the source, whose blobs test_realistic_files_... checks one by one
    # (same writer, blob order and cfg text).
    assert sha256(back) == ckpt.meta["source_sha256"] == sha256(f.path)


def test_round_trip_without_extras_keeps_only_parameters(files, tmp_path):
    f = files["mask"]
    pkl_to_pt(f.path, tmp_path / "m.pt")
    assert read_checkpoint(tmp_path / "m.pt").extra_blobs == {}
    pt_to_pkl(tmp_path / "m.pt", tmp_path / "m.pkl", style="2018")
    pkl = read_detectron_pkl(tmp_path / "m.pkl")
    assert list(pkl.blobs) == list(f.params)
    assert all(same_bits(pkl.blobs[name], array) for name, array in f.params.items())
    assert pkl.cfg_yaml.startswith("!!python/object/new:detectron.utils.collections.AttrDict")


def test_checkpoint_loads_weights_only_and_has_the_schema(files, tmp_path):
    f = files["faster"]
    pt = tmp_path / "f.pt"
    pkl_to_pt(f.path, pt, cfg=CONFIGS / "e2e_faster_rcnn_R-50-FPN_1x.yaml", keep_momentum=True)
    obj = torch.load(pt, weights_only=True)
    assert set(obj) == {"format", "format_version", "state_dict", "cfg_yaml", "meta", "extra_blobs"}
    assert (obj["format"], obj["format_version"]) == (FORMAT, FORMAT_VERSION)
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in obj["state_dict"].values())
    assert set(obj["extra_blobs"]) == set(f.momentum)
    assert all(isinstance(v, (str, int, float, bool)) for v in obj["meta"].values())
    assert obj["meta"]["source_sha256"] == sha256(f.path)
    assert obj["meta"]["source_file"] == "faster.pkl" and obj["meta"]["source_kind"] == DESCRIBE["faster"]
    ckpt = read_checkpoint(pt)
    assert list(ckpt.state_dict) == list(build_model(f.cfg).state_dict()) and ckpt.meta == obj["meta"]
    assert cfg_from_yaml_text(ckpt.cfg_yaml) == f.cfg
    for key, tensor in ckpt.state_dict.items():
        assert same_bits(tensor.numpy(), obj["state_dict"][key].numpy()), key


def test_load_detectron_weights_into_a_model(files, caplog):
    f = files["keypoint"]
    model = build_model(f.cfg)
    with caplog.at_level(logging.WARNING):
        report = load_detectron_weights(model, f.path)
    assert caplog.records == []  # the file's kps_score is Detectron's fixed kernel: no warning
    assert report.ok and report.summary() == "209 blobs loaded; ignored 90 momentum and 55 preserved ImageNet blobs"
    for key, tensor in model.state_dict().items():
        assert same_bits(tensor.numpy(), f.params[key_to_blob(key)]), key
    assert report.kind.num_keypoints == 17


# ---------------------------------------------------------------------------------------------
# Wrong files: named, with the config family they need
# ---------------------------------------------------------------------------------------------
def test_wrong_class_count_names_blob_and_shapes(files, tmp_path):
    out = tmp_path / "k.pt"
    with pytest.raises(WeightsMismatchError) as info:
        pkl_to_pt(files["mask"].path, out, cfg=config("keypoint"))
    message, report = str(info.value), info.value.report
    assert "cls_score_w file (81, 1024) vs model (2, 1024)" in message
    assert "bbox_pred_w file (324, 1024) vs model (8, 1024)" in message
    assert "the file is a Mask R-CNN detector, R-50-FPN, 81 classes (config family e2e_mask_rcnn_R-50-FPN)" in message
    assert "use the config 12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml" in message
    assert "\n" not in message
    assert [m[0] for m in report.shape_mismatch] == ["cls_score_w", "cls_score_b", "bbox_pred_w", "bbox_pred_b"]
    assert len(report.missing) == 20 and "conv_fcn1_w" in report.missing and "kps_score_w" in report.missing
    assert len(report.unexpected) == 12 and "_[mask]_fcn1_w" in report.unexpected
    assert files_in(tmp_path) == []


def test_same_family_other_class_count(two_class_faster, files, tmp_path):
    with pytest.raises(WeightsMismatchError) as info:
        pkl_to_pt(two_class_faster, tmp_path / "x.pt", cfg=files["faster"].cfg)
    message = str(info.value)
    assert "4 shape-mismatched: cls_score_w file (2, 1024) vs model (81, 1024)" in message
    assert "its config needs MODEL.NUM_CLASSES: 2" in message and "missing" not in message
    with pytest.raises(ConvertError, match="pass a config of family e2e_faster_rcnn_R-50-FPN with "
                                           "MODEL.NUM_CLASSES: 2 with --cfg"):
        pkl_to_pt(two_class_faster, tmp_path / "x.pt")
    assert files_in(tmp_path) == []


def test_non_strict_loading_reports_and_keeps_the_rest(two_class_faster, files, caplog):
    model = build_model(files["faster"].cfg)
    before = model.state_dict()["box_head.cls_score.weight"].clone()
    with caplog.at_level(logging.WARNING):
        report = load_detectron_weights(model, two_class_faster, strict=False, check_cfg=False)
    assert not report.ok and len(report.loaded) == 185 and len(report.shape_mismatch) == 4
    assert torch.equal(model.state_dict()["box_head.cls_score.weight"], before)
    assert same_bits(model.state_dict()["fpn.fpn_res2_2_sum.bias"].numpy(), files["faster"].params["fpn_res2_2_sum_b"])
    assert "not zero (Detectron ignores them too): res3_0_branch2a_b" in caplog.text


def test_embedded_cfg_must_agree(files, tmp_path):
    f = files["faster"]
    cfg = load_cfg(CONFIGS / "e2e_faster_rcnn_R-50-FPN_1x.yaml", ["MODEL.BBOX_REG_WEIGHTS", (1.0, 1.0, 1.0, 1.0)])
    path = tmp_path / "old.pkl"
    write_detectron_pkl(path, f.params, dump_detectron_cfg(cfg))
    with pytest.raises(CfgMismatchError, match=r"old.pkl: its embedded cfg disagrees with the config: "
                                               r"MODEL.BBOX_REG_WEIGHTS is \(1.0, 1.0, 1.0, 1.0\) in the file"):
        pkl_to_pt(path, tmp_path / "old.pt")
    assert files_in(tmp_path) == ["old.pkl"]
    pkl_to_pt(path, tmp_path / "old.pt", check_cfg=False)
    assert files_in(tmp_path) == ["old.pkl", "old.pt"]


def test_imagenet_backbone_is_not_a_detector(imagenet, files, tmp_path):
    kind = detect_kind({n: a.shape for n, a in read_detectron_pkl(imagenet).blobs.items()})
    assert (kind.kind, kind.backbone, kind.family) == ("imagenet", "R-50", None)
    expected = (r"R-50.pkl is an ImageNet R-50 backbone, not a detector: use it as TRAIN.WEIGHTS for training, "
                r"not for inference")
    with pytest.raises(ConvertError, match=expected):
        pkl_to_pt(imagenet, tmp_path / "x.pt")
    model = build_model(files["faster"].cfg)
    with pytest.raises(ConvertError, match=expected):
        load_detectron_weights(model, imagenet)
    assert files_in(tmp_path) == []
    # ... but it initialises the backbone for training when loading is not strict
    report = load_detectron_weights(model, imagenet, strict=False)
    assert (len(report.loaded), len(report.missing), len(report.ignored_preserved)) == (159, 30, 55)
    scale = model.state_dict()["backbone.res_conv1_bn.scale"].numpy()
    assert same_bits(scale, files["faster"].params["res_conv1_bn_s"])


def test_c4_file_needs_a_c4_config(c4_file, tmp_path):
    cfg = cfg_for_file(detect_kind(c4_blob_shapes()), "c4.pkl")
    assert cfg.MODEL.CONV_BODY == "ResNet.add_ResNet50_conv4_body" and not cfg.MODEL.MASK_ON
    c4_two = tmp_path / "c4_two.pkl"
    write_detectron_pkl(c4_two, {b: np.zeros(s, np.float32) for b, s in c4_blob_shapes(2).items()}, None)
    with pytest.raises(ConvertError, match=r"c4_two.pkl is a Faster R-CNN detector, R-50-C4, 2 classes; the baseline "
                                           r"config e2e_faster_rcnn_R-50-C4_1x.yaml has MODEL.NUM_CLASSES 81: pass a "
                                           r"config of family e2e_faster_rcnn_R-50-C4 with MODEL.NUM_CLASSES: 2"):
        pkl_to_pt(c4_two, tmp_path / "x.pt")
    with pytest.raises(WeightsMismatchError) as info:
        pkl_to_pt(c4_file, tmp_path / "x.pt", cfg=config("faster"))
    message = str(info.value)
    assert "(config family e2e_faster_rcnn_R-50-C4)" in message
    assert "use the config 12_2017_baselines/e2e_faster_rcnn_R-50-C4_1x.yaml" in message
    assert "unexpected: conv_rpn_w, conv_rpn_b" in message and "conv_rpn_fpn2_w" in info.value.report.missing
    assert files_in(tmp_path) == ["c4_two.pkl"]


# ---------------------------------------------------------------------------------------------
# Our checkpoints
# ---------------------------------------------------------------------------------------------
class Foreign:
    """An object a foreign .pt may hold; weights-only loading must refuse it."""


def test_foreign_and_broken_checkpoints_are_refused(tmp_path, files):
    cases = {
        "object.pt": {"state_dict": {"a": torch.zeros(1)}, "model": Foreign()},
        "numpy.pt": {"state_dict": {"a": np.zeros(3)}},
        "plain.pt": {"backbone.conv1.weight": torch.zeros(1)},
        "version.pt": {"format": FORMAT, "format_version": 99},
        "types.pt": {"format": FORMAT, "format_version": FORMAT_VERSION, "state_dict": {"a": 1}, "cfg_yaml": "",
                     "meta": {}, "extra_blobs": {}},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
    save_checkpoint(tmp_path / "good.pt", {"backbone.conv1.weight": torch.ones(2)}, files["faster"].cfg)
    good = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[:len(good) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(2000))
    expected = {
        "object.pt": r"refusing to load .*object.pt: it holds the Python object .*Foreign, not only tensors",
        "numpy.pt": r"refusing to load .*numpy.pt: it holds the Python object numpy\.",
        "plain.pt": r"not a detectron-parity checkpoint \(no format tag .*a plain state dict",
        "version.pt": r"format version 99; this code reads version 1",
        "types.pt": r"malformed checkpoint \(state_dict must map names to tensors\)",
        "truncated.pt": r"truncated.pt is not a readable PyTorch checkpoint",
        "empty.pt": r"empty.pt is not a readable PyTorch checkpoint",
        "random.pt": r"random.pt is not a readable PyTorch checkpoint",
        "absent.pt": r"cannot read .*absent.pt: No such file",
    }
    for name, pattern in expected.items():
        with pytest.raises(ConvertError, match=pattern) as info:
            read_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value), name


def test_never_loads_with_weights_only_off(monkeypatch, tmp_path, files):
    source = "\n".join(p.read_text() for p in (REPO / "convert").glob("*.py"))
    assert "weights_only=False" not in source and "weights_only=True" in source
    seen = []
    real = torch.load
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: seen.append(k) or real(*a, **k))
    save_checkpoint(tmp_path / "c.pt", {"backbone.conv1.weight": torch.ones(2)}, files["faster"].cfg)
    read_checkpoint(tmp_path / "c.pt")
    assert seen and all(k.get("weights_only") is True for k in seen)


def test_save_checkpoint_validates_meta_and_state(tmp_path, files):
    with pytest.raises(TypeError, match="meta entry 'when'"):
        save_checkpoint(tmp_path / "x.pt", {}, "", {"when": object()})
    with pytest.raises(TypeError, match="not a str -> Tensor pair"):
        save_checkpoint(tmp_path / "x.pt", {"a": np.zeros(1)}, "")
    assert files_in(tmp_path) == []


def test_pt_to_pkl_is_strict_too(tmp_path, files):
    save_checkpoint(tmp_path / "partial.pt", {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}, files["faster"].cfg)
    with pytest.raises(WeightsMismatchError, match=r"188 missing from the file: res_conv1_bn_s, .*\.\.\. and 168 more"):
        pt_to_pkl(tmp_path / "partial.pt", tmp_path / "partial.pkl")
    save_checkpoint(tmp_path / "badkey.pt", {"conv1_w": torch.zeros(1)}, files["faster"].cfg)
    with pytest.raises(ConvertError, match="does not follow <component>.<op path>.<tensor>"):
        pt_to_pkl(tmp_path / "badkey.pt", tmp_path / "badkey.pkl")
    assert files_in(tmp_path) == ["badkey.pt", "partial.pt"]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def run_cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "convert", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_round_trip(files, tmp_path):
    f = files["faster"]
    done = run_cli(f.path, tmp_path / "f.pt", "--keep-momentum", "--keep-preserved")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"converted {f.path} -> {tmp_path / 'f.pt'}: {DESCRIBE['faster']}; 189 blobs "
                                   "loaded; ignored 72 momentum and 55 preserved ImageNet blobs; 127 of them kept "
                                   "as extra blobs")
    done = run_cli(tmp_path / "f.pt", tmp_path / "f.pkl")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"converted {tmp_path / 'f.pt'} -> {tmp_path / 'f.pkl'}: {DESCRIBE['faster']}; 189 " \
                                  "parameter blobs"
    assert sha256(tmp_path / "f.pkl") == sha256(f.path)


def test_cli_inspect(files, imagenet):
    done = run_cli("--inspect", files["keypoint"].path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:] == [
        "format: Detectron pickle, protocol 2, {'blobs', 'cfg'} dict",
        "kind: Keypoint R-CNN detector, R-50-FPN, 2 classes, 17 keypoints",
        "config family: e2e_keypoint_rcnn_R-50-FPN (12_2017_baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml)",
        "classes: 2 (background included)",
        "blobs: 354 in all: 209 model, 90 momentum, 55 preserved ImageNet",
        "embedded cfg: MODEL.NUM_CLASSES=2, MODEL.BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0), MODEL.MASK_ON=False, "
        "MODEL.KEYPOINTS_ON=True",
    ]
    done = run_cli("--inspect", imagenet)
    assert done.returncode == 0 and done.stdout.splitlines()[1:] == [
        "format: Detectron pickle, protocol 2, flat name -> array dict",
        "kind: ImageNet R-50 backbone",
        "note: not a detector: use it as TRAIN.WEIGHTS for training, not for inference",
        "blobs: 214 in all: 159 model, 0 momentum, 55 preserved ImageNet",
    ]


def test_cli_inspect_checkpoint(files, tmp_path, capsys):
    from convert.__main__ import main

    save_checkpoint(tmp_path / "c.pt", build_model(files["mask"].cfg), files["mask"].cfg, {"note": "x"})
    assert main(["--inspect", str(tmp_path / "c.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:5] == ["format: detectron-parity checkpoint, 201 tensors",
                          "kind: Mask R-CNN detector, R-50-FPN, 81 classes",
                          "config family: e2e_mask_rcnn_R-50-FPN (12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml)",
                          "classes: 81 (background included)"]
    assert "meta note: x" in lines and "extra blobs: 0 in all: 0 model, 0 momentum, 0 preserved ImageNet" in lines


def test_cli_bad_input_is_one_line_and_exit_2(files, two_class_faster, imagenet, c4_file, tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(b"\x80\x02}(U\x05blobs}(U\x07conv1_wcos\nsystem\n(U\x0btouch ./rantRuu.")
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(imagenet.read_bytes()[:5000])
    (tmp_path / "random.pkl").write_bytes(np.random.default_rng(1).bytes(3000))
    (tmp_path / "empty.pkl").write_bytes(b"")
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "out"
    out.mkdir()
    cases = {
        "missing": ([tmp_path / "absent.pkl", out / "x.pt"], "cannot read .*absent.pkl: No such file"),
        "random": ([tmp_path / "random.pkl", out / "x.pt"], "random.pkl is not a valid Detectron pickle"),
        "empty": ([tmp_path / "empty.pkl", out / "x.pt"], "empty.pkl is empty, not a pickle"),
        "truncated": ([truncated, out / "x.pt"], "truncated.pkl is truncated"),
        "hostile": ([hostile, out / "x.pt"], "refusing to load .*hostile.pkl: it references the Python object "
                                             "os.system"),
        "imagenet": ([imagenet, out / "x.pt"], "R-50.pkl is an ImageNet R-50 backbone, not a detector"),
        "c4": ([c4_file, out / "x.pt", "--cfg", CONFIGS / "e2e_faster_rcnn_R-50-FPN_1x.yaml"],
               "c4.pkl does not fit the config: the file is a Faster R-CNN detector, R-50-C4, 81 classes"),
        "class count": ([two_class_faster, out / "x.pt", "--cfg", CONFIGS / "e2e_faster_rcnn_R-50-FPN_1x.yaml"],
                        r"cls_score_w file \(2, 1024\) vs model \(81, 1024\)"),
        "bad cfg": ([c4_file, out / "x.pt", "--cfg", tmp_path / "none.yaml"], "cannot read config file"),
        "no dir": ([files["faster"].path, tmp_path / "absent" / "x.pt"], "cannot write .*is not an existing directory"),
        "under a file": ([files["faster"].path, tmp_path / "a_file" / "x.pt"], "is not an existing directory"),
        "dir as output": ([files["faster"].path, out], "cannot tell the format of"),
        "same file": ([tmp_path / "f.pt", tmp_path / "f.pt"], "OUT is the input file"),
        "direction": ([files["faster"].path, out / "x.pkl"], "cannot convert .pkl to .pkl"),
        "cfg with pt": ([tmp_path / "f.pt", out / "x.pkl", "--cfg", "x.yaml"], "--cfg, --keep-momentum"),
        "usage": ([], "give IN and OUT"),
        "unknown option": (["--bogus"], "unrecognized arguments: --bogus"),
    }
    procs = {name: subprocess.Popen([PYTHON, "-m", "convert", *map(str, args)], cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, stderr)
        assert stdout == "" and stderr.endswith("\n") and stderr.count("\n") == 1, (name, stderr)
        assert re.match("error: .*" + cases[name][1], stderr), (name, stderr)
    assert not marker.exists()
    assert files_in(out) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_cli_wrong_family_in_process(c4_file, tmp_path, capsys):
    from convert.__main__ import main

    status = main([str(c4_file), str(tmp_path / "x.pt"), "--cfg", str(CONFIGS / "e2e_faster_rcnn_R-50-FPN_1x.yaml")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {c4_file} does not fit the config: the file is a Faster R-CNN detector, R-50-C4, 81 "
                          "classes (config family e2e_faster_rcnn_R-50-C4), the config builds a Faster R-CNN detector, "
                          "R-50-FPN, 81 classes; use the config 12_2017_baselines/e2e_faster_rcnn_R-50-C4_1x.yaml.")
    assert files_in(tmp_path) == []


def test_cli_refuses_foreign_checkpoint_in_process(tmp_path, capsys):
    from convert.__main__ import main

    torch.save({"state_dict": {"a": torch.zeros(1)}, "model": Foreign()}, tmp_path / "foreign.pt")
    assert main([str(tmp_path / "foreign.pt"), str(tmp_path / "out.pkl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(r"error: refusing to load .*foreign.pt: it holds the Python object "
                                              r"\S*Foreign, not only tensors, numbers and strings", err)
    assert files_in(tmp_path) == ["foreign.pt"]


def _console_scripts() -> dict[str, str]:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    lines = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_console_scripts_resolve(capsys):
    """setup.cfg's console scripts name the ``main`` functions, whose --help works."""
    scripts = _console_scripts()
    assert scripts == {"detectron-convert": "convert.__main__:main", "detectron-parity": "parity.__main__:main",
                       "detectron-test-net": "rcnn.commands.test_net:main",
                       "detectron-train": "rcnn.commands.train_net_step:main",
                       "detectron-infer": "rcnn.commands.infer_simple:main"}
    for name, target in scripts.items():
        module, func = target.split(":")
        with pytest.raises(SystemExit) as exit_info:
            getattr(importlib.import_module(module), func)(["--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith("usage: "), name


def test_console_script_is_installed():
    script = Path(PYTHON).parent / "detectron-convert"
    if not script.exists():
        pytest.skip("package not installed with its console scripts (pip install -e .)")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: detectron-convert")


def test_main_in_process_returns_2(capsys, tmp_path):
    from convert.__main__ import main

    assert main([str(tmp_path / "absent.pkl"), str(tmp_path / "x.pt")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read ")
