"""Bad data in a training set: Detectron's filters where Detectron filters, a count in the log,
and no crash in the middle of a run (missing or undecodable images are skipped)."""
import json
import logging

import numpy as np

from rcnn.data.datasets import COCODataset
from rcnn.data.loader import TrainMinibatches
from rcnn.data.roidb import combined_roidb_for_training, gt_roidb
from rcnn.toy import make_shapes_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_missing_and_non_image_files_are_skipped_with_a_count(tmp_path, caplog):
    img_dir, instances, _ = make_shapes_dataset(tmp_path, 4)
    files = sorted(img_dir.iterdir())
    files[1].unlink()
    files[2].write_bytes(b"not an image at all")
    with caplog.at_level(logging.WARNING, logger="rcnn.data.roidb"):
        roidb = gt_roidb(COCODataset(instances, img_dir))
    assert [e.image for e in roidb] == [files[0], files[3]]
    assert "skipping 2 image(s) that are missing or not images" in caplog.text


def test_degenerate_boxes_dropped_crowd_only_images_filtered(tmp_path, caplog):
    img_dir, instances, _ = make_shapes_dataset(tmp_path, 4)

    def degrade(d):
        first = d["images"][0]["id"]
        extra = [[10, 10, 0, 5], [d["images"][0]["width"] + 5, 3, 20, 20]]   # zero width; right of the image
        for k, box in enumerate(extra):
            d["annotations"].append({"id": 1000 + k, "image_id": first, "iscrowd": 0, "category_id": 1, "bbox": box,
                                     "area": 50.0, "segmentation": [[10, 10, 11, 10, 11, 11]]})
        crowd_only = d["images"][1]["id"]
        for a in d["annotations"]:
            if a["image_id"] == crowd_only:
                a["iscrowd"] = 1
    _edit(instances, degrade)
    with caplog.at_level(logging.INFO, logger="rcnn.data.roidb"):
        roidb = combined_roidb_for_training([COCODataset(instances, img_dir)])
    assert "2 annotation(s) dropped" in caplog.text
    assert "Filtered 2 roidb entries: 8 -> 6" in caplog.text            # the crowd-only image and its flip
    assert 1001 not in {e.image_id for e in roidb}


def test_persons_without_visible_keypoints_filtered_for_keypoint_models(tmp_path):
    img_dir, _, keypoints = make_shapes_dataset(tmp_path, 4)
    hidden = None

    def hide(d):
        nonlocal hidden
        hidden = d["annotations"][0]["image_id"]
        for a in d["annotations"]:
            if a["image_id"] == hidden:
                a["keypoints"] = [0] * 51
                a["num_keypoints"] = 0
    _edit(keypoints, hide)
    roidb = combined_roidb_for_training([COCODataset(keypoints, img_dir)], keypoints_on=True)
    assert hidden not in {e.image_id for e in roidb} and len(roidb) == 6


def test_an_image_that_does_not_decode_mid_run_is_replaced(tmp_path, caplog):
    img_dir, instances, _ = make_shapes_dataset(tmp_path, 4)
    roidb = gt_roidb(COCODataset(instances, img_dir))
    roidb[0].image.write_bytes(PNG_SIGNATURE + b"\0" * 64)               # passes the signature check only
    loader = TrainMinibatches(roidb, (192,), 256, ims_per_batch=1, aspect_grouping=False)
    with caplog.at_level(logging.WARNING, logger="rcnn.data.loader"):
        batches = [loader.batch(i) for i in range(len(roidb))]
    assert "using the next roidb entry instead (1 unreadable so far)" in caplog.text
    ids = [b.targets[0].image_id for b in batches]
    assert roidb[0].image_id not in ids and len(ids) == 4
    assert all(np.isfinite(b.blob.numpy()).all() for b in batches)
