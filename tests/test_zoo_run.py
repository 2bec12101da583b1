"""``parity zoo run`` end to end: a synthetic R-50-FPN ``model_final.pkl`` served by a local
HTTP server under the model's zoo path, downloaded (one dropped connection resumed),
md5-checked, converted, run on real COCO images and compared with Detectron's published
numbers; random weights are far outside tolerance, so the verdict is FAIL with exit 1."""
from __future__ import annotations

import hashlib
import json

from parity import zoo
from parity.__main__ import main
from parity.metrics import load_metrics
from parity.zoo_run import ZOO_HOST
from tests.models import SMALL

from .zoo_server import ZooServer

MODEL = "e2e_faster_rcnn_R-50-FPN_1x"


def _data_root(test_data, tmp_path):
    """Detectron's layout (coco/annotations, coco/val2017) over the shipped coco-cc-by (tests/data)."""
    mini = test_data / "coco-cc-by"
    (tmp_path / "data" / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "data" / "coco" / "annotations" / "instances_val2017.json").symlink_to(mini / "instances_val2017.json")
    (tmp_path / "data" / "coco" / "val2017").symlink_to(mini / "val2017")
    return tmp_path / "data"


def test_zoo_run_from_download_to_verdict(test_data, synthetic_pkls, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DETECTRON_CACHE", str(cache))
    pkl = synthetic_pkls["faster"]
    path = zoo.get(MODEL).url[len(ZOO_HOST):]
    out = tmp_path / "out"
    with ZooServer() as server:
        server.files[path] = pkl
        server.files[path + ".md5sum"] = (hashlib.md5(pkl.read_bytes()).hexdigest() + "\n").encode()
        server.drop_once.add(path)
        status = main(["zoo", "run", MODEL, "--mirror", server.base, "--data_root", str(_data_root(test_data, tmp_path)),
                       "--device", "cpu", "--limit", "2", "--output_dir", str(out), "--set", *SMALL])
        stdout = capsys.readouterr().out
        assert [r[1] is not None for r in server.requests] == [False, False, True]  # md5sum, cut, resumed
    assert status == 1
    verdict = stdout.splitlines()[-1]
    assert verdict.startswith("verdict: FAIL: ") and "of 12 metrics outside tolerance" in verdict
    assert '<th bgcolor=white>out</th>' in stdout and "<th bgcolor=white>Detectron</th>" in stdout
    assert (out / "compare.md").read_text().splitlines()[-1] == verdict
    # the cache holds the verified download only; the run folder what test_net writes
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == ["model_final.pkl", "model_final.pkl.md5sum"]
    assert (cache / MODEL / "model_final.pkl").read_bytes() == pkl.read_bytes()
    assert {"metrics.json", "model_final.pt", "compare.md", "bbox_coco_2017_val_results.json"} <= \
        {p.name for p in out.iterdir()}
    metrics = load_metrics(out / "metrics.json")
    prov = metrics.provenance
    assert prov["model"] == MODEL and prov["weights_source"] == "zoo" and prov["images"] == 2
    assert prov["dataset"] == "coco_2017_val"
    assert len(json.loads((out / "bbox_coco_2017_val_results.json").read_text())) > 0

    # --weights: the same file, no network at all (the server is gone)
    status = main(["zoo", "run", MODEL, "--weights", str(pkl), "--mirror", "http://127.0.0.1:9/", "--data_root",
                   str(tmp_path / "data"), "--device", "cpu", "--limit", "1", "--output_dir", str(tmp_path / "w"),
                   "--set", *SMALL])
    assert status == 1 and capsys.readouterr().out.splitlines()[-1].startswith("verdict: FAIL")
    assert load_metrics(tmp_path / "w" / "metrics.json").provenance["images"] == 1
