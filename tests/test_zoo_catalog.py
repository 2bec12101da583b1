"""The model-zoo catalog against Detectron's own tables (MODEL_ZOO.md, projects/GN/README.md
@ 04155a0, parsed once into tests/fixtures/model_zoo_md.json), and what is derived from it:
the reference rows of ``parity compare --reference detectron``, BENCHMARK.md's zoo table and
``parity zoo list``."""
from __future__ import annotations

import json
import re

import pytest

from parity import benchmark_md, zoo
from parity.__main__ import main
from parity.compare import Row, compare, reference_row
from parity.reference import MODELS

from .conftest import FIXTURES

FIXTURE = json.loads((FIXTURES / "model_zoo_md.json").read_text())
ROWS = [r for r in FIXTURE["rows"] if r["model_id"] is not None]
# The GN README's "Baselines with BN" table repeats two MODEL_ZOO.md rows.
GN_BN_COPIES = [r for r in ROWS if r["table"] == "E2E MASK RCNN BN"]
MODEL_ROWS = [r for r in ROWS if r not in GN_BN_COPIES]
FAMILY_OF_TYPE = {("RPN", "RPN"): "rpn", ("2-STAGE", "Fast"): "fast_rcnn", ("2-STAGE", "Mask"): "mask_rcnn",
                  ("E2E FASTER AND MASK", "Faster"): "e2e_faster_rcnn", ("E2E FASTER AND MASK", "Mask"): "e2e_mask_rcnn",
                  ("RETINANET", "RetinaNet"): "retinanet", ("BELLS", "Mask"): "e2e_mask_rcnn",
                  ("PERSON-ONLY RPN", "RPN"): "rpn_person_only", ("2-STAGE KEYPOINTS", "Kps"): "keypoint_rcnn",
                  ("END-TO-END KEYPOINTS", "Kps"): "e2e_keypoint_rcnn"}


def _by_id():
    return {m.id: m for m in zoo.catalog().values() if m.is_detector}


def test_fixture_provenance_and_size():
    assert FIXTURE["provenance"]["commit"] == "04155a0"
    assert FIXTURE["provenance"]["files"] == ["MODEL_ZOO.md", "projects/GN/README.md"]
    zoo_ids = [r["model_id"] for r in ROWS if r["source"] == "MODEL_ZOO.md"]
    assert len(zoo_ids) == len(set(zoo_ids)) == 74  # every model of MODEL_ZOO.md
    assert len(MODEL_ROWS) == 80 and len(FIXTURE["imagenet"]) == 7


def test_every_model_matches_its_published_row():
    by_id = _by_id()
    assert sorted(by_id) == sorted(r["model_id"] for r in MODEL_ROWS)  # no model missing, none added
    for r in MODEL_ROWS:
        m = by_id[r["model_id"]]
        assert m.published == {k: r[k] for k in ("box_ap", "mask_ap", "kp_ap", "prop_ar")}, m.name
        assert (m.lr_schd, m.im_per_gpu, m.train_mem_gb, m.train_time_s_per_iter, m.train_time_total_hr) == \
            (r["lr_schd"], r["im_per_gpu"], r["train_mem_gb"], r["train_time_s_per_iter"], r["train_time_total_hr"])
        assert list(m.inference_time_s_per_im) == r["inference_time_s_per_im"]
        assert m.tasks == tuple(t for t in zoo.TASKS if r[zoo.PUBLISHED_KEYS[t]] is not None)
        assert m.url == r["model_url"]
        assert m.md5_url == (None if r["model_url"] is None else r["model_url"] + ".md5sum")
        keypoints = "KEYPOINTS" in r["table"] or "PERSON-ONLY" in r["table"]
        assert m.dataset == ("keypoints_coco_2014_minival" if keypoints else "coco_2014_minival")
        assert r["source"] in m.source and r["table"].lower() in m.source
        # backbone and normalisation as the table names them ("R-50-FPN, GN, scratch")
        body, *notes = r["backbone"].split(", ")
        assert (m.backbone, m.norm) == (body, "GN" if "GN" in notes else "BN")
        if r["source"] == "MODEL_ZOO.md":
            assert m.family == FAMILY_OF_TYPE[(r["table"], r["type"])]
        else:
            assert m.family == "e2e_mask_rcnn" and r["type"] == "Mask R-CNN"


