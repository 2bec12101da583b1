"""Detectron's proposal files and proposal recall, against values from Detectron's own code
(``proposals_*`` goldens: a proposal file written by Detectron's ``save_object``, the AR of
``evaluate_proposal_file`` and the test-time roidb of ``get_roidb(proposal_file=...)``)."""
import json

import numpy as np
import pytest

from parity.proposals import AR_NAMES, box_proposal_recall, box_proposal_stats, evaluate_proposal_file
from rcnn.data.datasets import COCODataset
from rcnn.data.proposal_file import (
    ProposalFileError,
    proposals_for_images,
    read_proposal_file,
    write_proposal_file,
)
from rcnn.data.roidb import gt_entry


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return {"pkl": fixtures_dir / "golden" / "proposals_coco_mini.pkl",
            "eval": json.loads((fixtures_dir / "golden" / "proposals_eval.json").read_text()),
            "test": np.load(fixtures_dir / "golden" / "proposals_test_time.npz")}


@pytest.fixture(scope="module")
def mini(test_data):
    """coco-mini's annotations (shipped; its images are not, and these tests do not read them)."""
    d = test_data / "coco-mini-annotations"
    return COCODataset(d / "instances_val2017.json", d)


def _eval_inputs(mini, golden):
    gt = [gt_entry(mini, i) for i in mini.image_ids]
    props = proposals_for_images(read_proposal_file(golden["pkl"]), [(e.image_id, e.height, e.width) for e in gt],
                                 "golden")
    return gt, [props[i] for i in mini.image_ids]


def test_detectron_written_file_reads_back(golden):
    pf = read_proposal_file(golden["pkl"])
    assert len(pf.ids) == 80 and pf.ids[-1] == 999999999 and pf.cfg_yaml == "golden: synthetic proposals"
    assert all(b.dtype == np.float32 and b.shape == (len(s), 4) for b, s in zip(pf.boxes, pf.scores))


def test_box_proposal_stats_exact(mini, golden):
    gt, props = _eval_inputs(mini, golden)
    assert [len(p) for p in props] == golden["eval"]["eval_proposals_per_image"]
    stats = box_proposal_stats(gt, props)
    assert [[k, v] for k, v in zip(AR_NAMES, stats.stats)] == golden["eval"]["box_proposal"]   # bit for bit
    for key, want in golden["eval"]["detail"].items():
        area, limit = key.split("@")
        got = box_proposal_recall(gt, props, area, int(limit))
        assert got["num_pos"] == want["num_pos"] and got["ar"] == want["ar"], key
        assert got["recalls"].tolist() == want["recalls"] and got["gt_overlaps"].tolist() == want["gt_overlaps"], key


def test_evaluate_proposal_file_and_round_trip(mini, golden, tmp_path):
    pf = read_proposal_file(golden["pkl"])
    path = tmp_path / "rpn_proposals.pkl"
    write_proposal_file(path, pf.boxes, pf.scores, pf.ids, "MODEL:\n  RPN_ONLY: true\n")
    again = read_proposal_file(path)
    assert again.ids == pf.ids and all(np.array_equal(a, b) for a, b in zip(again.boxes, pf.boxes))
    stats = evaluate_proposal_file(mini, path)
    assert list(stats.stats) == [v for _, v in golden["eval"]["box_proposal"]]


def test_test_time_roidb_exact(mini, golden):
    """``get_roidb(proposal_file, proposal_limit=120)``: clip, unique_boxes, filter_small_boxes(2), top 120."""
    g = golden["test"]
    ids = g["image_ids"].tolist()
    sizes = [(i, mini.coco.imgs[i]["height"], mini.coco.imgs[i]["width"]) for i in ids]
    props = proposals_for_images(read_proposal_file(golden["pkl"]), sizes, "golden", limit=int(g["proposal_limit"]))
    for k, i in enumerate(ids):
        assert props[i].dtype == np.float32 and np.array_equal(props[i], g[f"boxes_{k}"]), i


def test_missing_and_repeated_images_refused(golden, tmp_path):
    pf = read_proposal_file(golden["pkl"])
    with pytest.raises(ProposalFileError, match="no proposals for 1 of the 2 images"):
        proposals_for_images(pf, [(pf.ids[0], 10, 10), (123, 10, 10)], "x.pkl")
    pf.ids[1] = pf.ids[0]
    with pytest.raises(ProposalFileError, match="two proposal entries"):
        proposals_for_images(pf, [(pf.ids[0], 10, 10)], "x.pkl")


def test_parity_eval_proposals_cli(test_data, golden, tmp_path, capsys):
    from parity.__main__ import main

    ann = test_data / "coco-mini-annotations" / "instances_val2017.json"
    out = tmp_path / "ar.json"
    assert main(["eval", "--ann", str(ann), "--proposals", str(golden["pkl"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "AR@100  : 0.672"
    assert json.loads(out.read_text())["stats"] == [v for _, v in golden["eval"]["box_proposal"]]
    assert main(["eval", "--ann", str(ann)]) == 2 and "--proposals" in capsys.readouterr().err
