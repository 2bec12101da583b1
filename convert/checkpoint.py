"""Detectron blobs <-> our models and checkpoints, strictly and safely.

Why this exists: loading Detectron weights must fail loudly and usefully when the file does
not fit the model (Detectron itself silently keeps random weights for missing blobs, docs/detectron.md §1.2),
and our own checkpoints must never need code execution to load.

* ``load_detectron_weights`` maps blob names to state-dict keys with ``rcnn.naming`` and is
  strict: missing, unexpected and shape-mismatched blobs are listed by name, together with
  what the file is (``convert.kinds``) and which config family it needs. The orphans every
  Detectron checkpoint carries (``*_momentum``, ``fc1000_*``, the zero ResNet conv biases of
  the ImageNet init) are reported as ignored.
* Our ``.pt`` checkpoints hold only tensors, numbers and strings (the config as YAML text) so
  they load with ``torch.load(weights_only=True)``; ``read_checkpoint`` never loads otherwise.
  Schema (``FORMAT``, ``FORMAT_VERSION``)::

      {"format": "detectron-parity/checkpoint", "format_version": 1,
       "state_dict": {key: float32 tensor},       # rcnn.naming keys, params and buffers
       "cfg_yaml": str,                           # rcnn.config.cfg_to_yaml of the model's config
       "meta": {str: str | int | float | bool | None},
       "extra_blobs": {blob name: tensor}}        # Detectron blobs outside the model (kept on request)
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from convert.detectron_cfg import check_detectron_cfg, dump_detectron_cfg
from convert.errors import ConvertError, WeightsMismatchError, first_line
from convert.kinds import (
    IMAGENET_CLASSIFIER,
    RESNET_CONV_WEIGHT,
    FileKind,
    cfg_for_file,
    cfg_kind,
    detect_kind,
    not_a_detector,
    orphan_group,
)
from convert.pickle_io import DetectronPkl, atomic_write, read_detectron_pkl, write_detectron_pkl
from detectron_parity.fileio import file_sha256
from rcnn.config import CfgNode, cfg_from_yaml_text, cfg_to_yaml, load_cfg
from rcnn.modeling import GeneralizedRCNN, UnsupportedModelError, build_model
from rcnn.naming import blob_to_key, key_to_blob

logger = logging.getLogger(__name__)

FORMAT = "detectron-parity/checkpoint"
FORMAT_VERSION = 1

_FIXED_BLOBS = ("kps_score_w", "kps_score_b")  # Detectron's fixed bilinear upsampling, docs/detectron.md §2.6)
_LIST_LIMIT = 20  # names per category in a one-line message; the report has them all


@dataclass
class LoadReport:
    """How the blobs of ``source`` matched a model; ``ok`` when nothing is missing/unexpected/misshaped."""

    source: str
    kind: FileKind
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored_momentum: list[str] = field(default_factory=list)
    ignored_preserved: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        """E.g. ``201 blobs loaded; ignored 84 momentum and 55 preserved ImageNet blobs``."""
        return (f"{len(self.loaded)} blobs loaded; ignored {len(self.ignored_momentum)} momentum and "
                f"{len(self.ignored_preserved)} preserved ImageNet blobs")

    def problems(self) -> str:
        """The mismatches, every blob by name (up to ``_LIST_LIMIT`` per category), on one line."""
        def names(items: Sequence[str]) -> str:
            more = len(items) - _LIST_LIMIT
            return ", ".join(items[:_LIST_LIMIT]) + (f", ... and {more} more" if more > 0 else "")

        parts = []
        if self.shape_mismatch:
            parts.append(f"{len(self.shape_mismatch)} shape-mismatched: " + names(
                [f"{b} file {fs} vs model {ms}" for b, fs, ms in self.shape_mismatch]))
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the file: " + names(self.missing))
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: " + names(self.unexpected))
        return "; ".join(parts)


def match_blobs(file_shapes: Mapping[str, Sequence[int]], model_shapes: Mapping[str, Sequence[int]],
                source: str) -> LoadReport:
    """Compare a file's ``{blob: shape}`` with the ``{blob: shape}`` a model needs."""
    report = LoadReport(source, detect_kind(file_shapes))
    for blob, shape in model_shapes.items():
        if blob not in file_shapes:
            report.missing.append(blob)
        elif tuple(file_shapes[blob]) != tuple(shape):
            report.shape_mismatch.append((blob, tuple(file_shapes[blob]), tuple(shape)))
        else:
            report.loaded.append(blob)
    for blob in file_shapes:
        if blob in model_shapes:
            continue
        group = orphan_group(blob)
        if group == "momentum":
            report.ignored_momentum.append(blob)
        elif group == "preserved":
            report.ignored_preserved.append(blob)
        else:
            report.unexpected.append(blob)
    return report