def test_config_paths_follow_the_published_urls():
    """The config of each model is the one its URL names (Detectron writes the config file name
    into the output path); models without a download follow the GN README's naming note."""
    for r in MODEL_ROWS:
        m = _by_id()[r["model_id"]]
        if r["model_url"] is None:  # GN from scratch: "the config yaml files starting with scratch"
            body = r["backbone"].split(", ")[0]
            expected = f"04_2018_gn_baselines/scratch_e2e_mask_rcnn_{body}_{r['lr_schd']}_gn"
        else:
            match = re.search(r"/(12_2017_baselines/[^/]+?)\.yaml\.|/(04_2018_gn_baselines/[^/]+?_gn)_\d{4}\.",
                              r["model_url"])
            expected = match.group(1) or match.group(2)
        assert m.config == f"configs/{expected}.yaml"
        assert m.name == expected.split("/")[1]
        assert f"_{m.backbone}_" in f"_{m.name}_" and m.name.startswith(("scratch_" if "scratch" in r["backbone"]
                                                                        else "") + m.family + "_")
    names = [m.name for m in zoo.catalog().values()]
    assert len(names) == len(set(names))


def test_gn_readme_copies_agree_with_model_zoo():
    by_id = _by_id()
    for r in GN_BN_COPIES:
        m = by_id[r["model_id"]]
        assert m.source.startswith("MODEL_ZOO.md")
        assert (m.published["box_ap"], m.published["mask_ap"], m.lr_schd, m.train_mem_gb,
                list(m.inference_time_s_per_im)) == \
            (r["box_ap"], r["mask_ap"], r["lr_schd"], r["train_mem_gb"], r["inference_time_s_per_im"])


def test_x152_with_and_without_test_time_augmentation():
    m = zoo.get("37129812")
    assert m.name == "e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x" and m.lr_schd == "s1x"
    assert (m.published["box_ap"], m.published["mask_ap"]) == (48.1, 41.5)
    row = next(r for r in FIXTURE["rows"] if r["backbone"] == "[above without test-time aug.]")
    assert m.without_test_aug == {"box_ap": row["box_ap"], "mask_ap": row["mask_ap"],
                                  "inference_time_s_per_im": row["inference_time_s_per_im"]} == \
        {"box_ap": 45.2, "mask_ap": 39.7, "inference_time_s_per_im": [0.325, 0.018]}


def test_imagenet_backbones():
    models = zoo.select(family="imagenet")
    assert [(m.name + ".pkl", m.url) for m in models] == [(i["file"], i["url"]) for i in FIXTURE["imagenet"]]
    assert all(m.md5_url == m.url + ".md5sum" and m.config is None and not m.tasks for m in models)
    assert [m.name for m in zoo.select(family="imagenet", body="R-50")] == ["R-50", "R-50-GN"]


def test_full_stats_agree_with_headline():
    full = {m.name: m for m in zoo.catalog().values() if m.full_stats}
    assert sorted(full) == ["e2e_faster_rcnn_R-50-FPN_1x", "e2e_keypoint_rcnn_R-50-FPN_1x", "e2e_mask_rcnn_R-50-FPN_1x"]
    for m in full.values():
        for t, key in (("bbox", "box_ap"), ("segm", "mask_ap"), ("keypoints", "kp_ap")):
            assert (m.full_stats[t][0] if t in m.full_stats else None) == m.published[key]


def test_reference_rows_of_every_detector():
    detectors = [m for m in zoo.catalog().values() if m.is_detector]
    assert list(MODELS) == [m.name for m in detectors]
    for m in detectors:
        ref = MODELS[m.name]
        assert ref.model_id == m.id and ref.proposal_ar == m.published["prop_ar"]
        for t, key in (("bbox", "box_ap"), ("segm", "mask_ap"), ("keypoints", "kp_ap")):
            assert (ref.stats[t][0] if t in ref.stats else None) == m.published[key]
            if t in ref.stats and not m.full_stats:
                assert set(ref.stats[t][1:]) == {None}
    # a headline-only reference gates the AP of each type, nothing else
    run = Row("r101", {"bbox": (40.04,) + (1.0,) * 11, "segm": (35.2,) + (1.0,) * 11})
    result = compare([run], reference_row("e2e_mask_rcnn_R-101-FPN_1x"))
    assert [(c.iou_type, c.metric, c.ok) for c in result.checks] == [("bbox", "AP", True), ("segm", "AP", False)]


def test_benchmark_md_lists_every_model():
    lines = benchmark_md.zoo_section().splitlines()
    rows = {line.split(" | ")[1]: line for line in lines if re.match(r"\| \d+ \| ", line)}
    assert len(rows) == 80
    for r in MODEL_ROWS:
        m = _by_id()[r["model_id"]]
        cells = [("-" if r[k] is None else f"{r[k]:.1f}") for k in ("box_ap", "mask_ap", "kp_ap", "prop_ar")]
        assert rows[m.name].startswith(f"| {r['model_id']} | {m.name} | ")
        assert rows[m.name].endswith(f"| {r['lr_schd']} | " + " | ".join(cells) + " |")
    assert "| | e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x without test-time aug. | | | 45.2 | 39.7 | - | - |" in lines


