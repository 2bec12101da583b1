"""Precomputed-proposal models (``MODEL.FASTER_RCNN: False``): Detectron's host steps against its
own functions (``proposals_test_time.npz``: ``_get_rois_blob``, ``DEDUP_BOXES``), and the
Detector's RoI path against those golden RoIs."""
import numpy as np
import pytest
import torch

from rcnn.config import load_cfg
from rcnn.data.datasets import COCODataset
from rcnn.data.preprocess import images_to_blob, read_image
from rcnn.data.proposal_file import read_proposal_file
from rcnn.engine.weights import load_model
from rcnn.inference.detector import Detector, rois_for_heads
from rcnn.inference.postprocess import box_results_with_nms_and_limit
from rcnn.inference.precomputed import dedup_rois
from rcnn.ops import boxes as box_ops
from rcnn.synthetic import write_related_detectron_pkl
from tests.conftest import REPO_ROOT
from tests.models import SMALL

FAST = REPO_ROOT / "configs/12_2017_baselines/fast_rcnn_R-50-FPN_1x.yaml"


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return np.load(fixtures_dir / "golden" / "proposals_test_time.npz")


def _images(golden):
    return [k for k in range(len(golden["image_ids"])) if f"rois_{k}" in golden.files]


def test_projection_and_dedup_exact(golden):
    dups = 0
    for k in _images(golden):
        boxes = torch.from_numpy(golden[f"boxes_{k}"])
        rois = rois_for_heads(boxes, torch.zeros(len(boxes), dtype=torch.int64), [float(golden[f"im_scale_{k}"])])
        assert torch.equal(rois, torch.from_numpy(golden[f"rois_{k}"])), k
        first, inverse = dedup_rois(rois, 1 / 16.0)
        index, inv = golden[f"dedup_index_{k}"], golden[f"dedup_inv_index_{k}"]
        # The same distinct RoIs, and every RoI represented by the same first occurrence.
        assert sorted(first.tolist()) == sorted(index.tolist()) and first[inverse].tolist() == index[inv].tolist(), k
        dups += len(rois) - len(first)
    assert dups > 400   # the fixture exercises deduplication


def test_dedup_off_and_empty():
    rois = torch.tensor([[0, 1, 1, 5, 5], [0, 1, 1, 5, 5]], dtype=torch.float32)
    first, inverse = dedup_rois(rois, 0)
    assert first.tolist() == inverse.tolist() == [0, 1]
    first, inverse = dedup_rois(rois[:0], 1 / 16)
    assert first.numel() == inverse.numel() == 0
    first, inverse = dedup_rois(torch.tensor([[0, 1, 1, 5, 5], [1, 1, 1, 5, 5]], dtype=torch.float32), 1 / 16)
    assert sorted(first.tolist()) == [0, 1]   # other image: not a duplicate


@pytest.fixture(scope="module")
def fast_model(synthetic_pkls, tmp_path_factory):
    cfg = load_cfg(FAST, SMALL)
    path = tmp_path_factory.mktemp("fast") / "fast_rcnn.pkl"
    write_related_detectron_pkl(str(synthetic_pkls["faster"]), cfg, str(path))
    return cfg, load_model(cfg, load_detectron=str(path))[0], path


def test_detector_box_path_on_golden_rois(fast_model, golden, test_data, fixtures_dir):
    """Detector(proposals) == the box head on Detectron's deduplicated golden RoIs, then Detectron's
    decode (from the *proposals*), clip, NMS and cap: the same detections bit for bit."""
    cfg, model, _ = fast_model
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.PROPOSAL_LIMIT = int(golden["proposal_limit"])
    cfg.TEST.SCORE_THRESH = 0.0   # the golden proposals are random boxes: keep low scores too
    cfg.freeze()
    mini = COCODataset(test_data / "coco-cc-by/instances_val2017.json", test_data / "coco-cc-by/val2017")
    pf = read_proposal_file(fixtures_dir / "golden" / "proposals_coco_mini.pkl")
    k = 54   # image 397133, shipped (tests/data)
    image_id = int(golden["image_ids"][k])
    im = read_image(mini.image_path(image_id))
    detector = Detector(model, cfg)
    got = detector([im], [pf.boxes[pf.ids.index(image_id)]])[0]

    p = detector.prepare(im, pf.boxes[pf.ids.index(image_id)])
    assert np.array_equal(p.proposals, golden[f"boxes_{k}"]) and p.scale == float(golden[f"im_scale_{k}"])
    with torch.no_grad():
        feats = model.features(torch.from_numpy(images_to_blob([p.data])))
        index, inv = torch.from_numpy(golden[f"dedup_index_{k}"]), torch.from_numpy(golden[f"dedup_inv_index_{k}"])
        logits, deltas = model.box_outputs(feats, torch.from_numpy(golden[f"rois_{k}"])[index])
    scores = torch.softmax(logits, 1)[inv]
    boxes = torch.from_numpy(golden[f"boxes_{k}"])[index][inv]
    pred = box_ops.clip_tiled(box_ops.decode(boxes, deltas[inv], cfg.MODEL.BBOX_REG_WEIGHTS, cfg.BBOX_XFORM_CLIP),
                              float(im.shape[0]), float(im.shape[1]))
    want = box_results_with_nms_and_limit(scores, pred, torch.zeros(len(boxes), dtype=torch.int64), 1, 0.0,
                                          cfg.TEST.NMS, cfg.TEST.DETECTIONS_PER_IM)
    assert len(got) == 100
    assert np.array_equal(got.scores, want.scores.numpy()) and np.array_equal(got.boxes, want.boxes.numpy())
    assert np.array_equal(got.classes, want.classes.numpy())
