"""rcnn.data.datasets: catalog resolution, errors, and Detectron's class/keypoint conventions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rcnn.config import load_cfg
from rcnn.data.datasets import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    COCO_KEYPOINT_FLIP_MAP,
    COCO_KEYPOINT_NAMES,
    DATA_ROOT_ENV,
    COCODataset,
    DatasetError,
    canonical_dataset_names,
    dataset_names,
    get_data_root,
    get_dataset_paths,
)

REPO = Path(__file__).resolve().parents[1]

# Category ids deliberately out of order, image ids too.
TINY_COCO = {
    "images": [
        {"id": 42, "file_name": "b.jpg", "height": 10, "width": 20},
        {"id": 7, "file_name": "a.jpg", "height": 10, "width": 20},
    ],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 9, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
    ],
    "categories": [{"id": 9, "name": "zebra"}, {"id": 3, "name": "car"}],
}


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data root with coco_2017_val in Detectron's layout."""
    annotations = tmp_path / "coco" / "annotations"
    annotations.mkdir(parents=True)
    (annotations / "instances_val2017.json").write_text(json.dumps(TINY_COCO))
    (tmp_path / "coco" / "val2017").mkdir()
    return tmp_path


def test_catalog_resolves_under_the_root(data_root: Path) -> None:
    annotation_file, image_dir = get_dataset_paths("coco_2017_val", data_root)
    assert annotation_file == data_root / "coco/annotations/instances_val2017.json"
    assert image_dir == data_root / "coco/val2017"
    # Detectron's minival2014 is val2017: same files.
    assert get_dataset_paths("coco_2014_minival", str(data_root)) == (annotation_file, image_dir)


def test_root_from_the_environment(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(data_root))
    assert get_data_root() == data_root
    dataset = COCODataset.from_catalog("coco_2014_minival")
    assert dataset.image_ids == [7, 42]
    assert dataset.image_path(42) == data_root / "coco/val2017/b.jpg"


def test_missing_root_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(DatasetError, match=f"environment variable {DATA_ROOT_ENV}"):
        get_dataset_paths("coco_2017_val")
    missing = tmp_path / "absent"
    monkeypatch.setenv(DATA_ROOT_ENV, str(missing))
    with pytest.raises(DatasetError) as info:
        get_dataset_paths("coco_2017_val")
    assert str(missing) in str(info.value) and DATA_ROOT_ENV in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_files_name_the_path(data_root: Path) -> None:
    with pytest.raises(DatasetError) as info:
        get_dataset_paths("keypoints_coco_2017_val", data_root)
    expected = data_root / "coco/annotations/person_keypoints_val2017.json"
    assert str(info.value) == (
        f"keypoints_coco_2017_val: {expected} not found (data root from the argument or {DATA_ROOT_ENV})"
    )
    (data_root / "coco/val2017").rmdir()
    with pytest.raises(DatasetError, match=str(data_root / "coco/val2017")):
        get_dataset_paths("coco_2017_val", data_root)