def test_zoo_list_cli(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + 87 + 1 and out[-1].startswith("87 models")
    assert out[0].split() == ["id", "name", "box", "mask", "kp", "AR", "family"]
    by_name = {line.split()[1]: line.split() for line in out[1:-1]}
    for r in MODEL_ROWS:
        m = _by_id()[r["model_id"]]
        cells = [("-" if r[k] is None else f"{r[k]:.1f}") for k in ("box_ap", "mask_ap", "kp_ap", "prop_ar")]
        assert by_name[m.name][:7] == [str(r["model_id"]), m.name, *cells, m.family]
    assert main(["zoo", "list", "--family", "retinanet", "--body", "X-101-64x4d-FPN"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out[1:-1]] == ["retinanet_X-101-64x4d-FPN_1x", "retinanet_X-101-64x4d-FPN_2x"]
    assert main(["zoo", "list", "--task", "proposal"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 + 9
    assert main(["zoo", "list", "--family", "e2e_keypoint_rcnn", "--task", "mask"]) == 2
    assert capsys.readouterr().err == "error: no catalogued model matches these filters\n"


@pytest.mark.parametrize("name", ["e2e_mask_rcnn_R-101-FPN_2x", "35861858",
                                  "configs/12_2017_baselines/e2e_mask_rcnn_R-101-FPN_2x.yaml"])
def test_get_by_name_id_or_config(name):
    assert zoo.get(name).name == "e2e_mask_rcnn_R-101-FPN_2x"


def test_x152_baseline_follows_test_time_augmentation():
    from parity.zoo_run import baseline

    x152 = zoo.get("e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x")
    assert baseline(x152, True).values == {"bbox": (48.1,) + (None,) * 11, "segm": (41.5,) + (None,) * 11}
    plain = baseline(x152, False)
    assert plain.label == "Detectron (no test-time aug.)" and plain.published
    assert plain.values == {"bbox": (45.2,) + (None,) * 11, "segm": (39.7,) + (None,) * 11}
    assert baseline(zoo.get("e2e_mask_rcnn_R-50-FPN_2x"), False) == reference_row("e2e_mask_rcnn_R-50-FPN_2x")


def test_catalog_ships_with_the_package():
    import configparser

    from .conftest import REPO_ROOT

    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    assert setup["options.package_data"]["parity"].split() == [zoo.CATALOG_FILE.name]
    assert zoo.CATALOG_FILE.parent == REPO_ROOT / "parity"


def test_benchmark_md_run_of_another_zoo_model(tmp_path, capsys):
    from parity.evaluate import Stats
    from parity.metrics import Metrics, save_metrics

    run = tmp_path / "r101"
    run.mkdir()
    stats = {t: Stats(t, (0.4,) * 12) for t in ("bbox", "segm")}
    save_metrics(Metrics(provenance={"model": "e2e_mask_rcnn_R-101-FPN_1x", "weights_source": "zoo"}, **stats),
                 run / "metrics.json")
    bench = tmp_path / "BENCHMARK.md"
    assert main(["benchmark-md", "--file", str(bench), "--add", str(run)]) == 0
    text = bench.read_text()
    section = text[text.index("## Other model-zoo models"):text.index("## Detectron model zoo")]
    assert section.startswith("## Other model-zoo models\n\n### e2e_mask_rcnn_R-101-FPN_1x\n\nDetectron model id 35861795.")
    assert section.count("<th bgcolor=white>r101</th>") == 2 and section.count("<th bgcolor=white>Detectron</th>") == 2
    assert '<td align="right" bgcolor=white>40.0</td>\n<td align="right" bgcolor=white>-</td>' in section
    assert main(["benchmark-md", "--file", str(bench), "--check"]) == 0
    capsys.readouterr()


def test_every_catalogued_config_is_shipped_and_builds_its_family():
    """Each zoo model's config is one of the shipped Detectron YAMLs, and the model it builds is
    the family the catalog says (detectors, RPN-only, RetinaNet)."""
    from convert.kinds import cfg_kind
    from rcnn.config import load_cfg
    from tests.conftest import REPO_ROOT

    models = [m for m in zoo.catalog().values() if m.config]
    assert len(models) >= 80
    for m in models:
        path = REPO_ROOT / m.config
        assert path.is_file(), m.config
        kind = cfg_kind(load_cfg(path))
        expected = {"rpn": "rpn-only", "rpn_person_only": "rpn-only", "retinanet": "retinanet"}.get(m.family, "detector")
        assert kind.kind == expected, (m.name, kind)
