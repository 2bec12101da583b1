"""convert.detectron_cfg: Detectron's tagged cfg YAML is read without executing anything,
written the way Python 2 Detectron wrote it, and cross-checked against our configs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from convert.detectron_cfg import (
    cfg_disagreements,
    check_detectron_cfg,
    dump_detectron_cfg,
    parse_detectron_cfg,
)
from convert.errors import CfgMismatchError, ConvertError
from rcnn.config import load_cfg

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "12_2017_baselines"
FAMILIES = ("faster", "mask", "keypoint")

# Excerpts (whole top-level entries, unchanged) of yaml.dump(cfg) run by Python 2.7.18 +
# PyYAML 3.12 + NumPy 1.16.6 on Detectron's own config code: the first public commit (2f8161e,
# the code of the 12_2017 model zoo) with e2e_mask_rcnn_R-50-FPN_1x.yaml, and HEAD (04155a0)
# with e2e_keypoint_rcnn_R-50-FPN_1x.yaml, after assert_and_infer_cfg.
REAL_2017_MASK = """\
!!python/object/new:utils.collections.AttrDict
dictitems:
  BBOX_XFORM_CLIP: !!python/object/apply:numpy.core.multiarray.scalar
  - &id001 !!python/object/apply:numpy.dtype
    args: [f8, 0, 1]
    state: !!python/tuple [3, <, null, null, null, -1, -1, 0]
  - !!binary |
    qeISGmmKEEA=
  CLUSTER: !!python/object/new:utils.collections.AttrDict
    dictitems: {ON_CLUSTER: false}
  MODEL: !!python/object/new:utils.collections.AttrDict
    dictitems:
      BBOX_REG_WEIGHTS: !!python/tuple [10.0, 10.0, 5.0, 5.0]
      CLS_AGNOSTIC_BBOX_REG: false
      CONV_BODY: FPN.add_fpn_ResNet50_conv5_body
      EXECUTION_TYPE: dag
      FASTER_RCNN: true
      KEYPOINTS_ON: false
      MASK_ON: true
      NUM_CLASSES: 81
      RPN_ONLY: false
      TYPE: generalized_rcnn
  NUM_GPUS: 8
  OUTPUT_DIR: .
  PIXEL_MEANS: !!python/object/apply:numpy.core.multiarray._reconstruct
    args:
    - !!python/name:numpy.ndarray ''
    - !!python/tuple [0]
    - b
    state: !!python/tuple
    - 1
    - !!python/tuple [1, 1, 3]
    - *id001
    - false
    - !!binary |
      0LNZ9bm+WUB/arx0k/xcQK+UZYhjsV5A
"""

REAL_HEAD_KEYPOINT = """\
!!python/object/new:detectron.utils.collections.AttrDict
dictitems:
  BBOX_XFORM_CLIP: !!python/object/apply:numpy.core.multiarray.scalar
  - &id001 !!python/object/apply:numpy.dtype
    args: [f8, 0, 1]
    state: !!python/tuple [3, <, null, null, null, -1, -1, 0]
  - !!binary |
    qeISGmmKEEA=
  CLUSTER: !!python/object/new:detectron.utils.collections.AttrDict
    dictitems: {ON_CLUSTER: false}
    state: {!!python/unicode '__immutable__': true}
  MATLAB: !!python/unicode 'matlab'
  MODEL: !!python/object/new:detectron.utils.collections.AttrDict
    dictitems:
      BBOX_REG_WEIGHTS: !!python/tuple [10.0, 10.0, 5.0, 5.0]
      CLS_AGNOSTIC_BBOX_REG: false
      CONV_BODY: FPN.add_fpn_ResNet50_conv5_body
      EXECUTION_TYPE: !!python/unicode 'dag'
      FASTER_RCNN: true
      KEYPOINTS_ON: true
      MASK_ON: false
      NUM_CLASSES: 2
      RPN_ONLY: false
      TYPE: generalized_rcnn
    state: {!!python/unicode '__immutable__': true}
  MRCNN: !!python/object/new:detectron.utils.collections.AttrDict
    dictitems: {CLS_SPECIFIC_MASK: true, CONV_INIT: !!python/unicode 'GaussianFill',
      DILATION: 2, DIM_REDUCED: 256, RESOLUTION: 14, ROI_MASK_HEAD: !!python/unicode '',
      ROI_XFORM_METHOD: !!python/unicode 'RoIAlign', ROI_XFORM_RESOLUTION: 7, ROI_XFORM_SAMPLING_RATIO: 0,
      THRESH_BINARIZE: 0.5, UPSAMPLE_RATIO: 1, USE_FC_OUTPUT: false, WEIGHT_LOSS_MASK: 1.0}
    state: {!!python/unicode '__immutable__': true}
  PIXEL_MEANS: !!python/object/apply:numpy.core.multiarray._reconstruct
    args:
    - !!python/name:numpy.ndarray ''
    - !!python/tuple [0]
    - b
    state: !!python/tuple
    - 1
    - !!python/tuple [1, 1, 3]
    - *id001
    - false
    - !!binary |
      0LNZ9bm+WUB/arx0k/xcQK+UZYhjsV5A
