"""``convert`` of a full-size Mask R-CNN ``.pkl`` against a plain ``pickle.load`` of the same file.

Each measurement runs in a fresh subprocess, so that peak memory is that process's own
``ru_maxrss`` (torch allocates outside tracemalloc's view); both subprocesses import the
same modules first, and the reported peak is ``ru_maxrss`` minus the resident size after
the imports. The file is synthetic but has a real ``model_final.pkl``'s blobs and shapes
(parameters, ``*_momentum``, the preserved ImageNet blobs: ``rcnn.synthetic``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from detectron_parity.timing import spread

REPO = Path(__file__).resolve().parents[1]
_MEASURE = r"""
import json, os, pickle, resource, sys, time
import numpy, torch
from convert.checkpoint import pkl_to_pt
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
what, src, dst = sys.argv[1:4]
base = rss()
start = time.perf_counter()
if what == "convert":
    pkl_to_pt(src, dst)
else:
    with open(src, "rb") as f:
        pickle.load(f, encoding="latin1")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_bytes": peak - base, "baseline_rss_bytes": base}))
"""


def write_mask_pkl(path: str | os.PathLike[str]) -> None:
    """A Detectron-style Mask R-CNN R-50-FPN ``model_final.pkl`` (random values, real blobs)."""
    from convert.detectron_cfg import dump_detectron_cfg
    from convert.pickle_io import write_detectron_pkl
    from rcnn.config import load_cfg
    from rcnn.modeling import build_model
    from rcnn.synthetic import synthetic_detectron_blobs

    cfg = load_cfg(REPO / "configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml")
    blobs, unicode_keys = synthetic_detectron_blobs(build_model(cfg))
    write_detectron_pkl(path, blobs, dump_detectron_cfg(cfg), unicode_keys=unicode_keys)


def _measure(what: str, src: Path, dst: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _MEASURE, what, str(src), str(dst)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_convert(iters: int = 3, pkl: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Time and peak memory of ``pkl_to_pt`` and ``pickle.load``, ``iters`` alternating pairs."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(pkl) if pkl else Path(tmp) / "model_final.pkl"
        if not pkl:
            write_mask_pkl(src)
        dst = Path(tmp) / "model.pt"
        runs: dict[str, list[dict]] = {"convert": [], "pickle": []}
        for i in range(iters):
            for what in ("convert", "pickle") if i % 2 == 0 else ("pickle", "convert"):
                runs[what].append(_measure(what, src, dst))
        size = src.stat().st_size
    ratios = [c["seconds"] / p["seconds"] for c, p in zip(runs["convert"], runs["pickle"])]
    out: dict[str, Any] = {"file_bytes": size, "time_ratio": spread(ratios)}
    for what, rs in runs.items():
        out[what] = {"seconds": spread([r["seconds"] for r in rs]),
                     "peak_bytes": spread([r["peak_bytes"] for r in rs])}
        out[what]["peak_over_file"] = out[what]["peak_bytes"]["median"] / size
    return out
