"""rcnn.config against Detectron's own config.py.

The fixtures were dumped by importing Detectron's detectron/core/config.py (commit in their
"_provenance"): every default with its type, Detectron's key tables, and the config Detectron
builds from each baseline YAML (merge_cfg_from_file + assert_and_infer_cfg).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pytest

from rcnn import config as C
from rcnn.config import CfgNode, ConfigError, ConfigKeyError

REPO = Path(__file__).resolve().parents[1]
BASELINES = {
    "e2e_faster_rcnn_R-50-FPN_1x": REPO / "configs/12_2017_baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml",
    "e2e_mask_rcnn_R-50-FPN_1x": REPO / "configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml",
    "e2e_keypoint_rcnn_R-50-FPN_1x": REPO / "configs/12_2017_baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml",
    "tutorial_1gpu_e2e_faster_rcnn_R-50-FPN": REPO
    / "configs/getting_started/tutorial_1gpu_e2e_faster_rcnn_R-50-FPN.yaml",
}


@pytest.fixture(scope="module")
def defaults_fixture(fixtures_dir: Path) -> dict[str, Any]:
    return json.loads((fixtures_dir / "detectron_config_defaults.json").read_text())


@pytest.fixture(scope="module")
def merged_fixture(fixtures_dir: Path) -> dict[str, Any]:
    return json.loads((fixtures_dir / "detectron_config_12_2017.json").read_text())


def flatten(cfg: CfgNode, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, CfgNode):
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def typed(x: Any) -> Any:
    """Value with the type of every element made explicit; tuple and list compare equal
    (JSON has only lists) but int, float, bool and str do not."""
    if isinstance(x, (list, tuple)):
        return ("seq", [typed(v) for v in x])
    return (type(x).__name__, x)


def assert_matches_detectron(ours: dict[str, Any], detectron: dict[str, dict[str, Any]]) -> None:
    assert sorted(ours) == sorted(detectron), "key sets differ"
    for key, ref in detectron.items():
        value = ours[key]
        if key == "ROOT_DIR":  # os.getcwd() at import time, in Detectron as here
            assert isinstance(value, str) and os.path.isabs(value)
        elif ref["type"] == "ndarray":  # PIXEL_MEANS: nested tuples of floats, same shape
            assert ref["dtype"] == "float64"
            assert typed(value) == typed(ref["value"]), key
            assert len(value) == ref["shape"][0] and len(value[0]) == ref["shape"][1], key
            assert len(value[0][0]) == ref["shape"][2], key
        elif ref["type"] == "float64":  # BBOX_XFORM_CLIP: a Python float, same bits
            assert type(value) is float and value == ref["value"], key
        else:
            assert type(value).__name__ == ref["type"], key
            assert typed(value) == typed(ref["value"]), key


def test_defaults_equal_detectron_key_for_key(defaults_fixture: dict[str, Any]) -> None:
    cfg = C.get_default_cfg()
    assert not cfg.is_frozen()
    assert_matches_detectron(flatten(cfg), defaults_fixture["config"])
    assert len(defaults_fixture["config"]) == 229


def test_key_tables_equal_detectron(defaults_fixture: dict[str, Any]) -> None:
    assert sorted(C._DEPRECATED_KEYS) == defaults_fixture["deprecated_keys"]
    renamed = {k: list(v) if isinstance(v, tuple) else v for k, v in C._RENAMED_KEYS.items()}
    assert renamed == defaults_fixture["renamed_keys"]
    assert dict(C._RENAMED_FUNCS) == defaults_fixture["name_compat_renames"]


def test_key_values_the_models_depend_on() -> None:
    cfg = C.get_default_cfg()
    assert cfg.BBOX_XFORM_CLIP == math.log(1000 / 16) == 4.135166556742356
    assert cfg.PIXEL_MEANS == (((102.9801, 115.9465, 122.7717),),)
    assert cfg.MODEL.BBOX_REG_WEIGHTS == (10.0, 10.0, 5.0, 5.0)
    assert cfg.DOWNLOAD_CACHE == cfg.OUTPUT_DIR + "/detectron-download-cache"


def test_default_copies_are_independent() -> None:
    a, b = C.get_default_cfg(), C.get_default_cfg()
    a.MODEL.NUM_CLASSES = 5
    assert b.MODEL.NUM_CLASSES == -1 and C.get_default_cfg().MODEL.NUM_CLASSES == -1


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_yaml_files_are_detectrons_bytes(name: str, merged_fixture: dict[str, Any]) -> None:
    source = merged_fixture["_provenance"]["yaml_files"][name]
    header, body = BASELINES[name].read_bytes().split(b"\n", 1)
    assert header.startswith(b"# Unchanged copy of facebookresearch/Detectron " + source["path"].encode())
    assert merged_fixture["_provenance"]["detectron_commit"].encode() in header
    assert hashlib.sha256(body).hexdigest() == source["sha256"]


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_merged_baselines_equal_detectron(name: str, merged_fixture: dict[str, Any]) -> None:
    expected = dict(merged_fixture["configs"][name])
    # Detectron resolves the legacy head name at model-building time (name_compat); we at load.
    box_head = expected["FAST_RCNN.ROI_BOX_HEAD"]
    if name == "e2e_keypoint_rcnn_R-50-FPN_1x":
        assert box_head["value"] == "head_builder.add_roi_2mlp_head"
        expected["FAST_RCNN.ROI_BOX_HEAD"] = {"type": "str", "value": "fast_rcnn_heads.add_roi_2mlp_head"}
    else:
        assert box_head["value"] == "fast_rcnn_heads.add_roi_2mlp_head"
    cfg = C.load_cfg(BASELINES[name])
    assert cfg.is_frozen()
    assert_matches_detectron(flatten(cfg), expected)


def test_baseline_values_from_reference_section_3_1() -> None:
    kp = C.load_cfg(BASELINES["e2e_keypoint_rcnn_R-50-FPN_1x"])
    assert kp.MODEL.NUM_CLASSES == 2 and kp.KRCNN.HEATMAP_SIZE == 56 and kp.MODEL.KEYPOINTS_ON
    assert kp.TRAIN.SCALES == (640, 672, 704, 736, 768, 800)
    assert kp.TEST.DATASETS == ("keypoints_coco_2014_minival",)
    mask = C.load_cfg(BASELINES["e2e_mask_rcnn_R-50-FPN_1x"])
    assert mask.MRCNN.ROI_MASK_HEAD == "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs"
    assert (mask.MRCNN.RESOLUTION, mask.MRCNN.ROI_XFORM_RESOLUTION, mask.MRCNN.DILATION) == (28, 14, 1)
    assert mask.SOLVER.STEPS == [0, 60000, 80000] and mask.SOLVER.WEIGHT_DECAY == 0.0001
    assert mask.TEST.RPN_PRE_NMS_TOP_N == 1000 and mask.TRAIN.RPN_PRE_NMS_TOP_N == 2000


def test_inferred_values() -> None:
    plain = C.load_cfg(None)
    assert plain.RPN.RPN_ON is False and plain.TEST.PRECOMPUTED_PROPOSALS is True
    faster = C.load_cfg(None, ["MODEL.FASTER_RCNN", "True"])
    assert faster.RPN.RPN_ON is True and faster.TEST.PRECOMPUTED_PROPOSALS is False
    rpn_only = C.load_cfg(None, ["MODEL.RPN_ONLY", "True"])
    assert rpn_only.RPN.RPN_ON is True and rpn_only.TEST.PRECOMPUTED_PROPOSALS is False
    retina = C.load_cfg(None, ["RETINANET.RETINANET_ON", "True"])
    assert retina.RPN.RPN_ON is False and retina.TEST.PRECOMPUTED_PROPOSALS is False
    legacy = C.load_cfg(None, ["MRCNN.ROI_MASK_HEAD", "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up"])
    assert legacy.MRCNN.ROI_MASK_HEAD == "mask_rcnn_heads.mask_rcnn_fcn_head_v1up"


def test_loaded_config_is_frozen() -> None:
    cfg = C.load_cfg(BASELINES["e2e_faster_rcnn_R-50-FPN_1x"])
    with pytest.raises(AttributeError):
        cfg.TEST.SCALE = 500
    with pytest.raises(AttributeError):
        C.merge_cfg_from_list(cfg, ["TEST.SCALE", "500"])


def test_set_overrides_after_the_file() -> None:
    cfg = C.load_cfg(
        BASELINES["e2e_faster_rcnn_R-50-FPN_1x"],
        ["TEST.SCALE", "400", "MODEL.NUM_CLASSES", "5", "TEST.DATASETS", "('coco_2017_val',)",
         "TRAIN.WEIGHTS", "weights/R-50.pkl", "TEST.NMS", "0.6"],
    )
    assert cfg.TEST.SCALE == 400 and cfg.MODEL.NUM_CLASSES == 5 and cfg.TEST.NMS == 0.6
    assert cfg.TEST.DATASETS == ("coco_2017_val",)
    assert cfg.TRAIN.WEIGHTS == "weights/R-50.pkl"
    assert cfg.TEST.MAX_SIZE == 1333  # from the file, untouched


def test_set_accepts_python_values() -> None:
    cfg = C.get_default_cfg()
    C.merge_cfg_from_list(cfg, ["TEST.NMS", 0.5, "NUM_GPUS", 2, "TRAIN.SCALES", [100]])
    assert (cfg.TEST.NMS, cfg.NUM_GPUS, cfg.TRAIN.SCALES) == (0.5, 2, (100,))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_the_full_key(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"^Non-existent config key: MODEL\.FOO$") as info:
        C.load_cfg(write(tmp_path, "MODEL:\n  FOO: 1\n"))
    assert isinstance(info.value, ConfigKeyError) and isinstance(info.value, ConfigError)
    assert str(info.value) == "Non-existent config key: MODEL.FOO"
    for key in ("MODEL.FOO", "FOO.BAR", "TEST.SCALE.FOO", "FOO"):
        with pytest.raises(ConfigKeyError, match=f"^Non-existent config key: {key}$"):
            C.load_cfg(None, [key, "1"])


def test_renamed_key_names_old_and_new(tmp_path: Path) -> None:
    message = (
        "Key TEST.SCALES was renamed to TEST.SCALE; please update your config. Note: Also convert "
        "from a tuple, e.g. (600, ), to a integer, e.g. 600."
    )
    with pytest.raises(ConfigKeyError) as info:
        C.load_cfg(write(tmp_path, "TEST:\n  SCALES: (800,)\n"))
    assert str(info.value) == message
    with pytest.raises(KeyError) as info:
        C.load_cfg(None, ["TEST.SCALES", "(800,)"])
    assert str(info.value) == message
    with pytest.raises(ConfigKeyError, match=r"^Key MODEL\.ROI_HEAD was renamed to FAST_RCNN\.ROI_BOX_HEAD; "
                       r"please update your config\.$"):
        C.load_cfg(None, ["MODEL.ROI_HEAD", "x"])


def test_deprecated_keys_are_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rcnn.config"):
        from_file = C.load_cfg(write(tmp_path, "MODEL:\n  DILATION: 2\n  NUM_CLASSES: 3\nUSE_GPU_NMS: True\n"))
        from_list = C.load_cfg(None, ["RPN.ON", "True", "FINAL_MSG", "bye", "NUM_GPUS", "4"])
    warned = [r.getMessage() for r in caplog.records]
    for key in ("MODEL.DILATION", "USE_GPU_NMS", "RPN.ON", "FINAL_MSG"):
        assert f"Deprecated config key (ignoring): {key}" in warned
    assert from_file.MODEL.NUM_CLASSES == 3 and "DILATION" not in from_file.MODEL
    assert "USE_GPU_NMS" not in from_file and "FINAL_MSG" not in from_list
    assert from_list.NUM_GPUS == 4 and "ON" not in from_list.RPN and from_list.RPN.RPN_ON is False


def test_type_coercion_follows_detectron(tmp_path: Path) -> None:
    cfg = C.load_cfg(
        write(tmp_path, "TRAIN:\n  SCALES: [1, 2]\nSOLVER:\n  STEPS: (0, 10)\n  BASE_LR: 1e-4\n"
                        "MODEL:\n  TYPE: 5\nOUTPUT_DIR: .\n"),
        ["TEST.BBOX_AUG.SCALES", "[400, 500]", "MODEL.CONV_BODY", "True", "EXPECTED_RESULTS",
         "[('coco_2017_val', 'box', 'AP', 0.37)]"],
    )
    assert cfg.TRAIN.SCALES == (1, 2) and type(cfg.TRAIN.SCALES) is tuple  # list -> tuple
    assert cfg.SOLVER.STEPS == [0, 10] and type(cfg.SOLVER.STEPS) is list  # tuple -> list
    assert cfg.SOLVER.BASE_LR == 1e-4  # YAML 1.1 reads '1e-4' as a string; literal_eval makes it a float
    assert cfg.MODEL.TYPE == "5" and cfg.MODEL.CONV_BODY == "True"  # anything -> str for str keys
    assert cfg.OUTPUT_DIR == "."
    assert cfg.TEST.BBOX_AUG.SCALES == (400, 500)
    assert cfg.EXPECTED_RESULTS == [("coco_2017_val", "box", "AP", 0.37)]


@pytest.mark.parametrize(
    ("opts", "types"),
    [
        (["SOLVER.BASE_LR", "1"], "(<class 'float'> vs. <class 'int'>)"),  # no int -> float promotion
        (["TEST.SCALE", "(800,)"], "(<class 'int'> vs. <class 'tuple'>)"),
        (["TRAIN.SCALES", "800"], "(<class 'tuple'> vs. <class 'int'>)"),
        (["MODEL.FASTER_RCNN", "1"], "(<class 'bool'> vs. <class 'int'>)"),
        (["NUM_GPUS", "True"], "(<class 'int'> vs. <class 'bool'>)"),
    ],
)
def test_type_mismatch_names_key_and_types(opts: list[str], types: str) -> None:
    with pytest.raises(ConfigError) as info:
        C.load_cfg(None, opts)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"Type mismatch {types}")
    assert str(info.value).endswith(f"for config key: {opts[0]}")


def test_sections_take_mappings_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="for config key: MODEL$"):
        C.load_cfg(write(tmp_path, "MODEL: 5\n"))
    with pytest.raises(ConfigError, match="for config key: MODEL$"):
        C.load_cfg(write(tmp_path, "MODEL:\n"))  # an empty section is null in YAML
    with pytest.raises(ConfigError, match="for config key: TEST.SCALE$"):
        C.load_cfg(write(tmp_path, "TEST:\n  SCALE:\n    A: 1\n"))
    with pytest.raises(ConfigError, match="MODEL is a config section"):
        C.load_cfg(None, ["MODEL", "{'TYPE': 'x'}"])


def test_float_array_and_clip_values() -> None:
    cfg = C.load_cfg(None, ["PIXEL_MEANS", "[[[1, 2, 3.5]]]", "BBOX_XFORM_CLIP", "4.0"])
    assert cfg.PIXEL_MEANS == (((1.0, 2.0, 3.5),),) and type(cfg.PIXEL_MEANS[0][0][0]) is float
    assert cfg.BBOX_XFORM_CLIP == 4.0  # Detectron's np.float64 default rejected every override
    assert C.load_cfg(None, ["PIXEL_MEANS", "[1, 2, 3]"]).PIXEL_MEANS == (1.0, 2.0, 3.0)  # shape as given
    with pytest.raises(ConfigError, match="PIXEL_MEANS"):
        C.load_cfg(None, ["PIXEL_MEANS", "[[1, 2], [3]]"])


def test_odd_override_list() -> None:
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        C.load_cfg(None, ["TEST.SCALE"])


def test_file_errors_are_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        C.load_cfg(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    bad = write(tmp_path, "MODEL:\n  TYPE: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        C.load_cfg(bad)
    assert str(info.value).startswith(f"malformed YAML in {bad}:") and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="must hold a YAML mapping"):
        C.load_cfg(write(tmp_path, "- MODEL\n"))
    with pytest.raises(ConfigError, match="not a string"):  # 'ON' is YAML 1.1 for True
        C.load_cfg(write(tmp_path, "RPN:\n  ON: True\n"))


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert C.load_cfg(write(tmp_path, "# nothing\n")) == C.load_cfg(None)


def test_yaml_round_trip_is_exact() -> None:
    cfg = C.load_cfg(
        BASELINES["e2e_keypoint_rcnn_R-50-FPN_1x"],
        ["EXPECTED_RESULTS", "[('coco', 'box', 'AP', 0.37), ['a', 1e-14]]", "MODEL.TYPE", "'1e-4'",
         "OUTPUT_DIR", "'True'", "TRAIN.WEIGHTS", "'caf\u00e9 : #x'", "TEST.BBOX_AUG.SCALES", "()"],
    )
    text = C.cfg_to_yaml(cfg)
    back = C.cfg_from_yaml_text(text)
    assert back == cfg and back.is_frozen()
    exact = {k: _exact_types(v) for k, v in flatten(cfg).items()}
    assert {k: _exact_types(v) for k, v in flatten(back).items()} == exact
    assert exact["EXPECTED_RESULTS"] == ("list", [("tuple", ["str"] * 3 + ["float"]), ("list", ["str", "float"])])
    assert back.EXPECTED_RESULTS == [("coco", "box", "AP", 0.37), ["a", 1e-14]]
    assert back.MODEL.TYPE == "1e-4" and back.OUTPUT_DIR == "True"
    assert "!!python/tuple" in text and "!!python/object" not in text


def test_dumped_yaml_merges_back(tmp_path: Path) -> None:
    cfg = C.load_cfg(BASELINES["e2e_mask_rcnn_R-50-FPN_1x"], ["TEST.SCALE", "500"])
    assert C.load_cfg(write(tmp_path, C.cfg_to_yaml(cfg))) == cfg


def test_bad_yaml_text() -> None:
    with pytest.raises(ConfigError, match=r"^malformed YAML in <config text>:1:"):
        C.cfg_from_yaml_text("{")
    with pytest.raises(ConfigError):  # safe loader: no arbitrary Python objects
        C.cfg_from_yaml_text("A: !!python/object/apply:os.getcwd []\n")


def _exact_types(x: Any) -> Any:
    """The type tree of a value, tuple and list told apart."""
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_exact_types(v) for v in x])
    return type(x).__name__