def _mismatch_message(report: LoadReport, cfg: CfgNode) -> str:
    """What the file is, what the config builds, what to do, then every offending blob."""
    have, want = report.kind, cfg_kind(cfg)
    text = f"{report.source} does not fit the config: the file is a {have.describe()}"
    if have.family:
        text += f" (config family {have.family})"
    text += f", the config builds a {want.describe()}"
    if have.family and have.family != want.family:
        hint = have.baseline_config_name
        text += f"; use the config {hint}" if hint else f"; it needs a Detectron config of family {have.family}"
    elif have.num_classes is not None and have.num_classes != want.num_classes:
        text += f"; its config needs MODEL.NUM_CLASSES: {have.num_classes}"
    return f"{text}. {report.problems()}"


def _load_blobs(model: nn.Module, pkl: DetectronPkl, cfg: CfgNode, source: str,
                strict: bool, check_cfg: bool) -> LoadReport:
    report, tensors = _blob_tensors(model.state_dict(), pkl, cfg, source, strict, check_cfg)
    model.load_state_dict(tensors, strict=False)
    return report


def _blob_tensors(state: Mapping[str, Tensor], pkl: DetectronPkl, cfg: CfgNode, source: str,
                  strict: bool, check_cfg: bool) -> tuple[LoadReport, dict[str, Tensor]]:
    """Match the file against the model's ``state`` and return the loadable blobs as float32
    tensors by state-dict key; they share the file's arrays' memory (no copy, unless a cast)."""
    keys = blob_to_key(state)
    report = match_blobs(pkl.shapes, {blob: state[key].shape for blob, key in keys.items()}, source)
    if strict and report.kind.kind == "imagenet":
        raise not_a_detector(source, report.kind)
    if strict and not report.ok:
        raise WeightsMismatchError(_mismatch_message(report, cfg), report)
    if check_cfg and pkl.cfg_yaml is not None:
        check_detectron_cfg(pkl.cfg_yaml, cfg, source)
    new_state = {}
    for blob in report.loaded:
        array = pkl.blobs[blob]
        if array.dtype != np.float32:
            logger.info("%s: %s is %s; cast to float32 as Detectron does", source, blob, array.dtype)
        array = np.asarray(array, dtype=np.float32)
        new_state[keys[blob]] = torch.from_numpy(array if array.flags.writeable else array.copy())
        if blob in _FIXED_BLOBS and not torch.equal(new_state[keys[blob]], state[keys[blob]]):
            logger.warning("%s: %s differs from Detectron's fixed bilinear upsampling; using the file's "
                           "values, as Detectron does", source, blob)
    nonzero = [b for b in report.ignored_preserved if b not in IMAGENET_CLASSIFIER and pkl.blobs[b].any()]
    if nonzero:
        logger.warning("%s: ignored ResNet conv biases that are not zero (Detectron ignores them too): %s",
                       source, ", ".join(nonzero))
    logger.info("%s: %s", source, report.summary())
    if report.ignored_momentum or report.ignored_preserved:
        logger.debug("%s: ignored %s", source, ", ".join(report.ignored_momentum + report.ignored_preserved))
    return report, new_state


def load_detectron_weights(model: nn.Module, path: str | os.PathLike[str], cfg: CfgNode | None = None, *,
                           strict: bool = True, check_cfg: bool = True) -> LoadReport:
    """Load a Detectron ``.pkl`` into ``model`` (built from ``cfg``, default ``model.cfg``).

    Strict by default: a ``WeightsMismatchError`` lists every missing, unexpected and
    shape-mismatched blob and says which config family the file needs; with ``strict=False``
    the matching blobs are loaded and the report tells the rest (this is how an ImageNet
    backbone such as ``R-50.pkl`` initialises a model for training). With ``check_cfg`` the cfg
    embedded in the file must agree with ``cfg`` (``CfgMismatchError`` otherwise).
    """
    cfg = cfg if cfg is not None else model.cfg
    return _load_blobs(model, read_detectron_pkl(path), cfg, os.fspath(path), strict, check_cfg)


# ---------------------------------------------------------------------------------------------
# Our checkpoints
# ---------------------------------------------------------------------------------------------
class Checkpoint(NamedTuple):
    """A checkpoint as ``read_checkpoint`` returns it."""

    state_dict: dict[str, Tensor]
    cfg_yaml: str
    meta: dict[str, Any]
    extra_blobs: dict[str, Tensor]


