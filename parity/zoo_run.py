"""``parity zoo run``: from a model-zoo name to a parity verdict in one call.

The steps are the ones a Detectron user does by hand: download ``model_final.pkl`` into
the cache (:mod:`parity.download`, md5-checked), convert it (:func:`convert.checkpoint.pkl_to_pt`),
run it on COCO val with the model's own config (:func:`rcnn.engine.test_engine.run_test`,
what ``tools/test_net.py`` does) and compare the metrics with the published numbers
(:mod:`parity.compare`, exactly ``parity compare RUN --reference detectron``). Everything the
run needs is checked before the download starts, so that a bad data root or an unsupported
model costs no bandwidth.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detectron_parity.errors import UserError
from detectron_parity.fileio import InputError, PathLike, atomic_write_text
from parity import benchmark_md, compare, zoo
from parity.download import DownloadError, cache_dir, download, file_md5, published_md5

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ZOO_HOST = "https://dl.fbaipublicfiles.com/"


@dataclass
class ZooRunOptions:
    data_root: PathLike | None = None  # None: $DETECTRON_DATA_ROOT
    device: str | None = None
    limit: int | None = None
    weights: PathLike | None = None  # a model_final.pkl the user already has: no download
    output_dir: PathLike | None = None
    opts: Sequence[str] = field(default_factory=list)  # config overrides KEY VALUE ...
    mirror: str | None = None  # replaces https://dl.fbaipublicfiles.com/ in the catalog's URLs
    timeout: float = 60.0
    progress: bool = True


def mirrored(url: str, mirror: str | None) -> str:
    """``url`` with Detectron's download host replaced by ``mirror`` (a base URL)."""
    if not mirror or not url.startswith(ZOO_HOST):
        return url
    return mirror.rstrip("/") + "/" + url[len(ZOO_HOST):]


def config_path(model: zoo.ZooModel) -> Path:
    """The model's config file in this project (its ``configs/``)."""
    assert model.config is not None
    path = PROJECT_ROOT / model.config
    if not path.is_file():
        raise InputError(f"{model.name}: config {model.config} is not in this installation ({path} not found)")
    return path


def fetch_weights(model: zoo.ZooModel, mirror: str | None = None, timeout: float = 60.0,
                  progress: bool = True) -> Path:
    """``model_final.pkl`` (or an ImageNet ``.pkl``) of ``model`` in the cache, verified."""
    if model.url is None or model.md5_url is None:
        raise InputError(f"{model.name}: Detectron published no download for this model; pass --weights FILE")
    url = mirrored(model.url, mirror)
    dest = cache_dir() / model.name / url.rsplit("/", 1)[-1]
    saved_md5 = dest.with_name(dest.name + ".md5sum")  # the published sum, kept beside a verified file
    try:
        md5 = published_md5(mirrored(model.md5_url, mirror), timeout)
    except DownloadError:
        if not (dest.is_file() and saved_md5.is_file() and file_md5(dest) == saved_md5.read_text().strip()):
            raise
        logger.warning("%s unreachable: using %s, verified against the md5 published at download", model.md5_url, dest)
        return dest
    path = download(url, dest, md5, timeout=timeout, progress=progress)
    if not saved_md5.is_file() or saved_md5.read_text().strip() != md5:
        atomic_write_text(saved_md5, md5 + "\n")
    return path


def baseline(model: zoo.ZooModel, test_aug: bool) -> compare.Row:
    """The published row to compare with: the model's, or, for the X-152 model run without its
    config's test-time augmentation (``--set TEST.BBOX_AUG.ENABLED False``), the row Detectron
    published for that case."""
    row = compare.reference_row(model.name)
    if test_aug or not model.without_test_aug:
        return row
    w = model.without_test_aug
    return dataclasses.replace(row, label="Detectron (no test-time aug.)",
                               values={"bbox": (w["box_ap"],) + (None,) * 11, "segm": (w["mask_ap"],) + (None,) * 11})


def run(name: str, options: ZooRunOptions) -> tuple[compare.Comparison, str]:
    """Download, convert, test and compare one zoo model; the comparison and its report text."""
    from rcnn.config import load_cfg
    from rcnn.data.datasets import COCODataset, canonical_dataset_names

    model = zoo.get(name)
    if not model.is_detector:
        raise InputError(f"{model.name} is an ImageNet backbone, not a detector: train from it with "
                         f"tools/train_net_step.py --imagenet_weights (`parity zoo download {model.name}` fetches it)")
    if options.weights is not None and not Path(options.weights).is_file():
        raise InputError(f"--weights {options.weights}: file not found")
    out_dir = Path(options.output_dir or Path("outputs") / "zoo" / model.name)
    try:
        cfg = load_cfg(config_path(model), list(options.opts))
        (dataset_name,) = canonical_dataset_names([model.dataset or "coco_2014_minival"])
        dataset = COCODataset.from_catalog(dataset_name, options.data_root)
    except UserError as e:
        raise InputError(f"{model.name}: {' '.join(str(e).split())}") from None
    if dataset.num_classes != cfg.MODEL.NUM_CLASSES:
        raise InputError(f"{model.name}: {dataset_name} under {options.data_root} has {dataset.num_classes} "
                         f"classes but the model has {cfg.MODEL.NUM_CLASSES}")
    # torch and the model code only now, so that bad input is reported at once
    from convert.checkpoint import pkl_to_pt
    from rcnn.engine.devices import resolve_device
    from rcnn.engine.test_engine import TestSettings, run_test
    from rcnn.engine.weights import load_model
    from rcnn.inference.detector import Detector
    from rcnn.modeling import build_model

    try:
        device = resolve_device(options.device)
        out_dir.mkdir(parents=True, exist_ok=True)
        if options.weights:
            pkl = Path(options.weights)
        else:
            build_model(cfg)  # an unsupported family fails here, before any download
            pkl = fetch_weights(model, options.mirror, options.timeout, options.progress)
        pt = out_dir / "model_final.pt"
        report = pkl_to_pt(pkl, pt, cfg)
        logger.info("converted %s -> %s: %s", pkl, pt, report.summary())
        net, weights = load_model(cfg, load_ckpt=str(pt))
        settings = TestSettings(dataset_name, out_dir, 1, options.limit, False, progress=options.progress)
        metrics = run_test(cfg, Detector(net, cfg, device, 1), dataset, weights, settings, model.name)
    except UserError as e:
        raise InputError(f"{model.name}: {' '.join(str(e).split())}") from None
    assert metrics is not None  # one process (several GPUs: tools/test_net.py under torchrun)
    run_row = compare.Row.from_metrics(out_dir.name, metrics)
    result = compare.compare([run_row], baseline(model, bool(cfg.TEST.BBOX_AUG.ENABLED)))
    tables = benchmark_md.comparison_tables(result.rows, result.iou_types)
    text = tables + "\n\n" + "\n".join(compare.delta_lines(result))
    atomic_write_text(out_dir / "compare.md", f"# {model.name}: {out_dir.name} vs Detectron's published numbers\n\n"
                      f"{text}\n")
    return result, text