"""


@pytest.fixture(scope="module")
def cfgs():
    return {f: load_cfg(CONFIGS / f"e2e_{f}_rcnn_R-50-FPN_1x.yaml") for f in FAMILIES}


def _assert_detectron_numbers(parsed):
    assert parsed["BBOX_XFORM_CLIP"] == math.log(1000.0 / 16.0)  # bit-exact float64
    means = parsed["PIXEL_MEANS"]
    assert isinstance(means, np.ndarray) and means.dtype == np.float64 and means.shape == (1, 1, 3)
    assert means.tolist() == [[[102.9801, 115.9465, 122.7717]]]


def test_reads_real_2017_dump():
    parsed = parse_detectron_cfg(REAL_2017_MASK)
    _assert_detectron_numbers(parsed)
    assert parsed["MODEL"]["NUM_CLASSES"] == 81 and parsed["MODEL"]["MASK_ON"] is True
    assert parsed["MODEL"]["BBOX_REG_WEIGHTS"] == (10.0, 10.0, 5.0, 5.0)
    assert parsed["CLUSTER"] == {"ON_CLUSTER": False} and parsed["OUTPUT_DIR"] == "."


def test_reads_real_2018_dump_with_state_blocks_and_unicode():
    parsed = parse_detectron_cfg(REAL_HEAD_KEYPOINT)
    _assert_detectron_numbers(parsed)
    assert parsed["MODEL"]["KEYPOINTS_ON"] is True and parsed["MODEL"]["NUM_CLASSES"] == 2
    assert parsed["MODEL"]["EXECUTION_TYPE"] == "dag" and parsed["MATLAB"] == "matlab"
    assert parsed["MRCNN"]["ROI_MASK_HEAD"] == "" and parsed["MRCNN"]["CONV_INIT"] == "GaussianFill"


def test_safe_load_refuses_what_we_read():
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(REAL_2017_MASK)


@pytest.mark.parametrize("text, problem", [
    ("A: !!python/object/apply:os.system ['touch {marker}']\n", "unsupported Python call 'os.system'"),
    ("A: !!python/object/apply:subprocess.Popen [[touch, '{marker}']]\n", "unsupported Python call"),
    ("A: !!python/object/new:subprocess.Popen {{args: [[touch, '{marker}']]}}\n", "unsupported Python object"),
    ("!!python/object/apply:builtins.eval [\"open('{marker}', 'w')\"]\n", "unsupported Python call"),
    ("A: !!python/object:os.system {{}}\n", "unsupported Python object"),
    ("A: !!python/module:os ''\n", "could not determine a constructor"),
])
def test_hostile_tags_are_refused_and_nothing_runs(tmp_path, text, problem):
    marker = tmp_path / "ran"
    with pytest.raises(ConvertError, match=problem) as info:
        parse_detectron_cfg(text.format(marker=marker), "weights.pkl")
    assert str(info.value).startswith("weights.pkl: the embedded cfg YAML cannot be read at line ")
    assert not marker.exists()


@pytest.mark.parametrize("text, problem", [
    ("A: !!python/object/apply:numpy.dtype {args: [O, 0, 1]}\n", "unsupported NumPy dtype"),
    ("A: !!python/object/apply:numpy.core.multiarray.scalar [!!python/object/apply:numpy.dtype {args: [f8, 0, 1]},"
     " !!binary AAA=]\n", "needs 8 bytes, got 2"),
    ("A: !!python/object/apply:numpy.core.multiarray._reconstruct {args: [!!python/name:os.system '', "
     "!!python/tuple [0], b], state: !!python/tuple [1, !!python/tuple [1], null, false, '']}\n",
     "unsupported NumPy array reconstruction"),
    ("- [unclosed\n", "cannot be read"),
])
def test_malformed_numpy_values_are_refused(text, problem):
    with pytest.raises(ConvertError, match=problem):
        parse_detectron_cfg(text)


def test_not_a_mapping():
    with pytest.raises(ConvertError, match="embedded cfg is a list"):
        parse_detectron_cfg("- 1\n")


def test_numpy_values_follow_the_dtype_in_the_state():
    # float32, big-endian, printable data written as a plain (Python 2 str) scalar, Fortran order
    text = ("A: !!python/object/apply:numpy.core.multiarray._reconstruct\n"
            "  args: [!!python/name:numpy.ndarray '', !!python/tuple [0], b]\n"
            "  state: !!python/tuple [1, !!python/tuple [2, 2], !!python/object/apply:numpy.dtype "
            "{args: [i2, 0, 1], state: !!python/tuple [3, '>', null, null, null, -1, -1, 0]}, true, 'ABCDEFGH']\n")
    value = parse_detectron_cfg(text)["A"]
    expected = np.frombuffer(b"ABCDEFGH", dtype=">i2").reshape((2, 2), order="F")
    assert value.dtype == np.dtype(">i2") and np.array_equal(value, expected)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("style", ["2017", "2018"])
def test_dump_parses_back_to_the_same_values(cfgs, family, style):
    cfg = cfgs[family]
    parsed = parse_detectron_cfg(dump_detectron_cfg(cfg, style))
    _assert_detectron_numbers(parsed)

    def plain(node):
        return {k: plain(v) if isinstance(v, dict) else v for k, v in node.items()}

    expected = plain(cfg)
    parsed["PIXEL_MEANS"] = tuple(tuple(tuple(r) for r in m) for m in parsed["PIXEL_MEANS"].tolist())
    parsed["BBOX_XFORM_CLIP"] = float(parsed["BBOX_XFORM_CLIP"])
    assert parsed == expected
    assert cfg_disagreements(parsed, cfg) == []


def test_dump_looks_like_python2_pyyaml(cfgs):
    text = dump_detectron_cfg(cfgs["mask"], "2017")
    lines = text.splitlines()
    # the same header, scalar, dtype anchor and array blocks as the real 2017 file
    assert lines[:8] == REAL_2017_MASK.splitlines()[:8]
    real = REAL_2017_MASK.splitlines()
    start = real.index("  PIXEL_MEANS: !!python/object/apply:numpy.core.multiarray._reconstruct")
    i = lines.index(real[start])
    assert lines[i:i + 12] == real[start:start + 12]
    assert "  CLUSTER: !!python/object/new:utils.collections.AttrDict" in lines
    assert "      BBOX_REG_WEIGHTS: !!python/tuple [10.0, 10.0, 5.0, 5.0]" in lines
    assert "state:" not in text.replace("    state: !!python/tuple", "")
    assert text.isascii() and "!!python/unicode" not in text

    head = dump_detectron_cfg(cfgs["keypoint"], "2018")
    assert head.startswith("!!python/object/new:detectron.utils.collections.AttrDict\ndictitems:\n")
    assert "    state: {!!python/unicode '__immutable__': true}" in head
    assert "      EXECUTION_TYPE: !!python/unicode 'dag'" in head  # a default string
    assert "      CONV_BODY: FPN.add_fpn_ResNet50_conv5_body" in head  # set by the YAML


def test_dump_rejects_unknown_style(cfgs):
    with pytest.raises(ValueError, match="style"):
        dump_detectron_cfg(cfgs["faster"], "2019")


def test_cross_check(cfgs):
    check_detectron_cfg(REAL_2017_MASK, cfgs["mask"], "m.pkl")
    check_detectron_cfg(REAL_HEAD_KEYPOINT, cfgs["keypoint"], "k.pkl")
    with pytest.raises(CfgMismatchError) as info:
        check_detectron_cfg(REAL_HEAD_KEYPOINT, cfgs["mask"], "k.pkl")
    message = str(info.value)
    assert message.startswith("k.pkl: its embedded cfg disagrees with the config: ")
    assert "MODEL.NUM_CLASSES is 2 in the file, 81 in the config" in message
    assert "MODEL.MASK_ON is False in the file, True in the config" in message
    assert "MODEL.KEYPOINTS_ON is True in the file, False in the config" in message
    assert "\n" not in message


def test_cross_check_missing_keys_use_detectron_fallbacks(cfgs):
    # Pre-release files have no BBOX_REG_WEIGHTS: Detectron then decodes with (1, 1, 1, 1).
    saved = {"MODEL": {"NUM_CLASSES": 81}}
    assert cfg_disagreements(saved, cfgs["faster"]) == [
        "MODEL.BBOX_REG_WEIGHTS is (1.0, 1.0, 1.0, 1.0) in the file, (10.0, 10.0, 5.0, 5.0) in the config"]
    saved["MODEL"]["BBOX_REG_WEIGHTS"] = [10, 10, 5, 5]
    assert cfg_disagreements(saved, cfgs["faster"]) == []
    assert cfg_disagreements({"MODEL": {"BBOX_REG_WEIGHTS": (10, 10, 5, 5)}}, cfgs["mask"]) == [
        "MODEL.MASK_ON is False in the file, True in the config"]
