"""RPN-only and precomputed-proposal models through tools/test_net.py on real COCO images (tests/data):
``rpn_proposals.pkl`` in Detectron's layout with the proposal recall in metrics.json, then a
Fast R-CNN run on that file; hostile proposal files refused like hostile weights."""
import importlib.util
import json
import pickle

import numpy as np
import pytest

from detectron_parity.errors import UserError
from parity.metrics import load_metrics
from parity.proposals import AR_NAMES, box_proposal_stats
from rcnn.config import load_cfg
from rcnn.data.datasets import COCODataset
from rcnn.data.preprocess import read_image
from rcnn.data.proposal_file import proposals_for_images, read_proposal_file
from rcnn.data.roidb import gt_entry
from rcnn.engine.weights import load_model
from rcnn.inference.detector import Detector
from rcnn.synthetic import write_related_detectron_pkl
from tests.conftest import REPO_ROOT
from tests.models import SMALL

_spec = importlib.util.spec_from_file_location("test_net_tool", REPO_ROOT / "tools" / "test_net.py")
test_net = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_net)

CONFIGS = {name: REPO_ROOT / f"configs/12_2017_baselines/{name}_R-50-FPN_1x.yaml" for name in ("rpn", "fast_rcnn")}
LIMIT = 3


@pytest.fixture(scope="module")
def mini(test_data):
    return test_data / "coco-cc-by"   # shipped, CC BY


@pytest.fixture(scope="module")
def pkls(synthetic_pkls, tmp_path_factory):
    out = tmp_path_factory.mktemp("rpn_pkls")
    paths = {}
    for name, cfg_path in CONFIGS.items():
        paths[name] = out / f"{name}.pkl"
        write_related_detectron_pkl(str(synthetic_pkls["faster"]), load_cfg(cfg_path, SMALL), str(paths[name]))
    return paths


def _args(name, pkls, mini, out, *extra):
    return ["--cfg", str(CONFIGS[name]), "--load_detectron", str(pkls[name]), "--json", str(mini / "instances_val2017.json"),
            "--images", str(mini / "val2017"), "--output_dir", str(out), "--limit", str(LIMIT), "--set", *SMALL, *extra]