def test_unknown_name(data_root: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'coco_2099_val'"):
        get_dataset_paths("coco_2099_val", data_root)


def test_detectron_2014_names_map_to_2017_splits() -> None:
    names = {}
    for yaml_name in ("e2e_faster_rcnn_R-50-FPN_1x", "e2e_keypoint_rcnn_R-50-FPN_1x"):
        cfg = load_cfg(REPO / f"configs/12_2017_baselines/{yaml_name}.yaml")
        names[yaml_name] = (canonical_dataset_names(cfg.TRAIN.DATASETS), canonical_dataset_names(cfg.TEST.DATASETS))
    assert names["e2e_faster_rcnn_R-50-FPN_1x"] == (("coco_2017_train",), ("coco_2017_val",))
    assert names["e2e_keypoint_rcnn_R-50-FPN_1x"] == (("keypoints_coco_2017_train",), ("keypoints_coco_2017_val",))
    assert canonical_dataset_names(["coco_2014_valminusminival", "coco_2017_val", "coco_2014_train"]) == (
        "coco_2017_train",
        "coco_2017_val",
    )
    with pytest.raises(DatasetError, match="coco_2014_train exists only as part of coco_2017_train"):
        canonical_dataset_names(("coco_2014_train",))  # the 1-GPU tutorial's choice
    assert set(dataset_names()) >= {"coco_2017_val", "coco_2017_train", "keypoints_coco_2017_val",
                                    "keypoints_coco_2017_train", "coco_2014_minival"}
    assert dataset_names() == [
        "coco_2014_minival", "coco_2017_test", "coco_2017_test-dev", "coco_2017_train", "coco_2017_val",
        "keypoints_coco_2014_minival", "keypoints_coco_2017_train", "keypoints_coco_2017_val",
    ]


def test_any_coco_json_and_detectron_class_order(tmp_path: Path) -> None:
    json_file = tmp_path / "custom.json"
    json_file.write_text(json.dumps(TINY_COCO))
    dataset = COCODataset(json_file, tmp_path / "images")
    # Detectron uses COCO.getCatIds() as is: the JSON's category order, here unsorted.
    assert dataset.classes == ["__background__", "zebra", "car"]
    assert dataset.num_classes == 3
    assert dataset.contiguous_id_to_category_id == {1: 9, 2: 3}
    assert dataset.category_id_to_contiguous_id == {9: 1, 3: 2}
    assert dataset.image_ids == [7, 42]
    assert dataset.image_path(7) == tmp_path / "images/a.jpg"
    assert dataset.keypoint_names is None


def test_bad_annotation_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read annotation file .*nope.json"):
        COCODataset(tmp_path / "nope.json", tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(DatasetError, match=f"annotation file {broken} is not valid JSON"):
        COCODataset(broken, tmp_path)
    broken.write_text("[]")
    with pytest.raises(DatasetError, match="is not COCO format"):
        COCODataset(broken, tmp_path)


def test_coco_val2017_instances(test_data: Path) -> None:
    """The shipped CC BY subset of coco-mini: its file keeps all 80 categories."""
    root = test_data / "coco-cc-by"
    dataset = COCODataset(root / "instances_val2017.json", root / "val2017")
    assert dataset.classes == list(COCO_CLASSES) and dataset.num_classes == 81
    assert dataset.contiguous_id_to_category_id == dict(enumerate(COCO_CATEGORY_IDS, 1))
    assert dataset.contiguous_id_to_category_id[1] == 1 and dataset.contiguous_id_to_category_id[80] == 90
    assert dataset.category_id_to_contiguous_id[13] == 12  # stop sign: id 12 does not exist
    assert all(dataset.category_id_to_contiguous_id[c] == j for j, c in dataset.contiguous_id_to_category_id.items())
    assert dataset.image_ids == [183709, 255165, 397133, 553664]   # sorted, not the JSON's order
    assert dataset.image_path(183709) == root / "val2017/000000183709.jpg"
    assert all(dataset.image_path(i).is_file() for i in dataset.image_ids)
    assert dataset.keypoint_names is None


def test_coco_val2017_keypoints(test_data: Path) -> None:
    root = test_data / "coco-cc-by"
    dataset = COCODataset(root / "person_keypoints_val2017.json", root / "val2017")
    assert dataset.classes == ["__background__", "person"]
    keypoint_cfg = load_cfg(REPO / "configs/12_2017_baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml")
    assert dataset.num_classes == keypoint_cfg.MODEL.NUM_CLASSES == 2
    assert dataset.contiguous_id_to_category_id == {1: 1}
    assert dataset.keypoint_names == list(COCO_KEYPOINT_NAMES)


def test_builtin_coco_names() -> None:
    assert len(COCO_CLASSES) == 81 and COCO_CLASSES[0] == "__background__"
    assert COCO_CLASSES[1] == "person" and COCO_CLASSES[80] == "toothbrush"
    assert len(set(COCO_CLASSES)) == 81
    assert len(COCO_CATEGORY_IDS) == 80 and list(COCO_CATEGORY_IDS) == sorted(set(COCO_CATEGORY_IDS))
    assert len(COCO_KEYPOINT_NAMES) == 17 and COCO_KEYPOINT_NAMES[0] == "nose"
    assert len(COCO_KEYPOINT_FLIP_MAP) == 8
    for left, right in COCO_KEYPOINT_FLIP_MAP.items():
        assert left.startswith("left_") and right == "right_" + left[len("left_"):]
        assert COCO_KEYPOINT_NAMES.index(right) == COCO_KEYPOINT_NAMES.index(left) + 1