_META_TYPES = (str, int, float, bool, type(None))


def save_checkpoint(path: str | os.PathLike[str], model_or_state_dict: nn.Module | Mapping[str, Tensor],
                    cfg: CfgNode | str, extra_meta: Mapping[str, Any] | None = None,
                    extra_blobs: Mapping[str, np.ndarray | Tensor] | None = None) -> None:
    """Write a checkpoint that ``torch.load(weights_only=True)`` reads (schema in the module doc).

    ``cfg`` is the model's config (or its ``cfg_to_yaml`` text); ``extra_meta`` values must be
    strings, numbers, booleans or None; ``extra_blobs`` are Detectron blobs to carry along
    (momentum, preserved ImageNet blobs). Written atomically.
    """
    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise TypeError(f"state dict entry {key!r} is not a str -> Tensor pair")
    meta = {"writer": "detectron-parity convert"}
    for key, value in (extra_meta or {}).items():
        if not isinstance(key, str) or not isinstance(value, _META_TYPES):
            raise TypeError(f"meta entry {key!r}: {type(value).__name__} is not a string, number, bool or None")
        meta[key] = value
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": OrderedDict((k, v.detach().cpu().contiguous()) for k, v in state.items()),
        "cfg_yaml": cfg if isinstance(cfg, str) else cfg_to_yaml(cfg),
        "meta": meta,
        "extra_blobs": {name: torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v.detach().cpu()
                        for name, v in (extra_blobs or {}).items()},
    }
    with atomic_write(path) as f:
        torch.save(obj, f)
    logger.info("wrote %s (%d tensors, %d extra blobs)", os.fspath(path), len(state), len(obj["extra_blobs"]))