@pytest.fixture(scope="module")
def rpn_run(pkls, mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("rpn_run")
    assert test_net.main(_args("rpn", pkls, mini, out, "TEST.RPN_POST_NMS_TOP_N", "300")) == 0
    return out


def test_rpn_proposals_file_and_recall(rpn_run, pkls, mini):
    path = rpn_run / "rpn_proposals.pkl"
    assert path.read_bytes()[:2] == b"\x80\x02"                      # protocol 2, as save_object
    raw = pickle.load(open(path, "rb"), encoding="latin1")           # plain pickle reads it too
    assert sorted(raw) == ["boxes", "cfg", "ids", "scores"] and "RPN_ONLY: true" in raw["cfg"]
    pf = read_proposal_file(path)
    dataset = COCODataset(mini / "instances_val2017.json", mini / "val2017")
    assert pf.ids == dataset.image_ids[:LIMIT]
    for boxes, scores in zip(pf.boxes, pf.scores):
        assert boxes.dtype == scores.dtype == np.float32 and len(boxes) == 300 and len(np.unique(scores)) == 300
        assert (np.diff(scores) <= 0).all()                           # descending, im_proposals' order
    # the file holds exactly what the Detector returns for an image (rois / im_scale, probabilities)
    cfg = load_cfg(CONFIGS["rpn"], SMALL + ["TEST.RPN_POST_NMS_TOP_N", "300"])
    first = Detector(load_model(cfg, load_detectron=str(pkls["rpn"]))[0], cfg)([read_image(dataset.image_path(pf.ids[0]))])[0]
    assert np.array_equal(first.boxes, pf.boxes[0]) and np.array_equal(first.scores, pf.scores[0])
    assert (first.classes == 0).all()
    # metrics.json holds Detectron's 8 numbers of exactly that file
    gt = [gt_entry(dataset, i) for i in pf.ids]
    props = proposals_for_images(pf, [(e.image_id, e.height, e.width) for e in gt], "rpn")
    want = box_proposal_stats(gt, [props[i] for i in pf.ids])
    metrics = load_metrics(rpn_run / "metrics.json")
    assert metrics.box_proposal == want and metrics.by_type() == {}
    assert json.loads((rpn_run / "metrics.json").read_text())["box_proposal"]["names"] == list(AR_NAMES)
    assert 0 < want["AR@100"] < want["AR@1000"] <= 1


def test_rpn_eval_only_rescores_the_file(rpn_run, pkls, mini):
    before = (rpn_run / "metrics.json").read_text()
    args = _args("rpn", pkls, mini, rpn_run, "TEST.RPN_POST_NMS_TOP_N", "300")
    assert test_net.main(args[:2] + args[4:] + ["--eval_only"]) == 0
    assert json.loads(before)["box_proposal"] == json.loads((rpn_run / "metrics.json").read_text())["box_proposal"]


def test_fast_rcnn_on_the_rpn_proposals(rpn_run, pkls, mini, tmp_path):
    out = tmp_path / "fast"
    assert test_net.main(_args("fast_rcnn", pkls, mini, out, "TEST.PROPOSAL_LIMIT", "200", "--proposals",
                               str(rpn_run / "rpn_proposals.pkl"))) == 0
    records = json.loads((out / "bbox_instances_val2017_results.json").read_text())
    assert {r["image_id"] for r in records} <= set(read_proposal_file(rpn_run / "rpn_proposals.pkl").ids)
    assert len(records) >= 150 and len({r["category_id"] for r in records}) >= 3
    assert set(load_metrics(out / "metrics.json").by_type()) == {"bbox"}


def _hostile(tmp_path):
    class Payload:
        def __reduce__(self):
            import os
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    files = {"payload": pickle.dumps({"boxes": [Payload()], "scores": [], "ids": []}, protocol=2),
             "object array": pickle.dumps({"boxes": [np.array([[1, 2, 3, 4]], dtype=object)], "scores": [np.ones(1)],
                                           "ids": [1]}, protocol=2)}
    good = pickle.dumps({"boxes": [np.ones((2, 4), np.float32)], "scores": [np.ones(2, np.float32)], "ids": [1]},
                        protocol=2)
    files["truncated"] = good[: len(good) // 2]
    files["not proposals"] = pickle.dumps({"blobs": {}}, protocol=2)
    return files


@pytest.mark.parametrize("case,message", [("payload", "refusing to load"), ("object array", "not a plain numeric"),
                                          ("truncated", "truncated"), ("not proposals", "not a Detectron proposals")])
def test_hostile_proposal_file_refused(case, message, tmp_path):
    path = tmp_path / "rpn_proposals.pkl"
    path.write_bytes(_hostile(tmp_path)[case])
    # The safe unpickler (convert.pickle_io, shared with weights files) raises its own errors, the
    # checks of the content ProposalFileError: user errors both, one line, exit 2.
    with pytest.raises(UserError, match=message) as e:
        read_proposal_file(path)
    assert len(str(e.value).splitlines()) == 1 and not (tmp_path / "pwned").exists()


def test_hostile_proposal_file_exits_2(pkls, mini, tmp_path, capsys):
    path = tmp_path / "rpn_proposals.pkl"
    path.write_bytes(_hostile(tmp_path)["payload"])
    rc = test_net.main(_args("fast_rcnn", pkls, mini, tmp_path / "o", "--proposals", str(path)))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: refusing to load") and "system" in err[-1], err[-1:]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "o" / "bbox_instances_val2017_results.json").exists()


def test_proposals_of_another_dataset_exit_2(pkls, mini, tmp_path, capsys, fixtures_dir):
    from rcnn.data.proposal_file import write_proposal_file

    path = tmp_path / "other.pkl"
    write_proposal_file(path, [np.ones((1, 4), np.float32)], [np.ones(1, np.float32)], [42], "x")
    assert test_net.main(_args("fast_rcnn", pkls, mini, tmp_path / "o", "--proposals", str(path))) == 2
    assert "has no proposals for 3 of the 3 images" in capsys.readouterr().err
    assert test_net.main(_args("fast_rcnn", pkls, mini, tmp_path / "o")) == 2   # the config's URL
    assert "download it and pass --proposals" in capsys.readouterr().err
