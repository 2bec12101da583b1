"""Preprocessing against Detectron's ``get_image_blob`` on real COCO images (bit-exact blobs)."""
import hashlib

import numpy as np
import pytest

from rcnn.data.preprocess import ImageReadError, compute_scale, images_to_blob, prepare, read_image
from tests.golden import js

# preprocess_cc_by: on the shipped CC BY images (tests/data); preprocess: on coco-mini (../shared/data).
RUNS = js("preprocess_cc_by")["runs"]


@pytest.mark.parametrize("run", RUNS, ids=[f"{r['file']}@{r['target_scale']}/{r['max_size']}" for r in RUNS])
def test_blob_matches_detectron(test_data, run):
    check_blob(read_image(test_data / js("preprocess_cc_by")["image_dir_relative_to_tests_data"] / run["file"]), run)


def test_blob_matches_detectron_on_coco_mini(shared_data):
    """The first golden's 7 runs, one test: it needs ../shared."""
    g = js("preprocess")
    for run in g["runs"]:
        check_blob(read_image(shared_data / g["image_dir_relative_to_shared_data"] / run["file"]), run)


def check_blob(im, run):
    assert list(im.shape) == run["image_hwc_shape"], run["file"]
    assert hashlib.sha256(im.tobytes()).hexdigest() == run["image_sha256"], "JPEG decoder differs"
    p = prepare(im, run["target_scale"], run["max_size"])
    assert repr(p.scale) == run["im_scale_repr"]
    assert list(p.data.shape[:2]) == run["resized_hw"]
    blob = images_to_blob([p.data])
    assert list(blob.shape) == run["blob_shape"]
    for s in run["samples"]:
        assert blob[tuple(s["index_nchw"])] == np.float32(s["value"])
    assert hashlib.sha256(blob.tobytes()).hexdigest() == run["blob_sha256"]
    assert np.float32(p.scale) == np.float32(run["im_info_float32"][2])


def test_scale_rule():
    assert compute_scale(480, 640, 800, 1333) == 800 / 480
    # round(800 / 383 * 640) = 1337 > 1333: the long side is capped instead.
    assert compute_scale(383, 640, 800, 1333) == 1333 / 640


def test_padding_and_batch_layout():
    a = np.ones((33, 40, 3), np.float32)
    b = np.full((20, 70, 3), 2, np.float32)
    blob = images_to_blob([a, b])
    assert blob.shape == (2, 3, 64, 96) and blob.flags.c_contiguous
    assert blob[0, :, :33, :40].min() == 1 and blob[0, :, 33:].max() == 0 and blob[0, :, :, 40:].max() == 0
    assert blob[1, :, :20, :70].min() == 2 and blob[1, :, 20:].max() == 0


def test_unreadable_image(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(bad)