def _weights_only_failure(path: str, e: Exception) -> ConvertError:
    text = str(e)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return ConvertError(f"refusing to load {path}: it holds the Python object {refused.group(1)}, not only "
                            "tensors, numbers and strings, so it cannot be loaded safely (weights_only=True)")
    detail = first_line(text.split("WeightsUnpickler error:")[-1], type(e).__name__)
    return ConvertError(f"{path} is not a readable PyTorch checkpoint ({detail})")


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load one of our checkpoints with ``weights_only=True`` and check its schema."""
    name = os.fspath(path)
    try:
        obj = torch.load(name, map_location="cpu", weights_only=True)
    except OSError as e:
        raise ConvertError(f"cannot read {name}: {e.strerror or e}") from None
    except pickle.UnpicklingError as e:
        raise _weights_only_failure(name, e) from None
    except Exception as e:  # EOFError, RuntimeError (bad zip), ...: the file is not a checkpoint
        detail = first_line(e, "the file is empty or truncated")
        raise ConvertError(f"{name} is not a readable PyTorch checkpoint ({type(e).__name__}: {detail})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = "a plain state dict or another program's file" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise ConvertError(f"{name} is not a detectron-parity checkpoint (no format tag {FORMAT!r}; it is {what})")
    if obj.get("format_version") != FORMAT_VERSION:
        raise ConvertError(f"{name} has checkpoint format version {obj.get('format_version')!r}; "
                           f"this code reads version {FORMAT_VERSION}")
    state, cfg_yaml, meta, extra = (obj.get(k) for k in ("state_dict", "cfg_yaml", "meta", "extra_blobs"))
    if not isinstance(cfg_yaml, str) or not isinstance(meta, dict):
        raise ConvertError(f"{name}: malformed checkpoint (cfg_yaml must be text, meta a dict)")
    for what, table in (("state_dict", state), ("extra_blobs", extra)):
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                  for k, v in table.items()):
            raise ConvertError(f"{name}: malformed checkpoint ({what} must map names to tensors)")
    return Checkpoint(state, cfg_yaml, meta, extra)


# ---------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------
def _build(cfg: CfgNode) -> GeneralizedRCNN:
    try:
        return build_model(cfg)
    except UnsupportedModelError as e:
        raise ConvertError(str(e)) from None


def pkl_to_pt(src: str | os.PathLike[str], dst: str | os.PathLike[str],
              cfg: CfgNode | str | os.PathLike[str] | None = None, *, keep_momentum: bool = False,
              keep_preserved: bool = False, check_cfg: bool = True, pkl: DetectronPkl | None = None) -> LoadReport:
    """Convert a Detectron ``.pkl`` into our checkpoint.

    ``cfg``: a config or YAML path; None picks the baseline config of the file's family.
    ``keep_momentum`` / ``keep_preserved`` carry those Detectron blobs in ``extra_blobs`` so
    that ``pt_to_pkl`` can write them back. ``pkl``: the content of ``src`` if already read.
    """
    source = os.fspath(src)
    with ThreadPoolExecutor(1) as pool:
        sha256 = pool.submit(file_sha256, src)  # on the other core, while the file is unpickled
        pkl = pkl if pkl is not None else read_detectron_pkl(src)
        if cfg is None:
            cfg = cfg_for_file(detect_kind(pkl.shapes), source)
        elif not isinstance(cfg, CfgNode):
            cfg = load_cfg(cfg)
        with contextlib.nullcontext() if any(b in pkl.blobs for b in _FIXED_BLOBS) else torch.device("meta"):
            model = _build(cfg)  # for its keys, in order, and shapes; the fixed blobs are compared with its values
        state = model.state_dict()
        report, tensors = _blob_tensors(state, pkl, cfg, source, strict=True, check_cfg=check_cfg)
        kept = (report.ignored_momentum if keep_momentum else []) + (report.ignored_preserved if keep_preserved else [])
        meta = {"source_file": Path(source).name, "source_sha256": sha256.result(),
                "source_kind": report.kind.describe(), "source_has_cfg": pkl.cfg_yaml is not None}
    save_checkpoint(dst, {key: tensors[key] for key in state}, cfg, meta, {name: pkl.blobs[name] for name in kept})
    return report


def pt_to_pkl(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, style: str = "2017") -> LoadReport:
    """Convert our checkpoint into a Detectron ``.pkl`` that Python 2 Detectron loads.

    The state dict must fit the model its own config builds (strict, as for loading); the
    config is embedded as Detectron-style YAML (``style`` as in ``dump_detectron_cfg``) and
    ``extra_blobs`` are written back as ``unicode`` keys, as Detectron wrote them.
    """
    source = os.fspath(src)
    ckpt = read_checkpoint(src)
    cfg = cfg_from_yaml_text(ckpt.cfg_yaml)
    try:
        blob_names = {key_to_blob(key): key for key in ckpt.state_dict}
    except ValueError as e:
        raise ConvertError(f"{source}: {e}") from None
    with torch.device("meta"):
        expected = {key_to_blob(k): tuple(v.shape) for k, v in _build(cfg).state_dict().items()}
    report = match_blobs({b: tuple(ckpt.state_dict[k].shape) for b, k in blob_names.items()}, expected, source)
    if not report.ok:
        raise WeightsMismatchError(_mismatch_message(report, cfg), report)
    blobs = {blob: ckpt.state_dict[key].to(torch.float32).contiguous().numpy() for blob, key in blob_names.items()}
    clashes = sorted(set(blobs) & set(ckpt.extra_blobs))
    if clashes:
        raise ConvertError(f"{source}: extra_blobs repeat model blobs: {', '.join(clashes)}")
    blobs.update({name: t.to(torch.float32).contiguous().numpy() for name, t in ckpt.extra_blobs.items()})
    write_detectron_pkl(dst, blobs, dump_detectron_cfg(cfg, style), unicode_keys=set(ckpt.extra_blobs))
    return report


# ---------------------------------------------------------------------------------------------
# What real Detectron files carry besides the parameters (for writing realistic files)
# ---------------------------------------------------------------------------------------------
def momentum_blob_names(model: nn.Module) -> list[str]:
    """``<param>_momentum`` for the parameters Detectron trained (it saved momentum for those, docs/detectron.md §1.4)."""
    return [key_to_blob(name) + "_momentum" for name, p in model.named_parameters() if p.requires_grad]


def preserved_imagenet_shapes(blob_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """The unused ImageNet blobs a Detectron checkpoint preserves: a zero bias per ResNet conv
    (``conv1_b``, ``res2_0_branch2a_b``, ...) and the classifier ``fc1000_w``/``fc1000_b``."""
    out = {}
    for blob, shape in blob_shapes.items():
        if RESNET_CONV_WEIGHT.match(blob):
            out[blob[:-2] + "_b"] = (int(shape[0]),)
    last = max((b for b in blob_shapes if re.match(r"^res5_\d+_branch2c_w$", b)), key=lambda b: int(b.split("_")[1]))
    out["fc1000_w"] = (1000, int(blob_shapes[last][0]))
    out["fc1000_b"] = (1000,)
    return out
